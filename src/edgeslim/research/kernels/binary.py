"""Bit-packed binary (+-1) GEMM and convolution kernels in numba.

Same signatures and results as the NumPy reference :mod:`edgeslim.research.kernels.binary_ref`
(see it for the packing convention): ``dot = K - 2 * popcount(x XOR w)``. Three engines:

- ``avx512`` (``engine="auto"`` picks it when the CPU has ``avx512f`` and ``avx512_vpopcntdq``,
  read at run time from the host features LLVM compiles for, :func:`cpu_features`): a register
  tile of 6 output pixels x 32 filters accumulated with ``vpopcntq`` on 512-bit words, written as
  LLVM IR in :mod:`._binary_avx512` (see there). Weights are padded to a multiple of 8 filters
  once (:func:`prepare_weights`). It runs exactly on any x86 CPU, but fast only with the flags.
- ``popcount``: for one input word ``x`` and a contiguous row of filter words,
  ``acc[o] += popcount(x ^ w[o])``; weights are laid out with output channels innermost
  (``[KH, KW, Cw, O]``, ``[Kw, N]``) so LLVM vectorizes over filters (AVX2 ``vpshufb``
  popcount, ``vpopcntq`` where the CPU has AVX-512 VPOPCNTDQ). About 9 vector ops per 4 word
  pairs on AVX2.
- ``lut`` (on CPUs without VPOPCNTDQ ``engine="auto"`` picks it for more than 32 filters and
  tables up to 1 MiB, where it measured faster): ``popcount(x ^ w)`` summed nibble by nibble from a table
  ``T[nibble position, nibble value, filter] = popcount(value ^ w_nibble)`` built once per weight
  (:func:`prepare_weights`). For each of the 16 nibbles of an input word one row of 64 uint8
  counts is added with two ``vpaddb`` from memory, i.e. 0.5 vector ops per word pair; the
  accumulators stay in registers because the inner word step is emitted as LLVM IR with
  vector types (:func:`_lut_word`). Loops run (filter group, tap, word) outermost so each
  16 KiB table slice stays in L1 while it sweeps a block of output pixels. The table costs
  as much memory as fp32 weights at run time; the stored model keeps the 32x smaller packed
  weights. Counts are kept in uint16, so it applies while ``KH * KW * C <= 65535``.

Work is split over blocks of output rows with ``prange``; small problems run on the calling
thread (for ``avx512`` below :data:`AVX512_SERIAL_BELOW` word pairs, about 0.5 ms of work: on
a shared machine waking the pool costs more than it saves).

References
----------
- Rastegari et al., "XNOR-Net", ECCV 2016 (binary dot products via XNOR + popcount).
- Zhang et al., "dabnn", ACM MM 2019 (bit-packing along channels, padding correction).
- Bannink et al., "Larq Compute Engine", MLSys 2021 (fused BN/threshold to packed output).
"""

from __future__ import annotations

import functools
import types as _pytypes
from dataclasses import dataclass, field

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import _binary_avx512 as _avx
from . import binary_ref as _ref
from .binary_ref import WORD_BITS, bn_to_threshold, n_words, pack_conv_weight
from ...errors import InvalidParameterError, ShapeError

__all__ = [
    "WORD_BITS",
    "n_words",
    "pack_bits",
    "unpack_bits",
    "pack_conv_weight",
    "bn_to_threshold",
    "binary_gemm",
    "binary_conv2d",
    "binary_conv2d_packed",
    "popcount_instruction",
    "PreparedWeights",
    "prepare_weights",
    "ENGINES",
    "cpu_features",
    "has_avx512_popcount",
    "auto_engine",
    "isa",
]

_JIT = dict(nogil=True, fastmath=True, cache=True)


@intrinsic
def _popc(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (lowered to popcnt / vpshufb / vpopcntq by the backend)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def _chunks(rows: int) -> int:
    return max(1, min(rows, 8 * numba.get_num_threads()))


# Below this many word pairs (about 0.1 ms on one core) a kernel runs on the calling thread:
# waking a pool costs more than the work, and on a loaded machine a parallel region waits for
# a descheduled worker for milliseconds.
SERIAL_BELOW = 400_000


def _serial(kernel):
    """The same kernel compiled without ``parallel`` (``prange`` runs as ``range``).

    A renamed copy of the Python function, because numba's on-disk cache is keyed by the
    function's qualified name and code, not by the ``parallel`` flag.
    """
    f = kernel.py_func
    g = _pytypes.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + "_serial"
    g.__module__ = f.__module__
    return njit(**_JIT)(g)


# ----------------------------------------------------------------------------- packing
def _make_signs(lanes: int, double: bool):
    @intrinsic
    def signs(typingctx, addr):
        """Bit i set iff element i of the ``lanes`` floats at ``addr`` is < 0 (one vector compare;
        numba's loop over a branch per element ran at 1 ns per element, mispredicting on signs)."""
        sig = types.uint64(types.intp)

        def codegen(context, builder, signature, args):
            vt = ir.VectorType(ir.DoubleType() if double else ir.FloatType(), lanes)
            v = builder.load(builder.inttoptr(args[0], vt.as_pointer()), align=8 if double else 4)
            neg = builder.fcmp_ordered("<", v, ir.Constant(vt, [0.0] * lanes))  # NaN, -0.0: not < 0
            return builder.zext(builder.bitcast(neg, ir.IntType(lanes)), ir.IntType(64))

        return sig, codegen

    return signs


_signs64_f32, _signs8_f32 = _make_signs(64, False), _make_signs(8, False)
_signs64_f64, _signs8_f64 = _make_signs(64, True), _make_signs(8, True)


@njit(parallel=True, **_JIT)
def _pack_rows(x, out, c):
    rows = x.shape[0]
    cw = out.shape[1]
    size = x.itemsize
    base = x.ctypes.data
    for r in prange(rows):
        for j in range(cw):
            lo = j * 64
            hi = min(c, lo + 64)
            addr = base + (r * c + lo) * size
            if hi - lo == 64:
                word = _signs64_f32(addr) if size == 4 else _signs64_f64(addr)
            else:
                word = np.uint64(0)
                i = lo
                while i + 8 <= hi:
                    part = _signs8_f32(addr + (i - lo) * size) if size == 4 else _signs8_f64(addr + (i - lo) * size)
                    word |= part << np.uint64(i - lo)
                    i += 8
                while i < hi:
                    if x[r, i] < 0:
                        word |= np.uint64(1) << np.uint64(i - lo)
                    i += 1
            out[r, j] = word


_pack_rows_serial = _serial(_pack_rows)


def pack_bits(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Binarize ``x`` by sign and pack it along ``axis`` into uint64 words (numba)."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ShapeError("pack_bits needs an array with at least one axis; got a scalar.")
    axis = axis % x.ndim
    moved = np.moveaxis(x, axis, -1)
    lead = moved.shape[:-1]
    c = moved.shape[-1]
    flat = np.ascontiguousarray(moved.reshape(-1, c))
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    out = np.empty((flat.shape[0], n_words(c)), dtype=np.uint64)
    (_pack_rows if flat.size >= 8 * SERIAL_BELOW else _pack_rows_serial)(flat, out, c)
    return np.ascontiguousarray(np.moveaxis(out.reshape(lead + (n_words(c),)), -1, axis))


def unpack_bits(packed: np.ndarray, n: int, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_bits` (shared with the reference: unpacking is never hot)."""
    return _ref.unpack_bits(packed, n, axis)


# ----------------------------------------------------------------------------- GEMM
@njit(parallel=True, **_JIT)
def _gemm(a, b, k, out, nchunk):
    m_total, kw = a.shape
    n = b.shape[1]
    size = (m_total + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        acc = np.empty(n, dtype=np.uint64)
        for m in range(ch * size, min(m_total, (ch + 1) * size)):
            for o in range(n):
                acc[o] = 0
            for j in range(kw):
                x = a[m, j]
                for o in range(n):
                    acc[o] += _popc(x ^ b[j, o])
            for o in range(n):
                out[m, o] = k - 2 * np.int64(acc[o])


_gemm_serial = _serial(_gemm)


# ----------------------------------------------------------------------------- conv
@njit(inline="always", **_JIT)
def _pixel(x, w, bi, oy, ox, stride, pad, acc):
    """Accumulate popcount(x ^ w) over the valid taps of one output pixel; return their count."""
    h, wd, cw = x.shape[1], x.shape[2], x.shape[3]
    kh, kw, _, o_n = w.shape
    for o in range(o_n):
        acc[o] = 0
    taps = 0
    for dy in range(kh):
        iy = oy * stride - pad + dy
        if iy < 0 or iy >= h:
            continue
        for dx in range(kw):
            ix = ox * stride - pad + dx
            if ix < 0 or ix >= wd:
                continue
            taps += 1
            for j in range(cw):
                xv = x[bi, iy, ix, j]
                for o in range(o_n):
                    acc[o] += _popc(xv ^ w[dy, dx, j, o])
    return taps


@njit(parallel=True, **_JIT)
def _conv(x, w, c, stride, pad, out, nchunk):
    b_n, ho, wo, o_n = out.shape
    rows = b_n * ho
    size = (rows + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        acc = np.empty(o_n, dtype=np.uint64)
        for r in range(ch * size, min(rows, (ch + 1) * size)):
            bi = r // ho
            oy = r - bi * ho
            for ox in range(wo):
                taps = _pixel(x, w, bi, oy, ox, stride, pad, acc)
                full = taps * c
                for o in range(o_n):
                    out[bi, oy, ox, o] = full - 2 * np.int64(acc[o])


@njit(parallel=True, **_JIT)
def _conv_packed(x, w, c, thr, sgn, stride, pad, out, nchunk):
    b_n, ho, wo, ow = out.shape
    o_n = w.shape[3]
    rows = b_n * ho
    size = (rows + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        acc = np.empty(o_n, dtype=np.uint64)
        for r in range(ch * size, min(rows, (ch + 1) * size)):
            bi = r // ho
            oy = r - bi * ho
            for ox in range(wo):
                taps = _pixel(x, w, bi, oy, ox, stride, pad, acc)
                full = taps * c
                for j in range(ow):
                    word = np.uint64(0)
                    for o in range(j * 64, min(o_n, (j + 1) * 64)):
                        dot = np.float64(full - 2 * np.int64(acc[o]))
                        if sgn[o] * dot < sgn[o] * thr[o]:
                            word |= np.uint64(1) << np.uint64(o - j * 64)
                    out[bi, oy, ox, j] = word


_conv_serial = _serial(_conv)
_conv_packed_serial = _serial(_conv_packed)


# ----------------------------------------------------------------------------- LUT engine
_ROW = 64  # filters per table row (one cache line of uint8 counts)


@intrinsic
def _lut_word(typingctx, xv, taddr, accaddr):
    """``acc[0:64] (uint16) += sum_j T[j, nibble_j(xv), 0:64] (uint8)`` for one input word.

    Emitted as LLVM IR on ``<32 x i8>`` vectors so the two running sums stay in registers
    (numba has no vector types); ``T`` is one 16 KiB slice ``[16 positions, 16 values, 64]``.
    """
    sig = types.void(types.uint64, types.uintp, types.uintp)

    def codegen(context, builder, signature, args):
        xv, taddr, accaddr = args
        i8, i16, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
        v8, v16 = ir.VectorType(i8, 32), ir.VectorType(i16, 32)
        tp = builder.inttoptr(taddr, i8.as_pointer())
        sums = [ir.Constant(v8, [0] * 32), ir.Constant(v8, [0] * 32)]
        for j in range(16):
            nib = builder.and_(builder.lshr(xv, ir.Constant(i64, 4 * j)), ir.Constant(i64, 15))
            off = builder.shl(builder.add(nib, ir.Constant(i64, 16 * j)), ir.Constant(i64, 6))
            row = builder.bitcast(builder.gep(tp, [off]), v8.as_pointer())
            for h in range(2):
                val = builder.load(builder.gep(row, [ir.Constant(i64, h)]), align=1)
                sums[h] = builder.add(sums[h], val)
        ap = builder.inttoptr(accaddr, v16.as_pointer())
        for h in range(2):
            ptr = builder.gep(ap, [ir.Constant(i64, h)])
            builder.store(builder.add(builder.load(ptr, align=2), builder.zext(sums[h], v16)), ptr, align=2)
        return context.get_dummy_value()

    return sig, codegen


_POPCOUNT4 = np.array([bin(i).count("1") for i in range(16)], dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class PreparedWeights:
    """Packed conv weights ``[KH, KW, Cw, O]`` in the run-time forms of the engines.

    ``w8``: ``[KH*KW*Cw, O8]`` with the filters padded to a multiple of 8 (``avx512`` engine).
    ``lut``: ``uint8 [ceil(O/64), KH*KW*Cw, 16 positions, 16 values, 64 filters]`` (``lut`` engine),
    built on first use because it costs as much memory as fp32 weights. Build once with
    :func:`prepare_weights` and pass this object wherever packed weights are accepted.
    """

    w_packed: np.ndarray
    w8: np.ndarray
    _lut: list = field(default_factory=list, repr=False)

    @property
    def lut(self) -> np.ndarray:
        if not self._lut:
            self._lut.append(_build_lut(self.w_packed))
        return self._lut[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.w_packed.shape

    @property
    def dtype(self) -> np.dtype:
        return self.w_packed.dtype

    @property
    def ndim(self) -> int:
        return self.w_packed.ndim


def prepare_weights(w_packed: np.ndarray) -> PreparedWeights:
    """Prepare packed conv weights ``[KH, KW, Cw, O]`` for the engines
    (for GEMM weights ``[Kw, N]`` pass ``b.reshape(1, 1, Kw, N)``)."""
    if isinstance(w_packed, PreparedWeights):
        return w_packed
    w_packed = np.ascontiguousarray(w_packed)
    if w_packed.dtype != np.uint64 or w_packed.ndim != 4:
        raise ShapeError(f"prepare_weights needs uint64 packed weights [KH, KW, Cw, O]; got {w_packed.dtype} {w_packed.shape}.")
    return PreparedWeights(w_packed=w_packed, w8=_avx.pad_filters(w_packed))


def _build_lut(w_packed: np.ndarray) -> np.ndarray:
    kh, kw, cw, o = w_packed.shape
    groups = (o + _ROW - 1) // _ROW
    w = np.zeros((kh * kw * cw, groups * _ROW), dtype=np.uint64)
    w[:, :o] = w_packed.reshape(kh * kw * cw, o)
    lut = np.empty((kh * kw * cw, 16, 16, groups * _ROW), dtype=np.uint8)
    values = np.arange(16, dtype=np.uint64)[:, None, None]
    for j in range(16):
        nib = (w >> np.uint64(4 * j)) & np.uint64(15)  # [words, O]
        lut[:, j] = _POPCOUNT4[(values ^ nib[None]).astype(np.intp)].transpose(1, 0, 2)
    # padded filters are never read back; zero them so the table is deterministic
    lut[..., o:] = 0
    return np.ascontiguousarray(lut.reshape(kh * kw * cw, 16, 16, groups, _ROW).transpose(3, 0, 1, 2, 4))


@njit(inline="always", **_JIT)
def _lut_accumulate(x, lut, kh, kw, stride, pad, ho, wo, r0, r1, acc):
    """acc[p, o] = sum over valid taps of popcount(x ^ w) for output rows r0..r1 (flattened b*ho)."""
    h, wd, cw = x.shape[1], x.shape[2], x.shape[3]
    groups = lut.shape[0]
    tbase = lut.ctypes.data
    abase = acc.ctypes.data
    o64 = groups * 64
    acc[:, :] = 0
    for g in range(groups):
        for t in range(kh * kw):
            dy = t // kw
            dx = t - dy * kw
            # output columns whose input column is inside the image for this tap
            ox0 = max(0, (pad - dx + stride - 1) // stride)
            ox1 = min(wo, (wd - 1 + pad - dx) // stride + 1)
            for q in range(cw):
                tb = tbase + ((g * kh * kw * cw + t * cw + q) * 256) * 64
                for r in range(r0, r1):
                    bi = r // ho
                    oy = r - bi * ho
                    iy = oy * stride - pad + dy
                    if iy < 0 or iy >= h:
                        continue
                    pbase = abase + (((r - r0) * wo) * o64 + g * 64) * 2
                    for ox in range(ox0, ox1):
                        _lut_word(x[bi, iy, ox * stride - pad + dx, q], tb, pbase + ox * o64 * 2)


@njit(inline="always", **_JIT)
def _valid_taps(n, k, stride, pad, o):
    lo = o * stride - pad
    return min(n, lo + k) - max(0, lo)


@njit(parallel=True, **_JIT)
def _lut_conv(x, lut, kh, kw, c, stride, pad, out, rows_per_chunk):
    b_n, ho, wo, o_n = out.shape
    h, wd = x.shape[1], x.shape[2]
    rows = b_n * ho
    nchunk = (rows + rows_per_chunk - 1) // rows_per_chunk
    o64 = lut.shape[0] * 64
    for ch in prange(nchunk):
        r0 = ch * rows_per_chunk
        r1 = min(rows, r0 + rows_per_chunk)
        acc = np.empty(((r1 - r0) * wo, o64), dtype=np.uint16)
        _lut_accumulate(x, lut, kh, kw, stride, pad, ho, wo, r0, r1, acc)
        for r in range(r0, r1):
            bi = r // ho
            oy = r - bi * ho
            ny = _valid_taps(h, kh, stride, pad, oy)
            for ox in range(wo):
                full = ny * _valid_taps(wd, kw, stride, pad, ox) * c
                p = (r - r0) * wo + ox
                for o in range(o_n):
                    out[bi, oy, ox, o] = full - 2 * np.int32(acc[p, o])


@njit(parallel=True, **_JIT)
def _lut_conv_packed(x, lut, kh, kw, c, thr, sgn, stride, pad, out, o_n, rows_per_chunk):
    b_n, ho, wo, ow = out.shape
    h, wd = x.shape[1], x.shape[2]
    rows = b_n * ho
    nchunk = (rows + rows_per_chunk - 1) // rows_per_chunk
    o64 = lut.shape[0] * 64
    for ch in prange(nchunk):
        r0 = ch * rows_per_chunk
        r1 = min(rows, r0 + rows_per_chunk)
        acc = np.empty(((r1 - r0) * wo, o64), dtype=np.uint16)
        _lut_accumulate(x, lut, kh, kw, stride, pad, ho, wo, r0, r1, acc)
        for r in range(r0, r1):
            bi = r // ho
            oy = r - bi * ho
            ny = _valid_taps(h, kh, stride, pad, oy)
            for ox in range(wo):
                full = ny * _valid_taps(wd, kw, stride, pad, ox) * c
                p = (r - r0) * wo + ox
                for j in range(ow):
                    word = np.uint64(0)
                    for o in range(j * 64, min(o_n, (j + 1) * 64)):
                        dot = np.float64(full - 2 * np.int64(acc[p, o]))
                        if sgn[o] * dot < sgn[o] * thr[o]:
                            word |= np.uint64(1) << np.uint64(o - j * 64)
                    out[bi, oy, ox, j] = word


_lut_conv_serial = _serial(_lut_conv)
_lut_conv_packed_serial = _serial(_lut_conv_packed)

ENGINES = ("auto", "avx512", "lut", "popcount")
LUT_MAX_BYTES = 1 << 20  # auto picks the lut engine only for tables up to this size
# The avx512 engine runs on the calling thread below this many word pairs (about 0.5 ms there).
# Measured on a shared 2-core Zen 5 (load 9-11): numba's pool took 0.45 ms where the calling
# thread alone took 0.21 ms (784x256x2304 GEMM); a caller-first scheme with a helper thread
# claiming units through an atomic counter was slower too (0.23 ms; 95 vs 76 us on the 56x56
# conv): on a loaded machine the second thread mostly competes for the caller's own core.
AVX512_SERIAL_BELOW = 16_000_000


@functools.cache
def cpu_features() -> frozenset[str]:
    """CPU features of the host as LLVM (hence numba) sees and compiles for them, e.g. ``avx512f``."""
    import llvmlite.binding as llvm

    return frozenset(name for name, on in llvm.get_host_cpu_features().items() if on)


def has_avx512_popcount() -> bool:
    """Whether this CPU has the 512-bit ``vpopcntq`` the ``avx512`` engine is built for."""
    feats = cpu_features()
    return "avx512f" in feats and "avx512vpopcntdq" in feats


def isa() -> str:
    """The popcount ISA ``engine="auto"`` builds on here: ``avx512_vpopcntdq``, ``avx2`` or ``scalar``."""
    if has_avx512_popcount():
        return "avx512_vpopcntdq"
    return "avx2" if "avx2" in cpu_features() else "scalar"


def auto_engine(taps: int, c: int, o: int) -> str:
    """The engine ``engine="auto"`` runs for a conv with ``taps = KH*KW``, ``c`` input and ``o``
    output channels (a GEMM is ``taps=1, c=K, o=N``), on this CPU."""
    if has_avx512_popcount():
        return "avx512"
    # measured on Zen 3 (AVX2): the table wins while it fits in L2 and a row of 64 filters
    # is mostly used; with 32 or fewer filters or a table spilling to L3, popcount wins
    table = taps * n_words(c) * 256 * ((o + _ROW - 1) // _ROW) * _ROW
    return "lut" if taps * c <= 65535 and o > 32 and table <= LUT_MAX_BYTES else "popcount"


def _rows_per_chunk(rows: int, wo: int, lut_bytes: int) -> int:
    # A block of output pixels shares each 16 KiB table slice: about 64 pixels when the whole
    # table sits in L2, 256 when slices come from L3 (amortizes the refill); at least two
    # blocks per thread to balance the pool.
    target = 64 if lut_bytes <= 256 * 1024 else 256
    per_thread = (rows + 2 * numba.get_num_threads() - 1) // (2 * numba.get_num_threads())
    return max(1, min(max(1, target // max(1, wo)), per_thread))


def _gemm_grid(m: int) -> tuple[int, int]:
    """Lay M GEMM rows out as an image ``rows x cols`` (cols <= 64) so the 1x1-conv kernel
    has long inner pixel loops and several row blocks to share out."""
    for cols in range(min(64, m), 0, -1):
        if m % cols == 0:
            return m // cols, cols
    return m, 1  # pragma: no cover


def _engine(engine: str, taps: int, c: int, o: int) -> str:
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine={engine!r} is not one of {ENGINES}.")
    if engine == "lut" and taps * c > 65535:
        raise InvalidParameterError(f"the lut engine counts in uint16; KH*KW*C = {taps * c} > 65535. "
                                    "Use engine='popcount' or 'auto'.")
    return auto_engine(taps, c, o) if engine == "auto" else engine


def _w8(w) -> np.ndarray:
    return w.w8 if isinstance(w, PreparedWeights) else _avx.pad_filters(np.ascontiguousarray(w))


_NO_THR = np.zeros(1, dtype=np.float64)


def _avx_conv(x, w, c, stride, padding, ho, wo, thr, sgn, bits, out):
    kh, kw, cw, o_n = w.shape
    kern = _avx.conv if x.shape[0] * ho * wo * o_n * kh * kw * cw >= AVX512_SERIAL_BELOW else _avx.conv_serial
    kern(x, _w8(w), np.int64(o_n), np.int64(kh), np.int64(kw), np.int64(c), np.int64(stride), np.int64(padding),
         np.int64(ho), np.int64(wo), thr, sgn, bits, out.reshape(-1).view(np.uint8),
         np.int64(out.shape[3] * out.itemsize), np.int64(wo))


def binary_gemm(a_packed: np.ndarray, b_packed: np.ndarray, k: int, engine: str = "auto") -> np.ndarray:
    """``A @ B`` for +-1 matrices packed along K: ``a [M, Kw]``, ``b [Kw, N]`` -> int32 ``[M, N]``.

    ``b_packed`` may be a :class:`PreparedWeights` of ``b.reshape(1, 1, Kw, N)``.

    >>> a = pack_bits(np.array([[1.0, -1.0, 1.0]]))
    >>> b = pack_bits(np.array([[1.0], [-1.0], [-1.0]]), axis=0)
    >>> binary_gemm(a, b, 3)
    array([[1]], dtype=int32)
    """
    prepared = b_packed if isinstance(b_packed, PreparedWeights) else None
    b_arr = prepared.w_packed.reshape(prepared.shape[2], prepared.shape[3]) if prepared is not None else b_packed
    _ref._check_gemm(a_packed, b_arr, k)
    a = np.ascontiguousarray(a_packed)
    eng = _engine(engine, 1, k, b_arr.shape[1])
    if eng == "avx512":
        w = prepared if prepared is not None else np.ascontiguousarray(b_arr).reshape(1, 1, *b_arr.shape)
        rows, cols = _avx.gemm_grid(a.shape[0])
        o8 = -(-b_arr.shape[1] // _avx.LANES) * _avx.LANES
        out = np.empty((1, rows, cols, o8), dtype=np.int32)
        _avx_conv(a.reshape(1, rows, cols, a.shape[1]), w, k, 1, 0, rows, cols, _NO_THR, _NO_THR, False, out)
        out = out.reshape(a.shape[0], o8)
        return out if o8 == b_arr.shape[1] else np.ascontiguousarray(out[:, : b_arr.shape[1]])
    if eng == "lut":
        w = prepared if prepared is not None else prepare_weights(np.ascontiguousarray(b_arr).reshape(1, 1, *b_arr.shape))
        rows, cols = _gemm_grid(a.shape[0])
        return binary_conv2d(a.reshape(1, rows, cols, a.shape[1]), w, k, 1, 0, engine="lut").reshape(a.shape[0], -1)
    b = np.ascontiguousarray(b_arr)
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.int32)
    kern = _gemm if a.shape[0] * a.shape[1] * b.shape[1] >= SERIAL_BELOW else _gemm_serial
    kern(a, b, np.int64(k), out, _chunks(a.shape[0]))
    return out


def binary_conv2d(x_packed: np.ndarray, w_packed: np.ndarray, c: int, stride: int = 1, padding: int = 1,
                  engine: str = "auto") -> np.ndarray:
    """Binary convolution of packed NHWC activations ``[B, H, W, Cw]`` with packed weights
    ``[KH, KW, Cw, O]`` (or their :class:`PreparedWeights`), zero padding corrected; returns
    the int32 dot ``[B, Ho, Wo, O]``."""
    ho, wo = _ref._check_conv(x_packed, w_packed, c, stride, padding)
    x = np.ascontiguousarray(x_packed)
    kh, kw, cw, o_n = w_packed.shape
    eng = _engine(engine, kh * kw, c, o_n)
    if eng == "avx512":
        o8 = -(-o_n // _avx.LANES) * _avx.LANES  # the tiles store whole vectors of 8 filters
        out8 = np.empty((x.shape[0], ho, wo, o8), dtype=np.int32)
        _avx_conv(x, w_packed, c, stride, padding, ho, wo, _NO_THR, _NO_THR, False, out8)
        return out8 if o8 == o_n else np.ascontiguousarray(out8[..., :o_n])
    out = np.empty((x.shape[0], ho, wo, o_n), dtype=np.int32)
    parallel = out.size * kh * kw * cw >= SERIAL_BELOW
    if eng == "lut":
        lut = prepare_weights(w_packed).lut
        kern = _lut_conv if parallel else _lut_conv_serial
        kern(x, lut, kh, kw, np.int64(c), np.int64(stride), np.int64(padding), out, _rows_per_chunk(x.shape[0] * ho, wo, lut.nbytes))
        return out
    w = np.ascontiguousarray(w_packed.w_packed if isinstance(w_packed, PreparedWeights) else w_packed)
    kern = _conv if parallel else _conv_serial
    kern(x, w, np.int64(c), np.int64(stride), np.int64(padding), out, _chunks(x.shape[0] * ho))
    return out


def binary_conv2d_packed(
    x_packed: np.ndarray,
    w_packed: np.ndarray,
    c: int,
    thr: np.ndarray,
    sgn: np.ndarray,
    stride: int = 1,
    padding: int = 1,
    engine: str = "auto",
) -> np.ndarray:
    """:func:`binary_conv2d` fused with the threshold from :func:`bn_to_threshold`, writing
    the packed input of the next binary layer ``[B, Ho, Wo, ceil(O/64)]``."""
    ho, wo = _ref._check_conv(x_packed, w_packed, c, stride, padding)
    kh, kw, cw, o_n = w_packed.shape
    thr = np.ascontiguousarray(thr, dtype=np.float64)
    sgn = np.ascontiguousarray(sgn, dtype=np.float64)
    if thr.shape != (o_n,) or sgn.shape != (o_n,):
        raise ShapeError(f"thr and sgn must have one entry per output channel ({o_n}); got {thr.shape}, {sgn.shape}.")
    x = np.ascontiguousarray(x_packed)
    eng = _engine(engine, kh * kw, c, o_n)
    if eng == "avx512":
        out = np.zeros((x.shape[0], ho, wo, n_words(o_n)), dtype=np.uint64)  # bytes past O8/8 stay 0
        _avx_conv(x, w_packed, c, stride, padding, ho, wo, thr, sgn, True, out)
        return out
    out = np.empty((x.shape[0], ho, wo, n_words(o_n)), dtype=np.uint64)
    parallel = x.shape[0] * ho * wo * o_n * kh * kw * cw >= SERIAL_BELOW
    if eng == "lut":
        lut = prepare_weights(w_packed).lut
        kern = _lut_conv_packed if parallel else _lut_conv_packed_serial
        kern(x, lut, kh, kw, np.int64(c), thr, sgn, np.int64(stride), np.int64(padding), out, np.int64(o_n),
             _rows_per_chunk(x.shape[0] * ho, wo, lut.nbytes))
        return out
    w = np.ascontiguousarray(w_packed.w_packed if isinstance(w_packed, PreparedWeights) else w_packed)
    kern = _conv_packed if parallel else _conv_packed_serial
    kern(x, w, np.int64(c), thr, sgn, np.int64(stride), np.int64(padding), out, _chunks(x.shape[0] * ho))
    return out


def popcount_instruction() -> str:
    """Which popcount the conv kernel compiles to here: ``vpopcntq``, ``vpshufb``, ``popcnt``
    or ``none``.

    Compiles an uncached copy of the kernel (the on-disk cache keeps no assembly) and reads
    its assembly; takes a few seconds.
    """
    fresh = njit(parallel=True, nogil=True, fastmath=True)(_conv.py_func)
    x = np.zeros((1, 3, 3, 1), dtype=np.uint64)
    w = np.zeros((3, 3, 1, 8), dtype=np.uint64)
    out = np.empty((1, 3, 3, 8), dtype=np.int32)
    fresh(x, w, np.int64(8), np.int64(1), np.int64(1), out, 1)
    asm = "\n".join(fresh.inspect_asm().values())
    for name in ("vpopcntq", "vpshufb", "popcnt"):
        if name in asm:
            return name
    return "none"
