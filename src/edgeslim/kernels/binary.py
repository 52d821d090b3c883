"""Bit-packed binary (+-1) GEMM and convolution kernels in numba.

Same signatures and results as the NumPy reference :mod:`edgeslim.kernels.binary_ref`
(see it for the packing convention). The inner loop of every kernel is, for one input
word ``x`` and a contiguous row of filter words, ``acc[o] += popcount(x ^ w[o])``: weights
are laid out with output channels innermost (``[KH, KW, Cw, O]`` for conv, ``[Kw, N]`` for
GEMM) so LLVM vectorizes over filters (AVX2 ``vpshufb`` popcount; ``vpopcntq`` where the CPU
has AVX-512 VPOPCNTDQ). Work is split over output rows with ``prange``; each thread keeps
one accumulator row.

References
----------
- Rastegari et al., "XNOR-Net", ECCV 2016 (binary dot products via XNOR + popcount).
- Zhang et al., "dabnn", ACM MM 2019 (bit-packing along channels, padding correction).
- Bannink et al., "Larq Compute Engine", MLSys 2021 (fused BN/threshold to packed output).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import binary_ref as _ref
from .binary_ref import WORD_BITS, bn_to_threshold, n_words, pack_conv_weight
from ..errors import ShapeError

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
    """The same kernel compiled without ``parallel`` (``prange`` runs as ``range``)."""
    return njit(**_JIT)(kernel.py_func)


# ----------------------------------------------------------------------------- packing
@njit(parallel=True, **_JIT)
def _pack_rows(x, out, c):
    rows = x.shape[0]
    cw = out.shape[1]
    for r in prange(rows):
        for j in range(cw):
            word = np.uint64(0)
            hi = min(c, (j + 1) * 64)
            for i in range(j * 64, hi):
                if x[r, i] < 0:
                    word |= np.uint64(1) << np.uint64(i - j * 64)
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


def binary_gemm(a_packed: np.ndarray, b_packed: np.ndarray, k: int) -> np.ndarray:
    """``A @ B`` for +-1 matrices packed along K: ``a [M, Kw]``, ``b [Kw, N]`` -> int32 ``[M, N]``.

    >>> a = pack_bits(np.array([[1.0, -1.0, 1.0]]))
    >>> b = pack_bits(np.array([[1.0], [-1.0], [-1.0]]), axis=0)
    >>> binary_gemm(a, b, 3)
    array([[1]], dtype=int32)
    """
    _ref._check_gemm(a_packed, b_packed, k)
    a = np.ascontiguousarray(a_packed)
    b = np.ascontiguousarray(b_packed)
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.int32)
    kern = _gemm if a.shape[0] * a.shape[1] * b.shape[1] >= SERIAL_BELOW else _gemm_serial
    kern(a, b, np.int64(k), out, _chunks(a.shape[0]))
    return out


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


def binary_conv2d(x_packed: np.ndarray, w_packed: np.ndarray, c: int, stride: int = 1, padding: int = 1) -> np.ndarray:
    """Binary convolution of packed NHWC activations ``[B, H, W, Cw]`` with packed weights
    ``[KH, KW, Cw, O]`` (zero padding, corrected); returns the int32 dot ``[B, Ho, Wo, O]``."""
    ho, wo = _ref._check_conv(x_packed, w_packed, c, stride, padding)
    x = np.ascontiguousarray(x_packed)
    w = np.ascontiguousarray(w_packed)
    out = np.empty((x.shape[0], ho, wo, w.shape[3]), dtype=np.int32)
    kern = _conv if out.size * w.shape[0] * w.shape[1] * w.shape[2] >= SERIAL_BELOW else _conv_serial
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
) -> np.ndarray:
    """:func:`binary_conv2d` fused with the threshold from :func:`bn_to_threshold`, writing
    the packed input of the next binary layer ``[B, Ho, Wo, ceil(O/64)]``."""
    ho, wo = _ref._check_conv(x_packed, w_packed, c, stride, padding)
    o_n = w_packed.shape[3]
    thr = np.ascontiguousarray(thr, dtype=np.float64)
    sgn = np.ascontiguousarray(sgn, dtype=np.float64)
    if thr.shape != (o_n,) or sgn.shape != (o_n,):
        raise ShapeError(f"thr and sgn must have one entry per output channel ({o_n}); got {thr.shape}, {sgn.shape}.")
    x = np.ascontiguousarray(x_packed)
    w = np.ascontiguousarray(w_packed)
    out = np.empty((x.shape[0], ho, wo, n_words(o_n)), dtype=np.uint64)
    work = x.shape[0] * ho * wo * o_n * w.shape[0] * w.shape[1] * w.shape[2]
    kern = _conv_packed if work >= SERIAL_BELOW else _conv_packed_serial
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
