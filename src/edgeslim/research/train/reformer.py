"""Reformer in PyTorch: LSH attention, reversible residual layers and chunked feed-forward.

Full self-attention stores an ``L x L`` score matrix per head, so memory grows with the square of the sequence
length. Reformer replaces it with attention inside hash buckets, and makes the memory of a deep model independent
of its depth:

- :func:`lsh_attention` — angular LSH with shared query/key (keys are the unit-length queries). Each of
  ``n_hashes`` rounds draws a random rotation ``R`` and puts a vector ``x`` in bucket ``argmax([xR; -xR])``. The
  ``n_hashes * L`` (round, position) copies are sorted by (round, bucket, position) and cut into chunks of
  ``chunk_len``; a query attends to the keys of its own bucket in its chunk and the previous one. Causal masking
  compares original positions; a query attends to itself only when nothing else is available (its score is set
  to -1e5, as in the paper); a key reached in several rounds is counted once (its score in every round is lowered
  by ``log`` of the number of rounds that reach it), and the rounds are combined with weights
  ``softmax_r(logsumexp of round r's scores)``, which makes the result exact attention over the union of the
  rounds' buckets. Scores exist per chunk only, ``(chunks, chunk_len, 2 * chunk_len)``, for a bounded group of
  chunks at a time, and backward recomputes them group by group rather than storing them: no ``L x L`` tensor is
  ever formed, and memory beyond ``O(n_hashes * L * d)`` per-position tensors stays constant in ``L``.
  With more than one bucket, which earlier keys share a query's chunk depends on how many positions (later ones
  included) hash to lower buckets; the scores and values of later positions never reach earlier outputs, but
  their bucket counts shift chunk boundaries, as in the paper's scheme.
- :func:`full_attention` — the same shared-QK attention over all positions (``O(L^2)``), for comparison.
- :class:`ReversibleSequence` — RevNet residuals ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``. Its autograd function
  keeps only the last block's outputs and, in backward, recomputes each block's inputs from its outputs
  (``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``) and the activations from the inputs, restoring the random state each
  block saw in forward so that LSH draws the same rotations. Activation memory is that of one block, whatever the
  depth.
- :class:`ChunkedFeedForward` — the position-wise feed-forward applied to slices of the sequence, so that the
  ``L x d_ff`` hidden layer exists one slice at a time (also in the reversible backward, which recomputes it
  slice by slice).
- :class:`CharLM` — a small byte-level language model on these parts, with ``attention="lsh"`` or ``"full"``.

References
----------
- Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer", ICLR 2020 (arXiv:2001.04451).
- Andoni, Indyk, Laarhoven, Razenshteyn, Schmidt, "Practical and Optimal LSH for Angular Distance", NeurIPS 2015.
- Gomez, Ren, Urtasun, Grosse, "The Reversible Residual Network: Backpropagation Without Storing Activations",
  NeurIPS 2017.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidParameterError, ShapeError

__all__ = [
    "ATTENTIONS",
    "SELF_SCORE",
    "hash_buckets",
    "lsh_attention",
    "full_attention",
    "SharedQKAttention",
    "ChunkedFeedForward",
    "ReversibleBlock",
    "ReversibleSequence",
    "CharLMConfig",
    "CharLM",
    "encode_bytes",
    "lm_loss",
]

ATTENTIONS = ("lsh", "full")
SELF_SCORE = -1e5  # a query's score for itself: attended only when every other key is masked (the paper's value)
_MASKED = -1e9  # future positions and other buckets: never attended


def _auto_buckets(length: int, chunk_len: int) -> int:
    """About one chunk's worth of positions per bucket, rounded up to an even count (at least 2)."""
    n = max(1, length // chunk_len)
    return max(2, n + n % 2)


def hash_buckets(x: torch.Tensor, *, n_buckets: int, n_hashes: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Angular LSH: bucket ``argmax([xR; -xR])`` of each vector for ``n_hashes`` random rotations ``R``.

    ``x`` is ``(N, L, d)``; returns int64 buckets ``(N, n_hashes, L)`` in ``[0, n_buckets)``. ``n_buckets`` is
    even, or 1 (every vector in bucket 0). One rotation per round is shared by the batch, drawn fresh each call.

    >>> b = hash_buckets(torch.randn(2, 10, 8), n_buckets=4, n_hashes=3)
    >>> tuple(b.shape), int(b.min()) >= 0, int(b.max()) < 4
    ((2, 3, 10), True, True)
    """
    if x.dim() != 3:
        raise ShapeError(f"hash_buckets needs x of shape (N, L, d); got {tuple(x.shape)}.")
    if n_hashes < 1:
        raise InvalidParameterError(f"n_hashes={n_hashes}; use 1 or more hash rounds.")
    if n_buckets < 1 or (n_buckets > 1 and n_buckets % 2):
        raise InvalidParameterError(f"n_buckets={n_buckets}; use 1 or an even number (buckets come in +/- pairs).")
    n, length, d = x.shape
    if n_buckets == 1:
        return torch.zeros(n, n_hashes, length, dtype=torch.long, device=x.device)
    rot = torch.randn(n_hashes, d, n_buckets // 2, generator=generator, device=x.device, dtype=x.dtype)
    out = torch.empty(n, n_hashes, length, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for r in range(n_hashes):  # one round at a time: the (N, L, n_buckets/2) projection is the largest temporary
            proj = x.detach() @ rot[r]
            hi, arg_hi = proj.max(dim=-1)
            lo, arg_lo = proj.min(dim=-1)
            # argmax over [xR; -xR] without forming the concatenation
            out[:, r] = torch.where(hi >= -lo, arg_hi, arg_lo + n_buckets // 2)
    return out


def _look_back(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, c, ...) -> (N, C, 2c, ...)``: each chunk followed by the previous one (cyclically). With one chunk
    there is no previous chunk (it would be the chunk itself, counted twice)."""
    if x.shape[1] == 1:
        return x
    return torch.cat([x, x.roll(1, dims=1)], dim=2)


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, *, n_hashes: int = 4, n_buckets: int | None = None,
                  chunk_len: int = 64, causal: bool = False, buckets: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Shared-QK attention within LSH buckets, chunked (Reformer). ``qk`` ``(N, L, d)``, ``v`` ``(N, L, dv)``.

    ``L`` must be a multiple of ``chunk_len``. ``n_buckets=None`` picks about ``L / chunk_len`` (even).
    ``buckets`` ``(N, n_hashes, L)`` replaces the random hashing (then ``n_hashes`` is its second dimension).
    Returns ``(N, L, dv)``. With ``n_buckets=1`` and ``chunk_len=L`` it equals :func:`full_attention`.

    >>> qk, v = torch.randn(2, 32, 8), torch.randn(2, 32, 4)
    >>> tuple(lsh_attention(qk, v, n_hashes=2, n_buckets=4, chunk_len=8, causal=True).shape)
    (2, 32, 4)
    """
    if qk.dim() != 3 or v.dim() != 3 or qk.shape[:2] != v.shape[:2]:
        raise ShapeError(f"lsh_attention needs qk (N, L, d) and v (N, L, dv) of the same N, L; got "
                         f"{tuple(qk.shape)} and {tuple(v.shape)}.")
    n, length, d = qk.shape
    dv = v.shape[-1]
    if chunk_len < 1 or length % chunk_len:
        raise ShapeError(f"sequence length {length} is not a multiple of chunk_len={chunk_len}; pad the sequence "
                         "(at the end, for causal attention) or choose a chunk_len that divides it.")
    if n_buckets is None:
        n_buckets = _auto_buckets(length, chunk_len)
    if buckets is None:
        buckets = hash_buckets(qk, n_buckets=n_buckets, n_hashes=n_hashes, generator=generator)
    elif buckets.dim() != 3 or buckets.shape[0] != n or buckets.shape[2] != length:
        raise ShapeError(f"buckets must be (N, n_hashes, L) = ({n}, n_hashes, {length}); got {tuple(buckets.shape)}.")
    elif int(buckets.max()) >= n_buckets or int(buckets.min()) < 0:
        raise InvalidParameterError(f"buckets hold values outside [0, n_buckets={n_buckets}); pass the n_buckets "
                                    "they were hashed with.")
    nh = buckets.shape[1]
    total = nh * length
    n_chunks = total // chunk_len

    with torch.no_grad():
        pos = torch.arange(length, device=qk.device)
        # bucket ids offset by round, so that the rounds sort into separate segments and never share a bucket
        ids = buckets + n_buckets * torch.arange(nh, device=qk.device)[:, None]
        sort_key = (ids * length + pos).reshape(n, total)  # unique per (round, position): (bucket id, position)
        skey, order = sort_key.sort(dim=-1)  # sorted slot -> flat (round, position)
        undo = order.argsort(dim=-1)  # flat (round, position) -> sorted slot
        spos = order % length  # original position in each sorted slot
        mask = _ChunkMask(skey, spos, undo, buckets, chunk_len, causal, length)

    sqk = qk.gather(1, spos[..., None].expand(-1, -1, d)).view(n * n_chunks, chunk_len, d)
    sv = v.gather(1, spos[..., None].expand(-1, -1, dv)).view(n * n_chunks, chunk_len, dv)
    out, lse = _ChunkedAttention.apply(sqk, sv, mask)

    # back to (round, position) order, then the rounds combined by their share of the total softmax mass
    out = out.view(n, total, dv).gather(1, undo[..., None].expand(-1, -1, dv)).view(n, nh, length, dv)
    lse = lse.view(n, total).gather(1, undo).view(n, nh, length)
    weights = torch.softmax(lse, dim=1)
    return (out * weights[..., None]).sum(dim=1)


_GROUP_ELEMENTS = 1 << 20  # score elements per group of chunks: bounds the working set (4 MiB per fp32 tensor)


class _ChunkMask:
    """The additive score bias of any range of chunks, built on demand from per-slot integers (``O(n_hashes^2 L)``
    of them), so that no bias tensor for all chunks at once is ever kept.

    The bias is 0 for a key the query may attend, :data:`SELF_SCORE` for the query itself, -1e9 for other buckets
    (and rounds) and, if causal, later positions; minus ``log N`` with ``N`` the number of hash rounds in which the
    key shares the query's bucket and lies in its window (the chunk or the previous one). That last term makes the
    round-weighted sum count each distinct key once (the paper's Appendix A), so more rounds never over-weight the
    keys that every round finds.
    """

    def __init__(self, skey: torch.Tensor, spos: torch.Tensor, undo: torch.Tensor, buckets: torch.Tensor,
                 chunk_len: int, causal: bool, length: int) -> None:
        n, nh, _ = buckets.shape
        n_chunks = skey.shape[1] // chunk_len
        self.causal, self.length, self.n_chunks = causal, length, n_chunks
        # per chunk (flattened N * C): the sort keys bucket_id * L + position of its queries and of its window's keys
        self.qkey = skey.view(n * n_chunks, chunk_len)
        self.kkey = _look_back(skey.view(n, n_chunks, chunk_len)).flatten(0, 1)
        self.qpos = spos.view(n * n_chunks, chunk_len)
        # flat index of each chunk's previous chunk (cyclic within a sequence); None: the window is the chunk alone
        flat = torch.arange(n * n_chunks, device=skey.device).view(n, n_chunks)
        self.prev = flat.roll(1, dims=1).flatten() if n_chunks > 1 else None
        self.q_code = self.q_prev = self.k_code = None
        if nh > 1:
            # (bucket, chunk) of every (round, position) copy as one code; a key is in a query's window of round r
            # when its round-r code equals the query's round-r code or that code with the previous chunk
            chunk_of = (undo // chunk_len).view(n, nh, length)
            code = (buckets * n_chunks + chunk_of).to(torch.int32)
            prev = (buckets * n_chunks + (chunk_of - 1) % n_chunks).to(torch.int32)
            idx = spos[..., None].expand(-1, -1, nh)
            q_code = code.transpose(1, 2).gather(1, idx).view(n, n_chunks, chunk_len, nh)
            self.q_prev = prev.transpose(1, 2).gather(1, idx).view(n * n_chunks, chunk_len, nh)
            self.k_code = _look_back(q_code).flatten(0, 1)
            self.q_code = q_code.flatten(0, 1)

    def codes(self, lo: int, hi: int) -> torch.Tensor:
        """uint8 ``(hi - lo, c, 2c or c)`` for chunks ``lo..hi-1``: 0 masked, ``N`` (1..n_hashes) for a key reached
        in ``N`` rounds, 255 for the query itself; :meth:`bias` turns them into scores."""
        q, k = self.qkey[lo:hi, :, None], self.kkey[lo:hi, None, :]
        if self.causal:  # same bucket id and not later  <=>  id * L <= key_k <= key_q
            allowed = (k <= q) & (k >= q - self.qpos[lo:hi, :, None])
        else:
            allowed = torch.div(k, self.length, rounding_mode="floor") == torch.div(q, self.length, rounding_mode="floor")
        if self.k_code is None:
            code = allowed.to(torch.uint8)
        else:
            code = torch.zeros(allowed.shape, dtype=torch.uint8, device=q.device)
            for r in range(self.k_code.shape[-1]):
                kc = self.k_code[lo:hi, None, :, r]
                hit = kc == self.q_code[lo:hi, :, None, r]
                if self.n_chunks > 1:
                    hit |= kc == self.q_prev[lo:hi, :, None, r]
                code += hit
            code.masked_fill_(~allowed, 0)
        return code.masked_fill_(k == q, 255)  # the same slot: this query itself, in this round

    def bias(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Scores to add for :meth:`codes`: -1e9, ``-log N``, and :data:`SELF_SCORE` ``- log n_hashes`` (a query
        reaches itself in every round)."""
        nh = 1 if self.k_code is None else self.k_code.shape[-1]
        table = torch.zeros(256, dtype=dtype, device=codes.device)
        table[0] = _MASKED
        table[1:nh + 1] = -torch.arange(1, nh + 1, dtype=dtype, device=codes.device).log()
        table[255] = SELF_SCORE - math.log(nh)
        return table.index_select(0, codes.flatten().to(torch.int32)).view(codes.shape)


class _ChunkedAttention(torch.autograd.Function):
    """Shared-QK softmax attention of each chunk's queries ``(B, c, d)`` over its window (the chunk and the
    previous one, keys normalised to unit length), returning the output ``(B, c, dv)`` and the log-sum-exp of the
    scores ``(B, c, 1)``. Chunks are processed in groups of about :data:`_GROUP_ELEMENTS` scores, each group's
    window gathered on the fly; backward recomputes a group's scores instead of storing them. Memory beyond the
    inputs and outputs is one group's, whatever the sequence length (Reformer's chunking, applied to backward too).
    """

    @staticmethod
    def forward(ctx, q, v, mask):
        b, c, d = q.shape
        scale = d ** -0.5
        step = max(1, _GROUP_ELEMENTS // (c * c * (1 if mask.prev is None else 2)))
        norm = q.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # keys = q / |q| (as F.normalize)
        out = q.new_empty(b, c, v.shape[-1])
        lse = q.new_empty(b, c, 1)
        # with gradients to come, keep each group's mask codes (1 byte per score) so backward need not rebuild them
        saved = [] if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        for lo in range(0, b, step):
            hi = min(b, lo + step)
            keys = _window(q, mask.prev, lo, hi) / _window(norm, mask.prev, lo, hi)
            codes = mask.codes(lo, hi)
            if saved is not None:
                saved.append(codes)
            dots = torch.baddbmm(mask.bias(codes, q.dtype), q[lo:hi], keys.transpose(1, 2), alpha=scale)
            p = torch.softmax(dots, dim=-1)
            # exact: p at the arg-max is exp(max - lse), and at least 1 / window, so the log is well conditioned
            lse[lo:hi] = dots.amax(dim=-1, keepdim=True) - p.amax(dim=-1, keepdim=True).log()
            torch.bmm(p, _window(v, mask.prev, lo, hi), out=out[lo:hi])
        ctx.save_for_backward(q, v, norm)
        ctx.mask, ctx.step, ctx.scale, ctx.codes = mask, step, scale, saved
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, v, norm = ctx.saved_tensors
        prev, c = ctx.mask.prev, q.shape[1]
        dq, dv = torch.zeros_like(q), torch.zeros_like(v)
        for i, lo in enumerate(range(0, q.shape[0], ctx.step)):
            hi = min(q.shape[0], lo + ctx.step)
            wnorm = _window(norm, prev, lo, hi)
            keys = _window(q, prev, lo, hi) / wnorm
            codes = ctx.codes[i] if ctx.codes is not None else ctx.mask.codes(lo, hi)
            dots = torch.baddbmm(ctx.mask.bias(codes, q.dtype), q[lo:hi], keys.transpose(1, 2), alpha=ctx.scale)
            p = torch.softmax(dots, dim=-1)  # = exp(dots - lse); the softmax kernel is the faster one on CPU
            _scatter_window(dv, torch.bmm(p.transpose(1, 2), dout[lo:hi]), prev, lo, hi, c)
            # d(score) = p * (dp - sum(p * dp) + dlse)
            dp = torch.bmm(dout[lo:hi], _window(v, prev, lo, hi).transpose(1, 2))
            ds = p.mul_(dp.sub_((p * dp).sum(dim=-1, keepdim=True)).add_(dlse[lo:hi]))
            dq[lo:hi] += torch.bmm(ds, keys).mul_(ctx.scale)
            # keys' gradient, through k = q / |q| (dq += (dk - k (k . dk)) / |q|), onto the chunks they came from
            dk = torch.bmm(ds.transpose(1, 2), q[lo:hi]).mul_(ctx.scale)
            dk.sub_(keys * (keys * dk).sum(dim=-1, keepdim=True)).div_(wnorm)
            _scatter_window(dq, dk, prev, lo, hi, c)
        return dq, dv, None


def _window(x: torch.Tensor, prev: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Chunks ``lo..hi-1`` of ``x`` ``(B, c, ...)``, each followed by its previous chunk: ``(hi - lo, 2c, ...)``."""
    if prev is None:
        return x[lo:hi]
    return torch.cat([x[lo:hi], x[prev[lo:hi]]], dim=1)


def _scatter_window(acc: torch.Tensor, grad: torch.Tensor, prev: torch.Tensor | None, lo: int, hi: int,
                    c: int) -> None:
    """Add the gradient of a group's windows ``(hi - lo, 2c, ...)`` back onto the chunks they were taken from."""
    acc[lo:hi] += grad[:, :c]
    if prev is not None:
        acc.index_add_(0, prev[lo:hi], grad[:, c:])


def full_attention(qk: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Shared-QK attention over every position (``O(L^2)`` memory): the reference for :func:`lsh_attention`,
    with the same unit-length keys, scaling and self-masking.

    >>> qk, v = torch.randn(1, 5, 8), torch.randn(1, 5, 3)
    >>> torch.allclose(full_attention(qk, v, causal=True)[:, 0], v[:, 0])  # position 0 sees only itself
    True
    """
    if qk.dim() != 3 or v.dim() != 3 or qk.shape[:2] != v.shape[:2]:
        raise ShapeError(f"full_attention needs qk (N, L, d) and v (N, L, dv) of the same N, L; got "
                         f"{tuple(qk.shape)} and {tuple(v.shape)}.")
    length, d = qk.shape[1], qk.shape[2]
    dots = qk @ F.normalize(qk, dim=-1).transpose(-1, -2) * (d ** -0.5)
    eye = torch.eye(length, dtype=torch.bool, device=qk.device)
    dots = dots.masked_fill(eye, SELF_SCORE)
    if causal:
        dots = dots.masked_fill(torch.ones_like(eye).triu_(1), _MASKED)
    return torch.softmax(dots, dim=-1) @ v


class SharedQKAttention(nn.Module):
    """Multi-head self-attention with one projection for queries and keys, by LSH buckets or over all positions.

    >>> att = SharedQKAttention(16, 2, attention="lsh", chunk_len=4)
    >>> tuple(att(torch.randn(3, 12, 16)).shape)
    (3, 12, 16)
    """

    def __init__(self, d_model: int, n_heads: int, *, attention: str = "lsh", causal: bool = True,
                 n_hashes: int = 4, n_buckets: int | None = None, chunk_len: int = 64) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise InvalidParameterError(f"attention={attention!r}; use one of {', '.join(ATTENTIONS)}.")
        if n_heads < 1 or d_model % n_heads:
            raise InvalidParameterError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        self.attention, self.causal, self.n_heads = attention, causal, n_heads
        self.n_hashes, self.n_buckets, self.chunk_len = n_hashes, n_buckets, chunk_len
        self.to_qk = nn.Linear(d_model, d_model, bias=False)
        self.to_v = nn.Linear(d_model, d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, length, dm = t.shape
        return t.view(b, length, self.n_heads, dm // self.n_heads).transpose(1, 2).reshape(b * self.n_heads, length, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dm = x.shape
        qk, v = self._heads(self.to_qk(x)), self._heads(self.to_v(x))
        if self.attention == "lsh":
            out = lsh_attention(qk, v, n_hashes=self.n_hashes, n_buckets=self.n_buckets, chunk_len=self.chunk_len,
                                causal=self.causal)
        else:
            out = full_attention(qk, v, causal=self.causal)
        out = out.view(b, self.n_heads, length, -1).transpose(1, 2).reshape(b, length, dm)
        return self.to_out(out)


class ChunkedFeedForward(nn.Module):
    """``LayerNorm -> Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model)``, position-wise, over ``chunks``
    slices of the sequence (dimension -2) one after another.

    >>> ff = ChunkedFeedForward(8, 32, chunks=4)
    >>> x = torch.randn(2, 12, 8)
    >>> torch.allclose(ff(x), ff.net(x), atol=1e-6)
    True
    """

    def __init__(self, d_model: int, d_ff: int, *, chunks: int = 1) -> None:
        super().__init__()
        if chunks < 1:
            raise InvalidParameterError(f"chunks={chunks}; use 1 or more slices.")
        self.chunks = chunks
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chunks == 1:
            return self.net(x)
        return torch.cat([self.net(c) for c in x.chunk(self.chunks, dim=-2)], dim=-2)


@contextlib.contextmanager
def _rng_restored(state: tuple) -> Iterator[None]:
    """Run with the random state ``state`` (from :func:`_rng_state`), leaving the caller's state untouched."""
    cpu, cuda_dev, cuda = state
    with torch.random.fork_rng(devices=[] if cuda_dev is None else [cuda_dev]):
        torch.set_rng_state(cpu)
        if cuda_dev is not None:
            torch.cuda.set_rng_state(cuda, cuda_dev)
        yield


def _rng_state(x: torch.Tensor) -> tuple:
    if x.is_cuda:
        return torch.get_rng_state(), x.device.index, torch.cuda.get_rng_state(x.device.index)
    return torch.get_rng_state(), None, None


def _grads(outputs: torch.Tensor, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> list:
    gs = torch.autograd.grad(outputs, list(inputs), grad_out, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, gs)]


class ReversibleBlock(nn.Module):
    """RevNet residual pair ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``; :meth:`forward` is the plain computation.

    ``g_chunks > 1`` recomputes ``g`` slice by slice (dimension -2) in the reversible backward; it requires a
    position-wise, deterministic ``g`` such as :class:`ChunkedFeedForward`.
    """

    def __init__(self, f: nn.Module, g: nn.Module, *, g_chunks: int = 1) -> None:
        super().__init__()
        if g_chunks < 1:
            raise InvalidParameterError(f"g_chunks={g_chunks}; use 1 or more slices.")
        self.f, self.g, self.g_chunks = f, g, g_chunks

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = x1 + self.f(x2)
        return y1, x2 + self.g(y1)

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return ([p for p in self.f.parameters() if p.requires_grad], [p for p in self.g.parameters() if p.requires_grad])

    def reverse(self, y1: torch.Tensor, y2: torch.Tensor, dy1: torch.Tensor, dy2: torch.Tensor, rng_f: tuple,
                rng_g: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """From outputs and their gradients to inputs, input gradients and parameter gradients (f's, then g's)."""
        f_params, g_params = self.trainable()
        g_grads = [torch.zeros_like(p) for p in g_params]
        g_out, dy1_g = [], []
        with _rng_restored(rng_g):
            for yc, dc in zip(y1.chunk(self.g_chunks, dim=-2), dy2.chunk(self.g_chunks, dim=-2)):
                yc = yc.detach().requires_grad_()
                with torch.enable_grad():
                    gc = self.g(yc)
                gs = _grads(gc, [yc, *g_params], dc)
                g_out.append(gc.detach())
                dy1_g.append(gs[0])
                for acc, gp in zip(g_grads, gs[1:]):
                    acc += gp
        with torch.no_grad():
            x2 = y2 - torch.cat(g_out, dim=-2)
            dx1 = dy1 + torch.cat(dy1_g, dim=-2)
        x2 = x2.detach().requires_grad_()
        with _rng_restored(rng_f), torch.enable_grad():
            fx2 = self.f(x2)
        gs = _grads(fx2, [x2, *f_params], dx1)
        with torch.no_grad():
            x1 = y1 - fx2.detach()
            dx2 = dy2 + gs[0]
        return x1, x2.detach(), dx1, dx2, gs[1:] + g_grads


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, blocks, *params):
        states = []
        with torch.no_grad():
            for b in blocks:
                rng_f = _rng_state(x1)
                y1 = x1 + b.f(x2)
                rng_g = _rng_state(x1)
                x2 = x2 + b.g(y1)
                x1 = y1
                states.append((rng_f, rng_g))
        ctx.blocks, ctx.states = blocks, states
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        per_block = []
        for b, (rng_f, rng_g) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            y1, y2, dy1, dy2, pg = b.reverse(y1, y2, dy1, dy2, rng_f, rng_g)
            per_block.append(pg)
        param_grads = [g for pg in reversed(per_block) for g in pg]
        return (dy1, dy2, None, *param_grads)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock`. With ``reversible=True`` and gradients enabled it stores no
    activations: backward rebuilds them block by block (RevNet), so memory does not grow with depth.
    ``reversible=False`` runs the same blocks through ordinary autograd.

    >>> blocks = [ReversibleBlock(nn.Linear(4, 4), nn.Linear(4, 4)) for _ in range(3)]
    >>> seq = ReversibleSequence(blocks)
    >>> x = torch.randn(2, 4, requires_grad=True)
    >>> y1, y2 = seq(x, x)
    >>> (y1 + y2).sum().backward(); tuple(x.grad.shape)
    (2, 4)
    """

    def __init__(self, blocks: Sequence[ReversibleBlock], *, reversible: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.reversible = reversible

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not (self.reversible and torch.is_grad_enabled()) or not self.blocks:
            for b in self.blocks:
                x1, x2 = b(x1, x2)
            return x1, x2
        params = [p for b in self.blocks for ps in b.trainable() for p in ps]
        return _ReversibleFunction.apply(x1, x2, list(self.blocks), *params)


@dataclass(frozen=True, kw_only=True)
class CharLMConfig:
    """Shape of :class:`CharLM`. ``attention`` is ``"lsh"`` or ``"full"``; the LSH fields are ignored by
    ``"full"``. ``n_buckets=None`` picks about ``L / chunk_len`` per sequence.

    >>> CharLMConfig(attention="full").attention
    'full'
    """

    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    attention: str = "lsh"
    n_hashes: int = 4
    n_buckets: int | None = None
    chunk_len: int = 64
    ff_chunks: int = 1
    reversible: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise InvalidParameterError(f"CharLMConfig.attention={self.attention!r}; use one of {', '.join(ATTENTIONS)}.")
        if min(self.vocab_size, self.d_model, self.n_heads, self.n_layers, self.d_ff, self.n_hashes, self.chunk_len,
               self.ff_chunks) < 1:
            raise InvalidParameterError(f"CharLMConfig sizes must all be >= 1; got {self}.")
        if self.d_model % self.n_heads:
            raise InvalidParameterError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")
        if self.n_buckets is not None and (self.n_buckets < 1 or (self.n_buckets > 1 and self.n_buckets % 2)):
            raise InvalidParameterError(f"n_buckets={self.n_buckets}; use None, 1 or an even number.")


def _sinusoid(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class CharLM(nn.Module):
    """Causal byte-level language model: embedding + sinusoidal positions, reversible blocks of
    (LayerNorm -> shared-QK attention, chunked feed-forward), LayerNorm, logits. For LSH attention a sequence is
    padded at its end to a multiple of ``chunk_len`` (causal: the padding is never seen by real positions).

    >>> lm = CharLM(CharLMConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, chunk_len=8))
    >>> tuple(lm(torch.randint(0, 256, (2, 20))).shape)
    (2, 20, 256)
    """

    def __init__(self, config: CharLMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or CharLMConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        blocks = []
        for _ in range(cfg.n_layers):
            att = SharedQKAttention(cfg.d_model, cfg.n_heads, attention=cfg.attention, causal=True,
                                    n_hashes=cfg.n_hashes, n_buckets=cfg.n_buckets, chunk_len=cfg.chunk_len)
            f = nn.Sequential(nn.LayerNorm(cfg.d_model), att)
            g = ChunkedFeedForward(cfg.d_model, cfg.d_ff, chunks=cfg.ff_chunks)
            blocks.append(ReversibleBlock(f, g, g_chunks=cfg.ff_chunks))
        self.layers = ReversibleSequence(blocks, reversible=cfg.reversible)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)`` for int64 ``tokens`` ``(B, L)``; position t sees tokens 0..t."""
        if tokens.dim() != 2:
            raise ShapeError(f"CharLM needs tokens of shape (batch, length); got {tuple(tokens.shape)}.")
        length = tokens.shape[1]
        pad = (-length) % self.config.chunk_len if self.config.attention == "lsh" else 0
        if pad:
            tokens = F.pad(tokens, (0, pad))
        h = self.embed(tokens) + _sinusoid(tokens.shape[1], self.config.d_model, tokens.device)
        y1, y2 = self.layers(h, h)
        return self.head(self.norm((y1 + y2) / 2))[:, :length]


def encode_bytes(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as int64 token ids (vocabulary 256).

    >>> encode_bytes("hé").tolist()
    [104, 195, 169]
    """
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats (divide by ``ln 2`` for bits per character) over ``tokens`` ``(B, L)``:
    positions ``0..L-2`` predict ``1..L-1``."""
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ShapeError(f"lm_loss needs tokens (batch, length >= 2); got {tuple(tokens.shape)}.")
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
