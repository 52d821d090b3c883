"""Reformer: LSH attention against full and brute-force references, causal masking, the memory shape of LSH
attention, reversible gradients and memory, and a char LM that learns."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from edgeslim.errors import InvalidParameterError, ShapeError  # noqa: E402
from edgeslim.research.train import reformer  # noqa: E402
from edgeslim.research.train.reformer import (  # noqa: E402
    CharLM,
    CharLMConfig,
    ChunkedFeedForward,
    ReversibleBlock,
    ReversibleSequence,
    SharedQKAttention,
    encode_bytes,
    full_attention,
    hash_buckets,
    lm_loss,
    lsh_attention,
)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_one_bucket_lsh_equals_full_shared_qk_attention(causal, n_hashes):
    torch.manual_seed(0)
    qk, v = torch.randn(3, 40, 8, dtype=torch.float64), torch.randn(3, 40, 5, dtype=torch.float64)
    got = lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=1, chunk_len=40, causal=causal)
    want = full_attention(qk, v, causal=causal)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _union_reference(qk, v, buckets, chunk_len, causal):
    """Exact softmax attention of each query over the union, across rounds, of the keys that share its bucket and
    lie in its chunk or the previous one after sorting by (round, bucket, position); itself only if alone."""
    n, length, d = qk.shape
    nh = buckets.shape[1]
    n_chunks = nh * length // chunk_len
    out = torch.zeros(n, length, v.shape[-1], dtype=qk.dtype)
    for b in range(n):
        chunk = {}
        for r in range(nh):
            ranked = sorted(range(length), key=lambda p: (int(buckets[b, r, p]), p))
            for slot, p in enumerate(ranked):
                chunk[r, p] = (r * length + slot) // chunk_len
        for i in range(length):
            keys = set()
            for r in range(nh):
                near = {chunk[r, i], (chunk[r, i] - 1) % n_chunks}
                keys |= {j for j in range(length) if buckets[b, r, j] == buckets[b, r, i] and chunk[r, j] in near}
            if causal:
                keys = {j for j in keys if j <= i}
            others = sorted(keys - {i})
            if not others:
                out[b, i] = v[b, i]
                continue
            k = qk[b, others] / qk[b, others].norm(dim=-1, keepdim=True)
            w = torch.softmax(k @ qk[b, i] * d ** -0.5, dim=0)
            out[b, i] = w @ v[b, others]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_multi_round_lsh_is_exact_attention_over_the_union_of_its_windows(causal):
    torch.manual_seed(1)
    qk, v = torch.randn(2, 24, 6, dtype=torch.float64), torch.randn(2, 24, 3, dtype=torch.float64)
    buckets = hash_buckets(qk, n_buckets=4, n_hashes=3)
    assert len(torch.unique(buckets)) == 4  # the hashing really spreads positions over the buckets
    got = lsh_attention(qk, v, n_buckets=4, chunk_len=4, causal=causal, buckets=buckets)
    want = _union_reference(qk, v, buckets, 4, causal)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # and it is not simply full attention: windows leave keys out
    assert not torch.allclose(got, full_attention(qk, v, causal=causal), atol=1e-3)


@pytest.mark.parametrize("group_elements", [1 << 22, 40])
def test_lsh_attention_gradients_match_finite_differences(monkeypatch, group_elements):
    # the small group size splits the chunks into many groups, recomputed group by group in backward
    monkeypatch.setattr(reformer, "_GROUP_ELEMENTS", group_elements)
    torch.manual_seed(8)
    qk = torch.randn(2, 16, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 16, 3, dtype=torch.float64, requires_grad=True)
    buckets = hash_buckets(qk, n_buckets=4, n_hashes=2)
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, causal=causal: lsh_attention(a, b, n_buckets=4, chunk_len=4, causal=causal, buckets=buckets), (qk, v))
    torch.testing.assert_close(lsh_attention(qk, v, n_buckets=4, chunk_len=4, buckets=buckets),
                               _union_reference(qk.detach(), v.detach(), buckets, 4, False))


def test_hashing_is_angular_and_uses_both_signs():
    torch.manual_seed(2)
    x = torch.randn(1, 200, 16)
    g = torch.Generator().manual_seed(5)
    b = hash_buckets(x, n_buckets=8, n_hashes=2, generator=g)
    g.manual_seed(5)
    torch.testing.assert_close(hash_buckets(3.0 * x, n_buckets=8, n_hashes=2, generator=g), b)  # scale-free
    g.manual_seed(5)
    flipped = hash_buckets(-x, n_buckets=8, n_hashes=2, generator=g)
    assert torch.equal(flipped, (b + 4) % 8)  # -x lands in the opposite half: argmax over [xR; -xR]
    assert set(b.unique().tolist()) == set(range(8))


def test_causal_masking_hides_later_positions():
    torch.manual_seed(3)
    qk, v = torch.randn(2, 32, 8), torch.randn(2, 32, 4)
    buckets = hash_buckets(qk, n_buckets=4, n_hashes=2)
    qk2, v2 = qk.clone(), v.clone()
    qk2[:, 20:] = torch.randn(2, 12, 8)
    v2[:, 20:] = 100 * torch.randn(2, 12, 4)
    for fn in (lambda a, b: lsh_attention(a, b, n_buckets=4, chunk_len=8, causal=True, buckets=buckets),
               lambda a, b: full_attention(a, b, causal=True)):
        before, after = fn(qk, v), fn(qk2, v2)
        torch.testing.assert_close(before[:, :20], after[:, :20])
        assert not torch.allclose(before[:, 20:], after[:, 20:])
    # without the causal mask the change does reach earlier positions
    assert not torch.allclose(full_attention(qk, v)[:, :20], full_attention(qk2, v2)[:, :20])


@pytest.mark.parametrize("attention", ["lsh", "full"])
def test_char_lm_is_causal(attention):
    torch.manual_seed(4)
    # one bucket: sorting keeps positions in order, so no later token can move an earlier query's window
    cfg = CharLMConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, attention=attention, n_hashes=2, n_buckets=1,
                       chunk_len=8)
    lm = CharLM(cfg).eval()
    a = torch.randint(0, 256, (2, 29))
    b = a.clone()
    b[:, 17:] = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        la, lb = lm(a), lm(b)
    torch.testing.assert_close(la[:, :17], lb[:, :17])
    assert not torch.allclose(la[:, 17:], lb[:, 17:])


class _ShapeLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_lsh_attention_never_forms_a_length_squared_tensor():
    n, length, chunk = 2, 1024, 16
    qk = torch.randn(n, length, 8, requires_grad=True)
    v = torch.randn(n, length, 8, requires_grad=True)
    with _ShapeLog() as log:
        lsh_attention(qk, v, n_hashes=2, chunk_len=chunk, causal=True).sum().backward()
    # per-chunk scores: N * n_hashes * L * 2 * chunk elements, a sixteenth of one L x L matrix here
    assert log.largest <= n * 2 * length * 2 * chunk
    assert log.largest < length * length
    # and with chunks processed in small groups, no tensor holds the scores of all chunks at once
    reformer._GROUP_ELEMENTS, saved = 4096, reformer._GROUP_ELEMENTS
    try:
        with _ShapeLog() as log:
            lsh_attention(qk, v, n_hashes=2, chunk_len=chunk, causal=True).sum().backward()
    finally:
        reformer._GROUP_ELEMENTS = saved
    assert log.largest < n * 2 * length * 2 * chunk
    with _ShapeLog() as log:
        full_attention(qk, v, causal=True).sum().backward()
    assert log.largest >= n * length * length  # the probe does see the full scores


def _saved_bytes(model, tokens):
    total = [0]

    def pack(t):
        if not isinstance(t, nn.Parameter):
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss(model, tokens)
    return total[0]


nn = torch.nn


def test_reversible_layers_match_plain_gradients_and_do_not_store_activations():
    torch.manual_seed(5)
    cfg = CharLMConfig(d_model=16, n_heads=2, n_layers=3, d_ff=32, n_hashes=2, n_buckets=4, chunk_len=8, ff_chunks=2)
    rev = CharLM(cfg).double()
    plain = copy.deepcopy(rev)
    plain.layers.reversible = False
    tokens = torch.randint(0, 256, (2, 33))
    grads = []
    for m in (rev, plain):
        torch.manual_seed(9)  # the same LSH rotations in both runs (and in the reversible recomputation)
        loss = lm_loss(m, tokens)
        loss.backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(g.abs().sum() > 0 for g in grads[0][1:])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # saved activations: constant in depth when reversible, growing when plain
    sizes = {}
    for layers in (1, 4):
        for reversible in (True, False):
            m = CharLM(CharLMConfig(d_model=16, n_heads=2, n_layers=layers, d_ff=32, chunk_len=8,
                                    reversible=reversible))
            sizes[layers, reversible] = _saved_bytes(m, tokens)
    assert sizes[4, True] == sizes[1, True]
    assert sizes[4, False] > 2 * sizes[1, False]


def test_reversible_block_inverts_and_chunked_ff_matches():
    torch.manual_seed(6)
    ff = ChunkedFeedForward(8, 16, chunks=3)
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(ff(x), ff.net(x))
    att = nn.Sequential(nn.LayerNorm(8), SharedQKAttention(8, 2, attention="full"))
    seq = ReversibleSequence([ReversibleBlock(att, ff, g_chunks=3)])
    x1 = torch.randn(2, 10, 8, requires_grad=True)
    x2 = torch.randn(2, 10, 8, requires_grad=True)
    y1, y2 = seq(x1, x2)
    (y1 * 2 + y2).sum().backward()
    g1, g2 = x1.grad.clone(), x2.grad.clone()
    x1.grad = x2.grad = None
    seq.reversible = False
    y1p, y2p = seq(x1, x2)
    torch.testing.assert_close((y1, y2), (y1p, y2p))
    (y1p * 2 + y2p).sum().backward()
    torch.testing.assert_close((g1, g2), (x1.grad, x2.grad))


def test_char_lm_loss_falls_on_a_tiny_text():
    torch.manual_seed(7)
    text = "the quick brown fox jumps over the lazy dog. " * 12
    data = encode_bytes(text)
    lm = CharLM(CharLMConfig(d_model=32, n_heads=2, n_layers=2, d_ff=64, n_hashes=2, chunk_len=8))
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    starts = torch.arange(0, len(data) - 33, 7)
    losses = []
    for _ in range(40):
        idx = starts[torch.randint(0, len(starts), (8,))]
        batch = torch.stack([data[s:s + 33] for s in idx.tolist()])
        loss = lm_loss(lm, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 5.0  # about ln 256 untrained
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]


def test_bad_arguments_raise_named_errors():
    qk = torch.randn(1, 20, 4)
    with pytest.raises(ShapeError, match="multiple of chunk_len"):
        lsh_attention(qk, qk, chunk_len=8)
    with pytest.raises(InvalidParameterError, match="even"):
        hash_buckets(qk, n_buckets=3)
    with pytest.raises(InvalidParameterError, match="attention"):
        CharLMConfig(attention="sparse")
    with pytest.raises(InvalidParameterError, match="divisible"):
        SharedQKAttention(10, 3)
    with pytest.raises(InvalidParameterError, match="n_buckets"):
        lsh_attention(qk, qk, chunk_len=4, n_buckets=2, buckets=torch.full((1, 1, 20), 3))
