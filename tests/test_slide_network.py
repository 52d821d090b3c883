"""SLIDE network: active sets, sparse forward vs dense, gradients vs torch autograd, lazy Adam, learning."""

import numpy as np
import pytest

from edgeslim.errors import InvalidParameterError
from edgeslim.research.slide import _kernels as K_
from edgeslim.research.slide import _reference as R_
from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc
from edgeslim.research.slide.hashing import HashConfig
from edgeslim.research.slide.network import SlideConfig, SlideNetwork, dense_scores, init_params

NF, NL, H = 400, 600, 16


@pytest.fixture(scope="module")
def data():
    return make_synthetic_xmc(SyntheticConfig(n_train=600, n_test=200, n_features=NF, n_labels=NL,
                                              feats_per_label=6, feats_per_sample=8, seed=1))


def _net(backend="numba", max_active=40, family="simhash", **kw):
    cfg = SlideConfig(hidden=H, max_active=max_active, backend=backend, seed=2,
                      hash=HashConfig(family=family, K=4, L=6, bucket_size=16, bin_size=4, range_pow=8), **kw)
    return SlideNetwork(n_features=NF, n_labels=NL, config=cfg)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("max_active", [1, 40])
def test_active_set_contains_true_labels_and_respects_cap(data, backend, max_active):
    train, _ = data
    net = _net(backend, max_active)
    rows = np.arange(100)
    sets = net.active_sets(train, rows, with_labels=True)
    without = net.active_sets(train, rows, with_labels=False)
    for r, act, bare in zip(rows, sets, without):
        labs = np.unique(train.labels(r))
        assert set(labs.tolist()) <= set(act.tolist())
        assert np.array_equal(np.sort(act[: labs.size]), labs)  # labels come first
        assert len(set(act.tolist())) == act.size  # no duplicates
        assert act.size <= labs.size + max_active and bare.size <= max_active
    assert max(b.size for b in without) > 0  # LSH did contribute candidates


def test_active_sets_numba_equal_reference(data):
    train, _ = data
    a, b = _net("numpy", 25), _net("numba", 25)
    for x, y in zip(a.active_sets(train, np.arange(80), with_labels=True),
                    b.active_sets(train, np.arange(80), with_labels=True)):
        np.testing.assert_array_equal(x, y)


def test_cap_keeps_most_hit_candidates(data):
    train, _ = data
    net = _net("numba", max_active=5)
    full = _net("numba", max_active=10_000)
    h = net.hidden(train, np.arange(30))
    for i, (small, big) in enumerate(zip(net.active_sets(train, np.arange(30), with_labels=False),
                                         full.active_sets(train, np.arange(30), with_labels=False))):
        code = net.tables.codes(h[i : i + 1])[0]
        hits = {}
        for l, bk in enumerate(code):
            for nid in net.tables.buckets_[l, bk, : min(net.tables.fill_[l, bk], 16)]:
                hits[int(nid)] = hits.get(int(nid), 0) + 1
        assert set(big.tolist()) == set(hits)
        if big.size > 5:
            kth = sorted(hits.values(), reverse=True)[4]
            assert all(hits[int(n)] >= kth for n in small)


def test_sparse_forward_equals_dense_forward_on_active_set(data):
    train, _ = data
    net = _net()
    rng = np.random.default_rng(0)
    net.W2[:] = rng.standard_normal(net.W2.shape).astype(np.float32)
    net.b2[:] = rng.standard_normal(net.b2.shape).astype(np.float32)
    rows = np.arange(20)
    H_ = net.hidden(train, rows)
    full = dense_scores(net.params(), H_)
    for i, act in enumerate(net.active_sets(train, rows, with_labels=True)):
        np.testing.assert_allclose(net.active_logits(H_[i], act), full[i, act], rtol=1e-5, atol=1e-5)


def _grads(kmod, net, train, rows, n_chunks, n_random=0):
    G1, Gb1, G2, Gb2 = (np.zeros_like(a) for a in (net.W1, net.b1[0], net.W2, net.b2[:, 0]))
    t1, t2 = np.zeros(NF, np.uint8), np.zeros(NL, np.uint8)
    loss, n_act = kmod.batch_grads(
        train.x_indptr, train.x_idx, train.x_val, rows, train.y_indptr, train.y_idx,
        net.W1, net.b1[0], net.W2, net.b2[:, 0], G1, Gb1, G2, Gb2, t1, t2,
        *net.tables.hash_args, net.qshift_, net.tables.buckets_, net.tables.fill_, net.config.max_active, n_random, 11, n_chunks)
    return dict(G1=G1, Gb1=Gb1, G2=G2, Gb2=Gb2, t1=t1, t2=t2, loss=loss, n_act=n_act)


def test_gradients_on_active_set_match_torch_autograd(data):
    torch = pytest.importorskip("torch")
    train, _ = data
    net = _net("numpy", 30)
    rng = np.random.default_rng(3)
    net.b1[:] = rng.standard_normal(net.b1.shape).astype(np.float32) * 0.3
    net.b2[:] = rng.standard_normal(net.b2.shape).astype(np.float32) * 0.3
    rows = np.arange(8, dtype=np.int64)
    got = _grads(R_, net, train, rows, 1)
    W1 = torch.tensor(net.W1, dtype=torch.float64, requires_grad=True)
    b1 = torch.tensor(net.b1[0], dtype=torch.float64, requires_grad=True)
    W2 = torch.tensor(net.W2, dtype=torch.float64, requires_grad=True)
    b2 = torch.tensor(net.b2[:, 0], dtype=torch.float64, requires_grad=True)
    loss = 0
    for r, act in zip(rows, net.active_sets(train, rows, with_labels=True)):
        f, v = train.features(r)
        h = torch.relu(torch.tensor(v, dtype=torch.float64) @ W1[torch.tensor(f, dtype=torch.long)] + b1)
        a = torch.tensor(act)
        logp = torch.log_softmax(W2[a] @ h + b2[a], 0)
        nl = np.unique(train.labels(r)).size
        loss = loss - logp[:nl].mean()
    (loss / len(rows)).backward()
    np.testing.assert_allclose(got["loss"], float(loss.detach()), rtol=1e-4)
    for name, ref in (("G1", W1), ("Gb1", b1), ("G2", W2), ("Gb2", b2)):
        np.testing.assert_allclose(got[name], ref.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    # only active rows carry gradient and are flagged
    active = np.unique(np.concatenate(net.active_sets(train, rows, with_labels=True)))
    assert np.array_equal(np.flatnonzero(got["t2"]), active)
    assert np.all(got["G2"][np.setdiff1d(np.arange(NL), active)] == 0)


@pytest.mark.parametrize("family, n_chunks, n_random, center", [
    ("simhash", 1, 0, False), ("simhash", 3, 0, False), ("dwta", 1, 0, False), ("dwta", 3, 0, False),
    ("simhash", 3, 25, False), ("simhash", 3, 25, True)])
def test_batch_grads_numba_equals_reference(data, family, n_chunks, n_random, center):
    train, _ = data
    net = _net("numba", 30, family=family, center_queries=center)
    rows = np.arange(10, 40, dtype=np.int64)
    if center:
        net._update_center(train, np.arange(100))
        assert np.abs(net.qshift_).max() > 0
    ref = _grads(R_, net, train, rows, 1, n_random)
    # one thread runs the chunks in turn: exact comparison, no HOGWILD races
    numba = pytest.importorskip("numba")
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        got = _grads(K_, net, train, rows, n_chunks, n_random)
    finally:
        numba.set_num_threads(saved)
    assert got["n_act"] == ref["n_act"]
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    for name in ("G1", "Gb1", "G2", "Gb2"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for name in ("t1", "t2"):
        np.testing.assert_array_equal(got[name], ref[name])


@pytest.mark.parametrize("kmod", [R_, K_])
def test_lazy_adam_matches_torch_adam_on_touched_rows(kmod):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 5)).astype(np.float32)
    M, V = np.zeros_like(W), np.zeros_like(W)
    p = torch.nn.Parameter(torch.tensor(W.copy()))
    opt = torch.optim.Adam([p], lr=0.01)
    for step in (1, 2, 3):
        G = rng.standard_normal(W.shape).astype(np.float32)
        touched = np.array([1, 0, 1, 1, 0, 1], np.uint8)
        p.grad = torch.tensor(G)
        opt.step()
        before = W.copy()
        n = kmod.adam_rows(W, M, V, G, touched, 0.01, 0.9, 0.999, 1e-8, step)
        assert n == 4 and touched.sum() == 0 and np.all(G[[0, 2, 3, 5]] == 0)
        np.testing.assert_array_equal(W[[1, 4]], before[[1, 4]])  # untouched rows never move
    # rows touched every step follow torch's Adam exactly
    np.testing.assert_allclose(W[[0, 2, 3, 5]], p.detach().numpy()[[0, 2, 3, 5]], rtol=1e-5, atol=1e-6)


def test_training_learns_and_tables_rebuild_on_a_decaying_schedule(data):
    train, test = data
    hc = HashConfig(K=4, L=8, bucket_size=32, rebuild_every=3, rebuild_growth=2.0, rebuild_max=24)
    net = SlideNetwork(n_features=NF, n_labels=NL, config=SlideConfig(hidden=32, max_active=60, lr=0.01, hash=hc))
    from edgeslim.research.slide.network import precision_at_k

    rows = np.arange(test.n_samples)
    p1_0 = precision_at_k(net.predict_topk(test, rows, 1), test, rows, 1)
    rebuild_steps, rng = [], np.random.default_rng(0)
    for _ in range(6):
        order = rng.permutation(train.n_samples)
        for lo in range(0, train.n_samples, 50):
            before = net.tables.n_rebuilds_
            net.step(train, order[lo : lo + 50])
            if net.tables.n_rebuilds_ > before:
                rebuild_steps.append(net.step_)
    p1 = precision_at_k(net.predict_topk(test, rows, 1), test, rows, 1)
    assert p1 > p1_0 + 0.3, (p1_0, p1)
    gaps = np.diff([0] + rebuild_steps)
    assert gaps[0] == 3 and gaps[1] == 6 and gaps[2] == 12 and np.all(gaps[3:] == 24), gaps
    # LSH-only inference agrees with exact inference on most samples once trained
    exact = net.predict_topk(test, rows, 1)[:, 0]
    approx = net.predict_topk(test, rows, 1, exact=False)[:, 0]
    assert (exact == approx).mean() > 0.5


def test_bad_config_and_params_raise():
    with pytest.raises(InvalidParameterError, match="max_active"):
        SlideConfig(max_active=0).validate()
    p = init_params(NF, NL, 8)
    with pytest.raises(InvalidParameterError, match="expected"):
        SlideNetwork(n_features=NF, n_labels=NL, config=SlideConfig(hidden=16), params=p)


def test_topk_rows_numba_equals_reference_with_ties():
    rng = np.random.default_rng(0)
    S = rng.integers(0, 5, size=(40, 300)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(K_.topk_rows(S, 5), R_.topk_rows(S, 5))


def test_topk_recall_is_the_share_of_exact_top5_in_the_active_set(data):
    train, test = data
    rows = np.arange(60)
    # one-bit keys and buckets larger than the label set: every table bucket holds about half the
    # labels, so 12 tables cover nearly everything and recall must be ~1
    wide = SlideNetwork(n_features=NF, n_labels=NL, config=SlideConfig(
        hidden=H, max_active=NL, hash=HashConfig(K=1, L=12, bucket_size=NL)))
    assert wide.topk_recall(test, rows) > 0.99
    net = _net(max_active=10)
    top = net.predict_topk(test, rows, 5)
    acts = net.active_sets(test, rows, with_labels=False)
    manual = np.mean([len(set(t.tolist()) & set(a.tolist())) / 5 for t, a in zip(top, acts)])
    assert net.topk_recall(test, rows) == pytest.approx(manual)
    assert net.topk_recall(test, rows) < 0.9  # a 10-neuron cap cannot cover most top-5s


def test_random_negatives_add_weighted_rows_outside_the_active_set(data):
    torch = pytest.importorskip("torch")
    train, _ = data
    net = _net("numpy", 10)
    rows = np.arange(5, dtype=np.int64)
    base = _grads(R_, net, train, rows, 1, 0)
    more = _grads(R_, net, train, rows, 1, 40)
    assert more["n_act"] > base["n_act"]  # random rows were added and computed
    extra = np.flatnonzero(more["t2"] & ~base["t2"].astype(bool))
    assert extra.size > 0 and np.all(more["G2"][extra].any(axis=1))  # they receive (negative) gradient
    # one draw of 40 shared by the five samples (per-sample draws would touch up to 200 rows)
    shared = {R_._mix(11, i) % NL for i in range(40)}
    assert set(extra.tolist()) <= shared and extra.size <= 40
    # the loss equals a softmax where each drawn row stands for (outside / drawn) rows
    act = net.active_sets(train, rows[:1], with_labels=True)[0]
    drawn = [R_._mix(11, i) % NL for i in range(40)]
    drawn = list(dict.fromkeys(j for j in drawn if j not in set(act.tolist())))
    h = torch.tensor(net.hidden(train, rows[:1])[0], dtype=torch.float64)
    ids = torch.tensor(np.concatenate([act, drawn]))
    z = torch.tensor(net.W2, dtype=torch.float64)[ids] @ h + torch.tensor(net.b2[:, 0], dtype=torch.float64)[ids]
    z[act.size:] += np.log((NL - act.size) / len(drawn))
    nl = np.unique(train.labels(0)).size
    expect = float(-torch.log_softmax(z, 0)[:nl].mean())
    one = _grads(R_, net, train, rows[:1], 1, 40)
    assert one["loss"] == pytest.approx(expect, rel=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_centred_queries_hash_h_minus_the_centre(data, backend):
    """With center_queries the active set is what hashing ``h - centre`` (not ``h``) retrieves, and the centre is the
    running mean of hidden vectors."""
    train, _ = data
    net = _net(backend, 10_000, center_queries=True)
    rows = np.arange(60)
    H_ = net.hidden(train, rows)
    net._update_center(train, rows)
    np.testing.assert_allclose(net.center_, H_.mean(axis=0), rtol=1e-5, atol=1e-6)
    codes = net.tables.codes(H_ - net.center_)  # hash the centred vectors directly
    plain = net.tables.codes(H_)
    assert (codes != plain).any()  # centring changes which buckets are probed
    for i, act in enumerate(net.active_sets(train, rows, with_labels=False)):
        want = set()
        for l, bk in enumerate(codes[i]):
            want |= set(net.tables.buckets_[l, bk, : min(net.tables.fill_[l, bk], 16)].tolist())
        assert set(act.tolist()) == want
    net._update_center(train, np.arange(60, 120))  # a second batch moves the centre 30% of the way
    np.testing.assert_allclose(net.center_, 0.7 * H_.mean(axis=0) + 0.3 * net.hidden(train, np.arange(60, 120)).mean(0),
                               rtol=1e-5, atol=1e-6)


def test_centring_is_set_on_the_first_step_and_refreshed_at_rebuilds(data):
    train, _ = data
    net = _net("numba", 30, center_queries=True)
    assert not net.center_.any()
    net.step(train, np.arange(32))
    assert net.center_.any() and net.qshift_.any()
    plain = _net("numba", 30)
    plain.step(train, np.arange(32))
    assert not plain.qshift_.any()


def test_max_active_zero_turns_the_lsh_off(data):
    """max_active=0: no hashing, no candidates; each sample's softmax runs over its labels and the batch's shared
    uniform draw (numba and reference agree), and without a draw the config is refused."""
    train, _ = data
    with pytest.raises(InvalidParameterError, match="n_random"):
        SlideConfig(max_active=0).validate()
    with pytest.raises(InvalidParameterError, match="SimHash only"):
        SlideConfig(center_queries=True, hash=HashConfig(family="dwta")).validate()
    net = _net("numba", 0, n_random=30)
    rows = np.arange(10, 40, dtype=np.int64)
    assert all(a.size == 0 for a in net.active_sets(train, rows, with_labels=False))
    ref = _grads(R_, net, train, rows, 1, 30)
    got = _grads(K_, net, train, rows, 1, 30)
    labels = set(train.y_idx[train.y_indptr[10]:train.y_indptr[40]].tolist())
    shared = {R_._mix(11, i) % NL for i in range(30)}
    assert set(np.flatnonzero(ref["t2"]).tolist()) == labels | shared  # nothing else is touched
    np.testing.assert_array_equal(got["t2"], ref["t2"])
    np.testing.assert_allclose(got["G2"], ref["G2"], rtol=1e-4, atol=1e-6)
