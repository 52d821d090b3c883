"""Register-tiled binary conv/GEMM for CPUs with AVX-512 VPOPCNTDQ (the ``avx512`` engine).

Why our own code: numba's auto-vectorizer turns the plain XOR-popcount loop into one vector of
filters per input word, reloading and re-storing the accumulators every step (about 3x over
onnxruntime fp32 on Zen 4/5, against a popcount floor near 20x). Here the micro-kernel is written
as LLVM IR on ``<8 x i64>`` vectors (:func:`_make_tile`), so LLVM keeps a tile of
``P pixels x F vectors of 8 filters`` accumulators in zmm registers for the whole reduction:

    for each kernel row dy, for each word q of the (kw * Cw) words of that input row:
        w_f  = load 8 filters' words                    (F loads, reused by P pixels)
        x_p  = broadcast one input word                 (P loads, reused by F vectors)
        acc[p, f] += vpopcntq(x_p XOR w_f)              (3 vector ops per 8 word pairs)

so the loop issues 3 ALU ops per 512 binary MACs with no stores. The epilogue writes either the
int32 dot (``K - 2 * popcount`` plus a per-class offset) or, fused, the next layer's packed bits
(one ``vpcmpq`` per vector, 8 output bits per filter vector as one byte).

Spatial zero padding: the input is copied once into a zero-bordered buffer, so every output pixel
runs the same branch-free loop; a zero word counts like a +1 activation, so a pixel whose taps
leave the image is corrected exactly with per-filter popcounts of the outside taps' weights. Pixels
fall into a few "border classes" (which kernel rows/columns are outside); a class table holds the
offset (int32 output) or the integer threshold (packed output) per filter, and the epilogue reads
each pixel's class, so a tile may straddle the image border. A row whose width is not a multiple
of the tile ends with a tile shifted back over its neighbour (a few pixels computed twice) rather
than single-pixel tiles. The threshold of ``sign(scale * dot + shift)`` (from
:func:`~edgeslim.research.kernels.binary_ref.bn_to_threshold`) becomes an integer popcount bound, found from
the closed form and checked with the reference's own float64 comparison, so the fused output is
bit-exact, ties included.

Measured on Zen 5 (one core): the tile alone runs about 35-38 word pairs (2,200-2,400 binary MACs)
per ns, bound by its three vector ops per 8 word pairs (without the popcount the loop runs twice as
fast); a carry-save variant (``a + b + c = (a ^ b ^ c) + 2 maj(a, b, c)`` with ``vpternlogq``, two
popcounts per three words) has as many ops, needs twice the accumulators, spills, and measured slower.

The IR is portable: where the CPU lacks AVX-512 LLVM splits the vectors and it still runs exactly
(slowly); :mod:`edgeslim.research.kernels.binary` picks this engine automatically only when the CPU has
``avx512f`` and ``avx512_vpopcntdq``.

References
----------
- Goto and van de Geijn, "Anatomy of High-Performance Matrix Multiplication", TOMS 2008
  (register blocking of the micro-kernel).
- Zhang et al., "dabnn", ACM MM 2019; Bannink et al., "Larq Compute Engine", MLSys 2021
  (bit-packed channels, padding correction, fused BN + sign to packed output).
"""

from __future__ import annotations

import types as types_mod

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["LANES", "P_MAIN", "F_MAX", "pad_filters", "conv", "conv_serial", "n_units", "gemm_grid"]

LANES = 8  # uint64 words (filters) per 512-bit vector
P_MAIN = 4  # output pixels per register tile
F_MAX = 4  # filter vectors per register tile: 4 x 4 accumulators + 4 weight vectors of 32 zmm
# 4x4, 6x4, 8x3, 4x6 and 3x8 tiles all measured 34-36 word pairs/ns on Zen 5 (bound by the vector
# ops, not by loads); 7x4 (32 zmm live) a little less. 4 pixels divide the usual row widths (112, 56, 28).
_BIG = 1 << 62  # threshold no popcount exceeds: the output bit stays 0

# no fastmath: the threshold search compares with infinite and NaN thresholds exactly as the
# reference does (fastmath would let LLVM assume neither occurs); the tiles do no float math
_JIT = dict(nogil=True, cache=True)

_I64, _I32, _I8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
_V64 = ir.VectorType(_I64, LANES)
_V32 = ir.VectorType(_I32, LANES)


def _const_i64(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _ptr(builder: ir.IRBuilder, addr, ty):
    return builder.inttoptr(addr, ty.as_pointer())


def _ctpop(builder: ir.IRBuilder, v):
    # llvmlite's builder.ctpop accepts scalars only; declare llvm.ctpop.v8i64 directly
    name = f"llvm.ctpop.v{v.type.count}i{v.type.element.width}"
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(v.type, [v.type]), name)
    return builder.call(fn, [v])


def _make_tile(p_n: int, f_n: int, bits: bool):
    """One register tile of ``p_n`` pixels x ``f_n`` filter vectors, as a numba intrinsic.

    Arguments (all int64; addresses in bytes): ``xaddr`` input word of pixel 0 at (dy=0, q=0),
    ``xpix`` step between the tile's pixels, ``xrow`` step between kernel rows, ``nrow`` kernel
    rows, ``nq`` words per kernel row (``kw * Cw``), ``waddr`` weights of vector 0 at row 0,
    ``wq`` step between weight rows, ``outaddr`` output of pixel 0 / vector 0, ``outpix`` step
    between output pixels, ``kfull`` ``K`` of ``K - 2 * popcount``; ``paddr`` per-filter int64
    offsets (int32 output) or thresholds (packed output) and ``faddr`` one flip byte per vector,
    both of border class 0 of the output row; ``caddr`` the int64 border class of each of the
    tile's pixels, ``pstride`` / ``fstride`` the step between classes in those two tables.

    """

    def impl(typingctx, xaddr, xpix, xrow, nrow, nq, waddr, wq, outaddr, outpix, kfull, paddr, faddr, caddr, pstride,
             fstride):
        sig = types.void(*([types.int64] * 15))

        def codegen(context, builder, signature, args):
            xaddr, xpix, xrow, nrow, nq, waddr, wq, outaddr, outpix, kfull, paddr, faddr, caddr, pstride, fstride = args
            zero = ir.Constant(_V64, [0] * LANES)
            undef = ir.Constant(_V64, ir.Undefined)
            splat_mask = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            n_acc = p_n * f_n
            pre = builder.block
            outer = builder.append_basic_block("btile_outer")
            inner = builder.append_basic_block("btile_inner")
            latch = builder.append_basic_block("btile_latch")
            done = builder.append_basic_block("btile_done")
            builder.branch(outer)

            builder.position_at_end(outer)
            dy = builder.phi(_I64)
            acc_o = [builder.phi(_V64) for _ in range(n_acc)]
            xr = builder.add(xaddr, builder.mul(dy, xrow))
            wr = builder.add(waddr, builder.mul(builder.mul(dy, nq), wq))
            builder.branch(inner)

            builder.position_at_end(inner)
            q = builder.phi(_I64)
            acc_i = [builder.phi(_V64) for _ in range(n_acc)]
            wbase = builder.add(wr, builder.mul(q, wq))
            wv = [builder.load(_ptr(builder, builder.add(wbase, _const_i64(64 * f)), _V64), align=8)
                  for f in range(f_n)]
            xq = builder.add(xr, builder.shl(q, _const_i64(3)))
            acc_new = []
            for p in range(p_n):
                xs = builder.load(_ptr(builder, builder.add(xq, builder.mul(xpix, _const_i64(p))), _I64), align=8)
                xv = builder.shuffle_vector(builder.insert_element(undef, xs, ir.Constant(_I32, 0)), undef, splat_mask)
                for f in range(f_n):
                    acc_new.append(builder.add(acc_i[p * f_n + f], _ctpop(builder, builder.xor(xv, wv[f]))))
            q_next = builder.add(q, _const_i64(1))
            builder.cbranch(builder.icmp_signed("<", q_next, nq), inner, latch)

            builder.position_at_end(latch)
            dy_next = builder.add(dy, _const_i64(1))
            builder.cbranch(builder.icmp_signed("<", dy_next, nrow), outer, done)

            dy.add_incoming(_const_i64(0), pre)
            dy.add_incoming(dy_next, latch)
            q.add_incoming(_const_i64(0), outer)
            q.add_incoming(q_next, inner)
            for i in range(n_acc):
                acc_o[i].add_incoming(zero, pre)
                acc_o[i].add_incoming(acc_new[i], latch)
                acc_i[i].add_incoming(acc_o[i], outer)
                acc_i[i].add_incoming(acc_new[i], inner)
            builder.position_at_end(done)
            if not bits:
                kv = builder.shuffle_vector(builder.insert_element(undef, kfull, ir.Constant(_I32, 0)), undef,
                                            splat_mask)
            for p in range(p_n):
                cls = builder.load(_ptr(builder, builder.add(caddr, _const_i64(8 * p)), _I64), align=8)
                pa = builder.add(paddr, builder.mul(cls, pstride))
                fa = builder.add(faddr, builder.mul(cls, fstride))
                obase = builder.add(outaddr, builder.mul(outpix, _const_i64(p)))
                for f in range(f_n):
                    acc = acc_new[p * f_n + f]
                    par = builder.load(_ptr(builder, builder.add(pa, _const_i64(64 * f)), _V64), align=8)
                    if bits:
                        flip = builder.bitcast(builder.load(_ptr(builder, builder.add(fa, _const_i64(f)), _I8)),
                                               ir.VectorType(ir.IntType(1), LANES))
                        m = builder.xor(builder.icmp_signed(">", acc, par), flip)
                        builder.store(builder.bitcast(m, _I8), _ptr(builder, builder.add(obase, _const_i64(f)), _I8))
                    else:
                        dot = builder.add(builder.sub(kv, builder.shl(acc, ir.Constant(_V64, [1] * LANES))), par)
                        builder.store(builder.trunc(dot, _V32),
                                      _ptr(builder, builder.add(obase, _const_i64(32 * f)), _V32), align=4)
            return context.get_dummy_value()

        return sig, codegen

    impl.__name__ = f"_tile_{p_n}x{f_n}_{'bits' if bits else 'dot'}"
    return intrinsic(impl)


# One intrinsic per (pixels, vectors, output kind); numba needs them as module globals.
_tP_1d, _tP_2d, _tP_3d, _tP_4d = (_make_tile(P_MAIN, f, False) for f in range(1, 5))
_t1_1d, _t1_2d, _t1_3d, _t1_4d = (_make_tile(1, f, False) for f in range(1, 5))
_tP_1b, _tP_2b, _tP_3b, _tP_4b = (_make_tile(P_MAIN, f, True) for f in range(1, 5))
_t1_1b, _t1_2b, _t1_3b, _t1_4b = (_make_tile(1, f, True) for f in range(1, 5))


@njit(inline="always", **_JIT)
def _tile(big, f_n, bits, xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs):
    if bits:
        if big:
            if f_n == 4:
                _tP_4b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 3:
                _tP_3b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 2:
                _tP_2b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            else:
                _tP_1b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
        else:
            if f_n == 4:
                _t1_4b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 3:
                _t1_3b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 2:
                _t1_2b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            else:
                _t1_1b(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
    else:
        if big:
            if f_n == 4:
                _tP_4d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 3:
                _tP_3d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 2:
                _tP_2d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            else:
                _tP_1d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
        else:
            if f_n == 4:
                _t1_4d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 3:
                _t1_3d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            elif f_n == 2:
                _t1_2d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)
            else:
                _t1_1d(xa, xpix, xrow, nrow, nq, wa, wq, oa, opix, kfull, pa, fa, ca, ps, fs)


def pad_filters(w_packed: np.ndarray) -> np.ndarray:
    """Packed weights ``[KH, KW, Cw, O]`` as ``[KH*KW*Cw, O8]`` with O padded to a multiple of 8."""
    kh, kw, cw, o = w_packed.shape
    o8 = -(-o // LANES) * LANES
    w8 = np.zeros((kh * kw * cw, o8), dtype=np.uint64)
    w8[:, :o] = w_packed.reshape(kh * kw * cw, o)
    return w8


@njit(inline="always", **_JIT)
def _popc64(v):
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((v * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(inline="always", **_JIT)
def _bit(sg, th, full, pc):
    # the reference's own test (binary_ref.binary_conv2d_packed), in the same float64 arithmetic
    return sg * np.float64(full - 2 * pc) < sg * th


@njit(inline="always", **_JIT)
def _threshold(sg, th, full):
    """(a, flip) with ``bit(pc) == ((pc > a) != flip)`` for every integer popcount 0 <= pc <= full."""
    b0 = _bit(sg, th, full, 0)
    if b0 == _bit(sg, th, full, full):  # constant over the range (scale 0, NaN, or a far threshold)
        return (np.int64(-1), np.uint8(0)) if b0 else (np.int64(_BIG), np.uint8(0))
    # monotone in pc with one switch, near (full - th) / 2 (th is finite here): start from the
    # closed form, then step to the last pc whose bit equals bit(0), checking with the exact test
    t = min(max((full - th) * 0.5, 0.0), np.float64(full))
    a = np.int64(np.floor(t))
    while a + 1 <= full and _bit(sg, th, full, a + 1) == b0:
        a += 1
    while a >= 0 and _bit(sg, th, full, a) != b0:
        a -= 1
    return a, np.uint8(1 if b0 else 0)


@njit(inline="always", **_JIT)
def _edge_classes(n_in, k, stride, pad, n_out, cls, lo_of, hi_of):
    """Class per output index by (taps before the image, taps after it); returns the class count."""
    key_to_cls = np.full((k + 1) * (k + 1), -1, dtype=np.int64)
    n_cls = 0
    for o in range(n_out):
        start = o * stride - pad
        lo = min(k, max(0, -start))
        hi = min(k, max(0, start + k - n_in))
        key = lo * (k + 1) + hi
        if key_to_cls[key] < 0:
            key_to_cls[key] = n_cls
            lo_of[n_cls] = lo
            hi_of[n_cls] = hi
            n_cls += 1
        cls[o] = key_to_cls[key]
    return n_cls


@njit(inline="always", **_JIT)
def _setup(x, w8, o_n, kh, kw, c, stride, pad, ho, wo, thr, sgn, bits):
    """Zero-bordered input, border classes and their per-filter offsets / thresholds."""
    b_n, h, wd, cw = x.shape
    o8 = w8.shape[1]
    g_vec = o8 // 8
    k_full = kh * kw * c

    # ---- zero-bordered copy of the input (the tile loop has no bounds checks)
    hp = max(h + 2 * pad, (ho - 1) * stride + kh)
    wp = max(wd + 2 * pad, (wo - 1) * stride + kw)
    if pad == 0 and hp == h and wp == wd:
        xp = x
    else:
        xp = np.zeros((b_n, hp, wp, cw), dtype=np.uint64)
        for bi in range(b_n):
            for iy in range(h):
                xp[bi, iy + pad, pad : pad + wd, :] = x[bi, iy]

    rcls = np.empty(ho, dtype=np.int64)
    ccls = np.empty(wo, dtype=np.int64)
    rlo = np.empty(ho, dtype=np.int64)
    rhi = np.empty(ho, dtype=np.int64)
    clo = np.empty(wo, dtype=np.int64)
    chi = np.empty(wo, dtype=np.int64)
    n_r = _edge_classes(h, kh, stride, pad, ho, rcls, rlo, rhi)
    n_c = _edge_classes(wd, kw, stride, pad, wo, ccls, clo, chi)
    pcw = np.zeros((kh, kw, o8), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            for j in range(cw):
                row = (dy * kw + dx) * cw + j
                for o in range(o8):
                    pcw[dy, dx, o] += _popc64(w8[row, o])
    par = np.zeros((n_r, n_c, o8), dtype=np.int64)
    flip = np.zeros((n_r, n_c, g_vec), dtype=np.uint8)
    # thresholds depend on the count of valid taps only (3 values for a 3x3 kernel, pad 1)
    t_a = np.empty((kh * kw + 1, o8), dtype=np.int64)
    t_f = np.zeros((kh * kw + 1, g_vec), dtype=np.uint8)
    t_done = np.zeros(kh * kw + 1, dtype=np.bool_)
    corr = np.empty(o8, dtype=np.int64)
    for rc in range(n_r):
        for cc in range(n_c):
            valid = max(0, kh - rlo[rc] - rhi[rc]) * max(0, kw - clo[cc] - chi[cc])
            full = valid * c
            corr[:] = 0  # popcount of the zero (padding) taps' weights: counted as +1 activations
            for dy in range(kh):
                out_y = dy < rlo[rc] or dy >= kh - rhi[rc]
                for dx in range(kw):
                    if out_y or dx < clo[cc] or dx >= kw - chi[cc]:
                        for o in range(o8):
                            corr[o] += pcw[dy, dx, o]
            if not bits:
                for o in range(o8):
                    par[rc, cc, o] = full - k_full + 2 * corr[o]
                continue
            if not t_done[valid]:
                t_done[valid] = True
                for o in range(o8):
                    if o >= o_n:
                        t_a[valid, o] = _BIG
                        continue
                    a, fl = _threshold(sgn[o], thr[o], full)
                    t_a[valid, o] = a
                    if fl:
                        t_f[valid, o // 8] = np.uint8(t_f[valid, o // 8] | (1 << (o % 8)))
            for o in range(o8):
                a = t_a[valid, o]
                par[rc, cc, o] = a + corr[o] if a < _BIG else a
            for j in range(g_vec):
                flip[rc, cc, j] = t_f[valid, j]

    return xp, par, flip, rcls, ccls


@njit(inline="always", **_JIT)
def _unit(u, xp, w8, kh, kw, c, stride, ho, wo, bits, out, opix, seg, par, flip, rcls, ccls):
    """One unit of work: (output row, ``seg`` pixels of it, group of ``F_MAX`` filter vectors)."""
    b_n, hp, wp, cw = xp.shape
    o8 = w8.shape[1]
    g_vec = o8 // 8
    k_full = kh * kw * c
    n_c = par.shape[1]
    n_seg = (wo + seg - 1) // seg
    n_grp = (g_vec + F_MAX - 1) // F_MAX
    xbase = xp.ctypes.data
    wbase = w8.ctypes.data
    obase = out.ctypes.data
    xpix = stride * cw * 8
    xrow = wp * cw * 8
    nq = kw * cw
    wq = o8 * 8
    g = u % n_grp
    rest = u // n_grp
    s = rest % n_seg
    r = rest // n_seg
    bi = r // ho
    oy = r - bi * ho
    f0 = g * F_MAX
    f_n = min(F_MAX, g_vec - f0)
    xrow0 = xbase + ((bi * hp + oy * stride) * wp) * cw * 8
    orow0 = obase + (r * wo) * opix + (f0 if bits else f0 * 32)
    prow = par.ctypes.data + (rcls[oy] * n_c) * o8 * 8 + f0 * 64
    frow = flip.ctypes.data + (rcls[oy] * n_c) * g_vec + f0
    cbase = ccls.ctypes.data
    ox = s * seg
    end = min(wo, ox + seg)
    if end - ox >= P_MAIN:
        # full tiles; the last one shifted back to end at `end`, recomputing a few pixels of its
        # neighbour (same values, same thread) instead of running single-pixel tiles
        while True:
            ox = min(ox, end - P_MAIN)
            _tile(True, f_n, bits, xrow0 + ox * xpix, xpix, xrow, kh, nq, wbase + f0 * 64, wq,
                  orow0 + ox * opix, opix, k_full, prow, frow, cbase + ox * 8, o8 * 8, g_vec)
            ox += P_MAIN
            if ox >= end:
                break
    else:
        while ox < end:
            _tile(False, f_n, bits, xrow0 + ox * xpix, xpix, xrow, kh, nq, wbase + f0 * 64, wq,
                  orow0 + ox * opix, opix, k_full, prow, frow, cbase + ox * 8, o8 * 8, g_vec)
            ox += 1


@njit(inline="always", **_JIT)
def n_units(b_n, ho, wo, o8, seg):
    """Units of work of a conv: rows x row segments x groups of filter vectors."""
    return b_n * ho * ((wo + seg - 1) // seg) * ((o8 // 8 + F_MAX - 1) // F_MAX)


@njit(parallel=True, **_JIT)
def conv(x, w8, o_n, kh, kw, c, stride, pad, ho, wo, thr, sgn, bits, out, opix, seg):
    """Binary conv of packed NHWC ``x [B, H, W, Cw]`` with ``w8`` from :func:`pad_filters`.

    ``out``: the bytes (a flat uint8 view, so both outputs share one compiled kernel) of int32
    ``[B, Ho, Wo, O8]`` (``bits`` False) or zeroed uint64 ``[B, Ho, Wo, Ow]`` (``bits`` True,
    thresholds ``thr``/``sgn`` per filter); ``opix`` the bytes per output pixel. Work is shared out over numba's pool
    in units of (output row, ``seg`` pixels of it, group of ``F_MAX`` filter vectors).
    """
    xp, par, flip, rcls, ccls = _setup(x, w8, o_n, kh, kw, c, stride, pad, ho, wo, thr, sgn, bits)
    for u in prange(n_units(x.shape[0], ho, wo, w8.shape[1], seg)):
        _unit(u, xp, w8, kh, kw, c, stride, ho, wo, bits, out, opix, seg, par, flip, rcls, ccls)


def _serial_copy(kernel):
    """``kernel`` compiled without ``parallel`` under its own name (numba's disk cache is keyed by
    the qualified name, not the flag)."""
    f = kernel.py_func
    g = types_mod.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + "_serial"
    g.__module__ = f.__module__
    return njit(**_JIT)(g)


conv_serial = _serial_copy(conv)


def gemm_grid(m: int) -> tuple[int, int]:
    """Lay M GEMM rows out as ``rows x cols`` pixels (rows are the units of work), cols a multiple
    of the tile width where M allows."""
    for cols in [c for c in range(128, 15, -1) if c % P_MAIN == 0] + list(range(min(128, m), 0, -1)):
        if m % cols == 0:
            return m // cols, cols
    return m, 1  # pragma: no cover
