"""Timed training loop, baselines and time-to-accuracy."""

import numpy as np
import pytest

from edgeslim.errors import UnknownNameError
from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc
from edgeslim.research.slide.hashing import HashConfig
from edgeslim.research.slide.network import init_params
from edgeslim.research.slide.train import TRAINERS, Checkpoint, FitConfig, FitRun, fit, make_trainer, time_to_reach

NF, NL = 300, 400


@pytest.fixture(scope="module")
def data():
    return make_synthetic_xmc(SyntheticConfig(n_train=800, n_test=150, n_features=NF, n_labels=NL,
                                              feats_per_label=6, feats_per_sample=8, seed=5))


def _ck(t, p1):
    return Checkpoint(train_s=t, samples=0, epoch=0, loss=0, p1=p1, p5=0, samples_per_s=0)


def test_time_to_reach_counts_the_crossing_it_keeps():
    h = [_ck(0, 0.0), _ck(10, 0.2), _ck(20, 0.6), _ck(30, 0.4), _ck(40, 0.7)]
    assert time_to_reach(h, 0.4) == pytest.approx(15.0)  # never below again after 20 s (0.4 is not below 0.4)
    assert time_to_reach(h, 0.6) == pytest.approx(30 + 10 * 0.2 / 0.3)  # crossed at 20 s, fell back, stays from ~36.7 s
    assert time_to_reach(h, 0.6, sustained=False) == pytest.approx(20.0)  # the first crossing
    assert time_to_reach(h, 0.65) == pytest.approx(30 + 10 * 0.25 / 0.3)
    assert time_to_reach(h, 0.8) is None
    assert time_to_reach([_ck(0, 0.5), _ck(10, 0.7), _ck(20, 0.3)], 0.4) is None  # ends below: not reached
    assert time_to_reach([_ck(5, 0.9), _ck(10, 0.95)], 0.4) == 5


def test_p1_standard_error():
    from edgeslim.research.slide.train import p1_standard_error

    assert p1_standard_error(0.5, 1000) == pytest.approx(0.0158, abs=1e-4)
    assert p1_standard_error(0.5, 5000) < p1_standard_error(0.5, 1000) / 2


@pytest.mark.parametrize("method", ["slide", "uniform", "dense", "sampled"])
def test_every_trainer_learns_from_the_same_start(data, method):
    pytest.importorskip("torch")
    train, test = data
    p = init_params(NF, NL, 32, seed=0)
    kw = dict(max_active=50, hash=HashConfig(K=4, L=8, bucket_size=32)) if method == "slide" else {}
    kw = dict(n_random=50) if method == "uniform" else kw
    tr = make_trainer(method, n_features=NF, n_labels=NL, hidden=32, lr=0.01, params=p, n_sampled=50, **kw)
    seen = []
    res = fit(tr, train, test, FitConfig(batch_size=64, max_epochs=4, eval_every_s=1e9, eval_samples=150),
              progress=seen.append)
    assert [c.samples for c in res.history] == [0, 3200] and len(seen) == 2
    assert res.final.p1 > res.history[0].p1 + 0.25, res.to_rows()
    assert 0 < res.stats["active_fraction"] <= 1
    if method == "dense":
        assert res.stats["active_fraction"] == 1.0
    else:
        assert res.stats["active_fraction"] < 0.6
    # every checkpoint of SLIDE reports its active set's recall of the exact top-5, the baselines have none
    if method == "slide":
        assert all(c.recall5 is not None and 0.0 <= c.recall5 <= 1.0 for c in res.history)
        assert res.final.recall5 == pytest.approx(tr.net.topk_recall(test, np.arange(150), 5))
    else:
        assert all(c.recall5 is None for c in res.history)


def test_fitrun_advances_in_slices_and_stops_at_target(data):
    train, test = data
    tr = make_trainer("slide", n_features=NF, n_labels=NL, hidden=32, lr=0.01, max_active=50,
                      hash=HashConfig(K=4, L=8, bucket_size=32))
    run = FitRun(tr, train, test, FitConfig(batch_size=32, max_epochs=50, eval_every_s=0.0, eval_samples=150,
                                            stop_at_p1=0.3))
    slices = 0
    while not run.advance(1e-9):  # one training step per slice: independent of machine speed
        slices += 1
        assert slices < 10_000
    assert slices >= 1 and run.result.final.p1 >= 0.3 and run.samples < 50 * train.n_samples
    assert all(b.train_s >= a.train_s for a, b in zip(run.result.history, run.result.history[1:]))


def test_unknown_trainer_suggests_names():
    with pytest.raises(UnknownNameError, match="sampled"):
        make_trainer("sampeld", n_features=1, n_labels=1)
    assert TRAINERS.names() == ["dense", "sampled", "slide", "uniform"]
