"""Packed binary-network inference, torch-free: bit-packed weights, the numba binary kernels and the
folded BatchNorm thresholds of a trained `edgeslim.research.train.bnn.MnistBNN` (exported by `export_packed`).

Kept apart from the torch training modules so a deployment loads and runs a packed BNN with numpy and numba only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

__all__ = ["PackedBlock", "PackedBNN", "save_packed", "load_packed"]


# ---------------------------------------------------------------------------- packed inference
@dataclass(frozen=True, kw_only=True)
class PackedBlock:
    """One binary conv: packed weights ``[3, 3, Cw, O]`` and the folded BN ``y = scale*dot + shift``."""

    w_packed: np.ndarray
    cin: int
    cout: int
    stride: int
    scale: np.ndarray
    shift: np.ndarray
    beta: np.ndarray | None = None  # RSign threshold (reactnet)
    rprelu: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # gamma, slope, zeta
    shortcut: bool = False
    proj: tuple[np.ndarray, np.ndarray] | None = None  # real 1x1 conv of the downsampling shortcut: [O, C], [O]


@dataclass(frozen=True, kw_only=True)
class PackedBNN:
    """A trained :class:`MnistBNN` in bit-packed form, run by :mod:`edgeslim.research.kernels.binary`.

    Activations are NHWC; between two ``xnor`` blocks batch norm and sign fuse into the
    integer threshold test of :func:`~edgeslim.research.kernels.binary.bn_to_threshold`.
    """

    kind: str
    stem_w: np.ndarray  # [O, 1, 3, 3] with BN folded
    stem_b: np.ndarray
    blocks: tuple[PackedBlock, ...]
    fc_w: np.ndarray
    fc_b: np.ndarray
    _thresholds: tuple = field(default=(), init=False, repr=False)
    _weights: tuple = field(default=(), init=False, repr=False)
    _stem_taps: np.ndarray = field(default=None, init=False, repr=False)
    _epilogue: tuple = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        from . import binary as bk

        # run-time forms: fused BN+sign thresholds, the engines' weight forms (built once) and the
        # stem weights tap-major [9, O], so the stem's inner loop over filters is contiguous (SIMD)
        object.__setattr__(self, "_thresholds", tuple(bk.bn_to_threshold(b.scale, b.shift) for b in self.blocks))
        object.__setattr__(self, "_weights", tuple(bk.prepare_weights(b.w_packed) for b in self.blocks))
        f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64).reshape(-1)  # noqa: E731
        object.__setattr__(self, "_epilogue", tuple(
            (f64(b.scale), f64(b.shift), *(f64(v) for v in b.rprelu)) if b.rprelu is not None else ()
            for b in self.blocks))
        taps = np.ascontiguousarray(np.asarray(self.stem_w, dtype=np.float32).reshape(self.stem_w.shape[0], 9).T)
        object.__setattr__(self, "_stem_taps", taps)

    def weight_bytes(self) -> int:
        """Bytes of all weights (packed binary layers + real stem/classifier)."""
        arrays = [self.stem_w, self.stem_b, self.fc_w, self.fc_b]
        for b in self.blocks:
            arrays += [b.w_packed, b.scale, b.shift] + (list(b.proj) if b.proj is not None else [])
        return int(sum(a.nbytes for a in arrays))

    def _stem(self, x: np.ndarray) -> np.ndarray:
        # x [B, 1, H, W] -> NHWC [B, H, W, C]: a direct 3x3 conv with one input channel (numba)
        out = np.empty((x.shape[0], x.shape[2], x.shape[3], self.stem_w.shape[0]), dtype=np.float32)
        _kernels().stem(np.ascontiguousarray(x[:, 0]), self._stem_taps, self.stem_b, out)
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[B, classes]`` for images ``[B, 1, H, W]`` (float32, normalized like training)."""
        from . import binary as bk

        x = np.asarray(x, dtype=np.float32)
        h = self._stem(x)
        packed = bk.pack_bits(h) if self.kind == "xnor" else None
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            if self.kind == "xnor":
                if i < n - 1:
                    thr, sgn = self._thresholds[i]
                    packed = bk.binary_conv2d_packed(packed, self._weights[i], blk.cin, thr, sgn, blk.stride, 1)
                else:
                    dot = bk.binary_conv2d(packed, self._weights[i], blk.cin, blk.stride, 1)
                    h = dot * blk.scale + blk.shift
            else:
                dot = bk.binary_conv2d(bk.pack_bits(h - blk.beta), self._weights[i], blk.cin, blk.stride, 1)
                sc = np.ascontiguousarray(_np_shortcut(h, blk.stride, blk.cout, blk.proj), dtype=np.float32)
                h = np.empty(dot.shape, dtype=np.float32)
                # BN, shortcut add and RPReLU in one pass (numba) instead of six NumPy passes over the tensor
                o = dot.shape[-1]
                _kernels().epilogue(dot.reshape(-1, o), *self._epilogue[i], sc.reshape(-1, o), h.reshape(-1, o))
        return h.mean(axis=(1, 2)) @ self.fc_w.T + self.fc_b


@functools.cache
def _kernels() -> SimpleNamespace:
    """The runtime's numba kernels (stem conv, ReActNet epilogue, average pooling), compiled on first use so that
    importing this module needs no numba."""
    from numba import njit

    @njit(nogil=True, fastmath=True, cache=True)
    def stem(x, w, b, out):
        # w is tap-major [9, O]: the inner loop over filters reads contiguous weights
        n, h, wd = x.shape
        o_n = w.shape[1]
        for bi in range(n):
            for y in range(h):
                for xx in range(wd):
                    for o in range(o_n):
                        out[bi, y, xx, o] = b[o]
                    for dy in range(3):
                        iy = y - 1 + dy
                        if iy < 0 or iy >= h:
                            continue
                        for dx in range(3):
                            ix = xx - 1 + dx
                            if ix < 0 or ix >= wd:
                                continue
                            v = x[bi, iy, ix]
                            for o in range(o_n):
                                out[bi, y, xx, o] += v * w[dy * 3 + dx, o]

    @njit(nogil=True, fastmath=True, cache=True)
    def epilogue(dot, scale, shift, gamma, slope, zeta, sc, out):
        # ReActNet's float glue after a binary conv in one pass: h = RPReLU(scale * dot + shift + shortcut),
        # computed in float64 (as NumPy's promotion of int32 x float32 did) and stored as float32
        n, o_n = dot.shape
        for i in range(n):
            for o in range(o_n):
                y = dot[i, o] * scale[o] + shift[o] + sc[i, o] - gamma[o]
                if y < 0:
                    y = y * slope[o]
                out[i, o] = y + zeta[o]

    @njit(nogil=True, fastmath=True, cache=True)
    def avgpool(h, s, out):
        # s x s average pooling of NHWC, trailing rows/columns dropped (as torch's avg_pool2d)
        b_n, ho, wo, c_n = out.shape
        inv = np.float32(1.0 / (s * s))
        for b in range(b_n):
            for y in range(ho):
                for x in range(wo):
                    for c in range(c_n):
                        out[b, y, x, c] = 0
                    for dy in range(s):
                        for dx in range(s):
                            for c in range(c_n):
                                out[b, y, x, c] += h[b, y * s + dy, x * s + dx, c]
                    for c in range(c_n):
                        out[b, y, x, c] *= inv

    return SimpleNamespace(stem=stem, epilogue=epilogue, avgpool=avgpool)


def _np_shortcut(h: np.ndarray, stride: int, cout: int, proj=None) -> np.ndarray:
    if stride > 1:
        b, hh, ww, c = h.shape
        pooled = np.empty((b, hh // stride, ww // stride, c), dtype=np.float32)
        _kernels().avgpool(np.ascontiguousarray(h, dtype=np.float32), stride, pooled)
        h = pooled
    if proj is not None:
        return h @ proj[0].T + proj[1]
    if cout == 2 * h.shape[-1]:
        h = np.concatenate([h, h], axis=-1)
    return h


def save_packed(packed: PackedBNN, path) -> None:
    """Write a :class:`PackedBNN` to one ``.npz`` file (packed weights, folded BN, real stem/head)."""
    arrays = {"kind": np.array(packed.kind), "stem_w": packed.stem_w, "stem_b": packed.stem_b,
              "fc_w": packed.fc_w, "fc_b": packed.fc_b, "n_blocks": np.array(len(packed.blocks))}
    for i, b in enumerate(packed.blocks):
        arrays.update({f"b{i}_w": b.w_packed, f"b{i}_meta": np.array([b.cin, b.cout, b.stride, int(b.shortcut)]),
                       f"b{i}_scale": b.scale, f"b{i}_shift": b.shift})
        if b.beta is not None:
            arrays[f"b{i}_beta"] = b.beta
        if b.rprelu is not None:
            arrays[f"b{i}_rprelu"] = np.stack(b.rprelu)
        if b.proj is not None:
            arrays[f"b{i}_proj_w"], arrays[f"b{i}_proj_b"] = b.proj
    np.savez(path, **arrays)


def load_packed(path) -> PackedBNN:
    """Read a file written by :func:`save_packed`."""
    from ...errors import ModelLoadError

    try:
        z = np.load(path, allow_pickle=False)
        blocks = []
        for i in range(int(z["n_blocks"])):
            cin, cout, stride, shortcut = (int(v) for v in z[f"b{i}_meta"])
            rp = z[f"b{i}_rprelu"] if f"b{i}_rprelu" in z else None
            blocks.append(PackedBlock(w_packed=z[f"b{i}_w"], cin=cin, cout=cout, stride=stride, scale=z[f"b{i}_scale"],
                                      shift=z[f"b{i}_shift"], beta=z[f"b{i}_beta"] if f"b{i}_beta" in z else None,
                                      rprelu=tuple(rp) if rp is not None else None, shortcut=bool(shortcut),
                                      proj=(z[f"b{i}_proj_w"], z[f"b{i}_proj_b"]) if f"b{i}_proj_w" in z else None))
        return PackedBNN(kind=str(z["kind"]), stem_w=z["stem_w"], stem_b=z["stem_b"], blocks=tuple(blocks),
                         fc_w=z["fc_w"], fc_b=z["fc_b"])
    except (OSError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a packed BNN written by save_packed ({e}).") from e
