"""Bit-packed binary kernels: packing round trip, exact equality of every engine with the float +-1
reference (odd channel counts, padding, stride 2, fused BN+sign thresholds at exact ties), and the
automatic engine choice following the CPU flags."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.errors import EdgeslimError, ShapeError
from edgeslim.research.kernels import binary as nbk
from edgeslim.research.kernels import binary_ref as ref

IMPLS = [ref, nbk]


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """Run the numba kernels both on the calling thread and through the parallel pool."""
    monkeypatch.setattr(nbk, "SERIAL_BELOW", 10**12 if request.param == "serial" else 0)
    monkeypatch.setattr(nbk, "AVX512_SERIAL_BELOW", 10**12 if request.param == "serial" else 0)
    return request.param


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("impl", IMPLS, ids=["ref", "numba"])
@pytest.mark.parametrize("c", [1, 63, 64, 65, 130])
def test_pack_round_trip(impl, c):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((3, 5, c)).astype(np.float32)
    x[0, 0, 0] = 0.0  # zero binarizes to +1
    packed = impl.pack_bits(x)
    assert packed.dtype == np.uint64 and packed.shape == (3, 5, (c + 63) // 64)
    back = impl.unpack_bits(packed, c)
    np.testing.assert_array_equal(back, np.where(x < 0, -1.0, 1.0))
    # padding bits of the last word stay zero
    tail = c % 64
    if tail:
        assert not np.any(packed[..., -1] >> np.uint64(tail))


def test_pack_numba_matches_reference_any_axis(path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, 4, 3))
    for axis in (0, 1, 2, -1):
        np.testing.assert_array_equal(nbk.pack_bits(x, axis=axis), ref.pack_bits(x, axis=axis))
    assert ref.pack_bits(np.array([1.0, -1.0, -0.5, 0.0]))[0] == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_pack_special_values_match_reference(dtype, path):
    """-0.0 and NaN binarize to +1, tiny negatives to -1, in full 64-wide words, 8-wide chunks and tails."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 150)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x[0, :70] = -0.0
        x[1, ::3] = np.nan
        x[2, :] = -np.finfo(dtype).tiny
    got = nbk.pack_bits(x)
    np.testing.assert_array_equal(got, ref.pack_bits(x))
    assert got.dtype == np.uint64 and got.shape == (9, 3)


ENGINES = ["avx512", "lut", "popcount"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 63), (13, 9, 64), (33, 17, 65), (20, 70, 200), (97, 64, 576)])
def test_gemm_exact(m, n, k, path, engine):
    rng = np.random.default_rng(m * 1000 + k)
    a = _pm1(rng, (m, k))
    b = _pm1(rng, (k, n))
    expect = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    ap, bp = nbk.pack_bits(a, axis=1), nbk.pack_bits(b, axis=0)
    np.testing.assert_array_equal(ref.binary_gemm(ap, bp, k), expect)
    np.testing.assert_array_equal(nbk.binary_gemm(ap, bp, k, engine), expect)
    prepared = nbk.prepare_weights(bp.reshape(1, 1, *bp.shape))
    np.testing.assert_array_equal(nbk.binary_gemm(ap, prepared, k, engine), expect)
    np.testing.assert_array_equal(ref.binary_gemm(ap, prepared, k), expect)


def test_lut_engine_guards_uint16_range():
    rng = np.random.default_rng(3)
    k = 66000  # more +-1 products than a uint16 count holds
    a = nbk.pack_bits(_pm1(rng, (2, k)), axis=1)
    b = nbk.pack_bits(_pm1(rng, (k, 3)), axis=0)
    with pytest.raises(EdgeslimError, match="popcount"):
        nbk.binary_gemm(a, b, k, engine="lut")
    np.testing.assert_array_equal(nbk.binary_gemm(a, b, k), ref.binary_gemm(a, b, k))  # auto falls back
    with pytest.raises(EdgeslimError):
        nbk.binary_gemm(a, b, k, engine="fast")


def _torch_like_conv(x, w, stride, pad):
    """Direct float conv with zero padding: x [B, H, W, C] (+-1), w [O, C, KH, KW] (+-1)."""
    b, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((b, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]  # B,KH,KW,C
            out[:, i, j, :] = np.einsum("bhwc,ochw->bo", patch, w)
    return out.astype(np.int32)


CONV_CASES = [
    # b, h, w, c, o, k, stride, pad
    (1, 5, 7, 3, 5, 3, 1, 1),
    (2, 6, 5, 64, 8, 3, 1, 1),
    (1, 9, 8, 65, 13, 3, 2, 1),
    (2, 7, 7, 130, 70, 3, 1, 0),
    (1, 4, 6, 17, 3, 1, 1, 0),
    (1, 5, 5, 40, 9, 5, 2, 2),
    (3, 2, 3, 7, 9, 3, 2, 1),  # image barely larger than the kernel: every pixel on the border
    (1, 13, 14, 100, 40, 3, 2, 1),  # rows longer than one register tile, stride 2
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_exact(case, path, engine):
    b, h, wd, c, o, k, s, p = case
    rng = np.random.default_rng(sum(case))
    x = _pm1(rng, (b, h, wd, c))
    w = _pm1(rng, (o, c, k, k))
    expect = _torch_like_conv(x, w, s, p)
    xp, wp = nbk.pack_bits(x), nbk.pack_conv_weight(w)
    assert wp.shape == (k, k, (c + 63) // 64, o)
    np.testing.assert_array_equal(ref.binary_conv2d(xp, wp, c, s, p), expect)
    np.testing.assert_array_equal(nbk.binary_conv2d(xp, wp, c, s, p, engine=engine), expect)
    np.testing.assert_array_equal(nbk.binary_conv2d(xp, nbk.prepare_weights(wp), c, s, p, engine=engine), expect)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CONV_CASES[:4] + CONV_CASES[-2:], ids=lambda c: "x".join(map(str, c)))
def test_conv_fused_threshold_exact(case, path, engine):
    b, h, wd, c, o, k, s, p = case
    rng = np.random.default_rng(7 + sum(case))
    x = _pm1(rng, (b, h, wd, c))
    w = _pm1(rng, (o, c, k, k))
    scale = rng.standard_normal(o)
    scale[0] = 0.0  # constant channel
    shift = rng.standard_normal(o) * 5
    dot = _torch_like_conv(x, w, s, p).astype(np.float64)
    y = scale * dot + shift
    thr, sgn = ref.bn_to_threshold(scale, shift)
    xp, wp = nbk.pack_bits(x), nbk.pack_conv_weight(w)
    got_ref = ref.binary_conv2d_packed(xp, wp, c, thr, sgn, s, p)
    got_nb = nbk.binary_conv2d_packed(xp, nbk.prepare_weights(wp), c, thr, sgn, s, p, engine=engine)
    np.testing.assert_array_equal(got_nb, got_ref)
    # away from exact ties the fused test equals sign(scale * dot + shift)
    decided = np.abs(y) > 1e-9
    np.testing.assert_array_equal(ref.unpack_bits(got_nb, o)[decided], np.where(y < 0, -1.0, 1.0)[decided])
    assert decided.mean() > 0.9


def test_bad_inputs_raise_named_errors():
    x = np.zeros((1, 4, 4, 1), np.uint64)
    w = np.zeros((3, 3, 2, 4), np.uint64)
    for impl in IMPLS:
        with pytest.raises(ShapeError):
            impl.binary_conv2d(x, w, 64)
        with pytest.raises(EdgeslimError):
            impl.binary_gemm(np.zeros((2, 1), np.float32), np.zeros((1, 2), np.uint64), 64)
        with pytest.raises(ShapeError):
            impl.binary_gemm(np.zeros((2, 1), np.uint64), np.zeros((1, 2), np.uint64), 65)



@pytest.mark.parametrize("engine", ENGINES)
def test_fused_threshold_exact_at_ties_and_extremes(engine):
    """Thresholds sitting exactly on reachable dot values (strict ``<``), a hair either side, both
    signs of the BN scale, and infinite ones: the packed bits equal the reference's float test."""
    rng = np.random.default_rng(11)
    c, o = 70, 24
    x = _pm1(rng, (2, 9, 10, c))
    w = _pm1(rng, (o, c, 3, 3))
    xp, wp = nbk.pack_bits(x), nbk.pack_conv_weight(w)
    dot = ref.binary_conv2d(xp, wp, c, 1, 1)
    thr = dot[0, 4, 5, :].astype(np.float64)  # values an interior pixel reaches exactly
    thr[1::4] = dot[0, 0, 0, 1::4]  # ... and a corner pixel
    thr[2::4] += np.array([1e-9, -1e-9, 0.5])[np.arange(len(thr[2::4])) % 3]
    thr[3] = np.inf
    thr[7] = -np.inf
    sgn = np.where(rng.random(o) < 0.5, -1, 1).astype(np.int8)
    want = ref.binary_conv2d_packed(xp, wp, c, thr, sgn, 1, 1)
    got = nbk.binary_conv2d_packed(xp, nbk.prepare_weights(wp), c, thr, sgn, 1, 1, engine=engine)
    np.testing.assert_array_equal(got, want)
    bits = ref.unpack_bits(got, o)
    assert 0.05 < (bits < 0).mean() < 0.95  # the test mixes set and clear bits


def _flags(monkeypatch, *names):
    monkeypatch.setattr(nbk, "cpu_features", lambda: frozenset(names))


def test_auto_engine_follows_cpu_flags(monkeypatch):
    _flags(monkeypatch, "avx2", "popcnt")  # an AVX2-only CPU
    assert nbk.isa() == "avx2" and not nbk.has_avx512_popcount()
    assert nbk.auto_engine(9, 64, 64) == "lut"  # 147 KiB table, 64 filters
    assert nbk.auto_engine(9, 64, 16) == "popcount"  # too few filters for a table row
    _flags(monkeypatch, "avx2", "avx512f", "avx512bw")  # AVX-512 without VPOPCNTDQ (Skylake-X)
    assert nbk.auto_engine(9, 64, 64) == "lut" and nbk.isa() == "avx2"
    _flags(monkeypatch, "avx2", "avx512f", "avx512vpopcntdq")
    assert nbk.isa() == "avx512_vpopcntdq"
    assert {nbk.auto_engine(9, 64, 64), nbk.auto_engine(9, 64, 16), nbk.auto_engine(1, 66000, 3)} == {"avx512"}


@pytest.mark.parametrize("flags", [("avx2",), ("avx2", "avx512f", "avx512vpopcntdq")], ids=["avx2", "avx512"])
def test_auto_runs_the_engine_of_the_flags_exactly(monkeypatch, flags):
    _flags(monkeypatch, *flags)
    ran = []
    for name in ("conv_serial", "conv"):
        kern = getattr(nbk._avx, name)
        monkeypatch.setattr(nbk._avx, name, lambda *a, _k=kern: ran.append(1) or _k(*a))
    rng = np.random.default_rng(5)
    x, w = _pm1(rng, (1, 8, 9, 70)), _pm1(rng, (40, 70, 3, 3))
    xp, wp = nbk.pack_bits(x), nbk.pack_conv_weight(w)
    np.testing.assert_array_equal(nbk.binary_conv2d(xp, wp, 70), _torch_like_conv(x, w, 1, 1))
    assert bool(ran) == ("avx512vpopcntdq" in flags)


def test_cpu_features_reads_this_host():
    feats = nbk.cpu_features()
    assert isinstance(feats, frozenset) and feats
    cpuinfo = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    if cpuinfo:
        assert ("avx512_vpopcntdq" in cpuinfo) == ("avx512vpopcntdq" in feats)


def test_prepared_weights_pad_filters_and_build_lut_lazily():
    rng = np.random.default_rng(2)
    wp = nbk.pack_conv_weight(_pm1(rng, (13, 65, 3, 3)))
    pw = nbk.prepare_weights(wp)
    assert pw.w8.shape == (3 * 3 * 2, 16) and not pw.w8[:, 13:].any()
    np.testing.assert_array_equal(pw.w8[:, :13], wp.reshape(18, 13))
    assert not pw._lut  # the lut engine's table costs fp32-weight memory: only built when used
    assert pw.lut.shape == (1, 18, 16, 16, 64) and pw.lut is pw.lut
