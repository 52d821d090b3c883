import numpy as np
import pytest

from edgeslim.errors import NotFittedError
from edgeslim.quant.calibrate import CALIBRATORS, StreamingHistogram, collect_ranges, get_calibrator

from conftest import tiny_conv_model


def test_histogram_doubling_rebins_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5000).astype(np.float32), rng.normal(0, 7, 5000).astype(np.float32)
    h = StreamingHistogram(bins=256)
    h.update(a)
    h.update(b)
    assert h.counts.sum() == 10000
    ref, _ = np.histogram(np.concatenate([a, b]), bins=256, range=(-h.amax, h.amax))
    # exact merge means the first batch's counts land on the coarse grid bin-for-bin (float edges aside)
    assert np.abs(h.counts - ref).sum() <= 4
    assert h.min == min(a.min(), b.min()) and h.max == max(a.max(), b.max())


def test_minmax_and_percentile():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200_000).astype(np.float32)
    x[:5] = 40.0  # rare outliers
    mm, pc = get_calibrator("minmax"), get_calibrator("percentile")
    for c in (mm, pc):
        for chunk in np.array_split(x, 7):
            c.update("t", chunk)
    assert mm.range("t") == (float(x.min()), 40.0)
    lo, hi = pc.range("t")
    assert 3.0 < hi < 6.0 and -6.0 < lo < -3.0  # outliers clipped, bulk kept


def test_entropy_clips_rare_outliers():
    rng = np.random.default_rng(2)
    x = np.abs(rng.laplace(0, 1, 100_000)).astype(np.float32)
    x[:3] = 200.0
    c = get_calibrator("entropy")
    c.update("t", x)
    lo, hi = c.range("t")
    assert lo == 0.0
    assert 3.0 < hi < 100.0  # well inside the outliers, well outside the bulk


def test_mse_clips_a_heavy_tail_near_the_known_optimum():
    # 8-bit uniform quantization of a Laplace(b=1) tail: the MSE-optimal clip sits near 10 b
    # (Banner et al., "Post-training 4-bit quantization", 2019, table 1: 9.89 b), below the sample max.
    rng = np.random.default_rng(2)
    x = np.abs(rng.laplace(0, 1, 100_000)).astype(np.float32)
    c = get_calibrator("mse")
    c.update("t", x)
    lo, hi = c.range("t")
    assert lo == 0.0 and 8.0 < hi < float(x.max())


def test_unfitted_raises():
    with pytest.raises(NotFittedError):
        get_calibrator("minmax").range("nothing")


def test_streams_variable_shapes_for_every_calibrator():
    m = tiny_conv_model()
    rng = np.random.default_rng(3)
    # the tiny model takes 8x8 only; vary the batch dim instead (variable first axis)
    feeds = [{"x": rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32)} for n in (1, 3, 2)]
    for name in CALIBRATORS.names():
        r = collect_ranges(m, iter(feeds), get_calibrator(name))
        assert {"x", "c1", "y"} <= set(r)
        for lo, hi in r.values():
            assert lo <= 0.0 <= hi and hi > lo
