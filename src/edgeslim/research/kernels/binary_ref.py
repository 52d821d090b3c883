"""Pure NumPy reference for bit-packed binary (+-1) GEMM and convolution.

Every function here has a numba twin with the identical signature in
:mod:`edgeslim.research.kernels.binary`; the tests compare the two on random inputs. The
reference computes with float +-1 arithmetic (unpack, multiply, sum), so it is the
definition the packed kernels must reproduce exactly.

Packing convention (shared by both modules)
------------------------------------------
A value ``v`` is binarized to +1 when ``v >= 0`` and to -1 when ``v < 0``; -1 is stored as
bit 1. Channel ``c`` lives in bit ``c % 64`` of word ``c // 64`` (little-endian order), and
the unused bits of the last word are 0 in activations and weights alike, so they XOR to 0
and never count. For two packed vectors of true length ``K``::

    dot(x, w) = K - 2 * popcount(x XOR w)

Spatial zero padding (pad value 0, neither +1 nor -1) is corrected by counting only the
taps that fall inside the image: ``dot = n_valid_taps * C - 2 * popcount(...)`` over the
valid taps, as in dabnn and Larq Compute Engine.

References
----------
- Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural
  Networks", ECCV 2016.
- Zhang et al., "dabnn: A Super Fast Inference Framework for Binary Neural Networks on ARM
  devices", ACM MM 2019.
- Bannink et al., "Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
  Binarized Neural Networks", MLSys 2021.
"""

from __future__ import annotations

import numpy as np

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
]

WORD_BITS = 64


def n_words(n: int) -> int:
    """Number of uint64 words holding ``n`` bits."""
    return (int(n) + WORD_BITS - 1) // WORD_BITS


def _check_int(name: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise InvalidParameterError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def pack_bits(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Binarize ``x`` by sign and pack it along ``axis`` into uint64 words.

    >>> pack_bits(np.array([1.0, -1.0, -0.5, 0.0]))
    array([6], dtype=uint64)
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ShapeError("pack_bits needs an array with at least one axis; got a scalar.")
    axis = axis % x.ndim
    moved = np.moveaxis(x, axis, -1)
    c = moved.shape[-1]
    cw = n_words(c)
    bits = np.zeros(moved.shape[:-1] + (cw * WORD_BITS,), dtype=np.uint8)
    bits[..., :c] = moved < 0
    packed = np.packbits(bits, axis=-1, bitorder="little")
    words = np.ascontiguousarray(packed).view("<u8").astype(np.uint64)
    return np.ascontiguousarray(np.moveaxis(words, -1, axis))


def unpack_bits(packed: np.ndarray, n: int, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_bits`: float32 +-1 values, ``n`` of them along ``axis``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint64:
        raise InvalidParameterError(f"packed words must be uint64; got {packed.dtype}.")
    axis = axis % packed.ndim
    n = _check_int("n", n, 0)
    moved = np.ascontiguousarray(np.moveaxis(packed, axis, -1))
    if n > moved.shape[-1] * WORD_BITS:
        raise ShapeError(f"{moved.shape[-1]} words hold at most {moved.shape[-1] * 64} bits; asked for n={n}.")
    bits = np.unpackbits(moved.astype("<u8").view(np.uint8), axis=-1, bitorder="little")[..., :n]
    vals = (1.0 - 2.0 * bits).astype(np.float32)
    return np.moveaxis(vals, -1, axis)


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """Pack a float conv weight ``[O, C, KH, KW]`` (torch layout) into ``[KH, KW, Cw, O]`` words.

    Output channels are innermost so the kernels vectorize over filters.
    """
    w = np.asarray(w)
    if w.ndim != 4:
        raise ShapeError(f"conv weight must be [O, C, KH, KW]; got shape {w.shape}.")
    return np.ascontiguousarray(pack_bits(w.transpose(2, 3, 1, 0), axis=2))


def bn_to_threshold(scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``y = scale * dot + shift`` followed by sign into a per-channel integer test.

    Returns ``(thr, sgn)`` with the output bit set (value -1) iff ``sgn * dot < sgn * thr``.
    This is the fused batch-norm + sign of XNOR-Net / BMXNet style inference.
    """
    scale = np.asarray(scale, dtype=np.float64).ravel()
    shift = np.asarray(shift, dtype=np.float64).ravel()
    if scale.shape != shift.shape:
        raise ShapeError(f"scale {scale.shape} and shift {shift.shape} must have the same length.")
    thr = np.empty_like(scale)
    sgn = np.ones(scale.shape, dtype=np.int8)
    pos, neg, zero = scale > 0, scale < 0, scale == 0
    thr[pos] = -shift[pos] / scale[pos]
    thr[neg] = -shift[neg] / scale[neg]
    sgn[neg] = -1
    thr[zero] = np.where(shift[zero] < 0, np.inf, -np.inf)
    return thr, sgn


def _check_gemm(a: np.ndarray, b: np.ndarray, k: int) -> None:
    if a.dtype != np.uint64 or b.dtype != np.uint64:
        raise InvalidParameterError(f"binary_gemm needs uint64 packed inputs; got {a.dtype} and {b.dtype}.")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"binary_gemm needs a [M, Kw] and b [Kw, N]; got {a.shape} and {b.shape}.")
    if n_words(k) != a.shape[1]:
        raise ShapeError(f"k={k} bits need {n_words(k)} words; the inputs have {a.shape[1]}.")


def _weights(w):
    """Unwrap prepared weights (:class:`edgeslim.research.kernels.binary.PreparedWeights`) to the packed array."""
    return getattr(w, "w_packed", w)


def _check_engine(engine: str) -> None:
    if engine not in ("auto", "avx512", "lut", "popcount"):
        raise InvalidParameterError(f"engine={engine!r} is not one of ('auto', 'avx512', 'lut', 'popcount').")


def binary_gemm(a_packed: np.ndarray, b_packed: np.ndarray, k: int, engine: str = "auto") -> np.ndarray:
    """``A @ B`` for +-1 matrices ``A [M, K]`` packed along K (``[M, Kw]``) and ``B [K, N]``
    packed along K (``[Kw, N]``); returns int32 ``[M, N]``. ``engine`` is accepted for
    signature parity with the numba kernels; the reference has one."""
    _check_engine(engine)
    b_packed = _weights(b_packed)
    if b_packed.ndim == 4:
        b_packed = b_packed.reshape(b_packed.shape[2], b_packed.shape[3])
    _check_gemm(a_packed, b_packed, k)
    a = unpack_bits(a_packed, k, axis=1).astype(np.float64)
    b = unpack_bits(b_packed, k, axis=0).astype(np.float64)
    return (a @ b).astype(np.int32)


def _check_conv(x: np.ndarray, w: np.ndarray, c: int, stride: int, padding: int) -> tuple[int, int]:
    if x.dtype != np.uint64 or w.dtype != np.uint64:
        raise InvalidParameterError(f"binary_conv2d needs uint64 packed inputs; got {x.dtype} and {w.dtype}.")
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"binary_conv2d needs x [B, H, W, Cw] and w [KH, KW, Cw, O]; got {x.shape} and {w.shape}.")
    if x.shape[3] != w.shape[2] or n_words(c) != x.shape[3]:
        raise ShapeError(f"c={c} channels need {n_words(c)} words; x has {x.shape[3]} and w has {w.shape[2]}.")
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    ho = (x.shape[1] + 2 * padding - w.shape[0]) // stride + 1
    wo = (x.shape[2] + 2 * padding - w.shape[1]) // stride + 1
    if ho < 1 or wo < 1:
        raise ShapeError(f"input {x.shape[1]}x{x.shape[2]} is smaller than the {w.shape[0]}x{w.shape[1]} kernel.")
    return ho, wo


def binary_conv2d(x_packed: np.ndarray, w_packed: np.ndarray, c: int, stride: int = 1, padding: int = 1,
                  engine: str = "auto") -> np.ndarray:
    """Convolve packed +-1 activations ``[B, H, W, Cw]`` (NHWC, packed along C) with packed
    weights ``[KH, KW, Cw, O]`` under zero padding; returns the int32 dot ``[B, Ho, Wo, O]``."""
    _check_engine(engine)
    w_packed = _weights(w_packed)
    ho, wo = _check_conv(x_packed, w_packed, c, stride, padding)
    kh, kw = w_packed.shape[:2]
    x = unpack_bits(x_packed, c, axis=3).astype(np.float64)
    w = unpack_bits(w_packed, c, axis=2).astype(np.float64)
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]), dtype=np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride, :]
            out += patch @ w[dy, dx]
    return out.astype(np.int32)


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
    """:func:`binary_conv2d` fused with the per-channel threshold of :func:`bn_to_threshold`;
    returns the next layer's packed input ``[B, Ho, Wo, Ow]``."""
    w_packed = _weights(w_packed)
    dot = binary_conv2d(x_packed, w_packed, c, stride, padding, engine).astype(np.float64)
    o = w_packed.shape[3]
    thr = np.asarray(thr, dtype=np.float64)
    sgn = np.asarray(sgn).astype(np.float64)
    if thr.shape != (o,) or sgn.shape != (o,):
        raise ShapeError(f"thr and sgn must have one entry per output channel ({o}); got {thr.shape}, {sgn.shape}.")
    neg = sgn * dot < sgn * thr
    return pack_bits(np.where(neg, -1.0, 1.0), axis=-1)
