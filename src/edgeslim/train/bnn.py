"""Binary neural networks in PyTorch, and their export to bit-packed CPU inference.

Building blocks (survey: Qin et al., "Binary Neural Networks: A Survey", Pattern Recognition 2020):

- :func:`ste_sign` — sign with the straight-through estimator clipped to ``|x| <= 1``
  (Hubara/Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016);
  :func:`approx_sign` — Bi-Real's piecewise-quadratic gradient (Liu et al., ECCV 2018).
- :class:`BinaryConv2d` / :class:`BinaryLinear` — sign activations and weights, with XNOR-Net's
  per-output-channel weight scale ``alpha = mean|W|`` (Rastegari et al., ECCV 2016).
- :class:`RSign` / :class:`RPReLU` — ReActNet's learnable sign threshold and shifted PReLU
  (Liu et al., "ReActNet", ECCV 2020); :class:`Block` adds Bi-Real real-valued shortcuts.
- :func:`set_binarization` drives the two-step recipe (binary activations first, then weights;
  Martinez et al., "Training Binary Neural Networks with Real-to-Binary Convolutions", ICLR 2020).
- :func:`export_packed` turns a trained :class:`MnistBNN` into :class:`PackedBNN`, which runs with
  the numba kernels of :mod:`edgeslim.kernels.binary` (batch norm folded into integer thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError, RecipeError
from ..registry import Registry

__all__ = [
    "ste_sign",
    "approx_sign",
    "BinaryConv2d",
    "BinaryLinear",
    "RSign",
    "RPReLU",
    "Block",
    "MnistBNN",
    "BNN_KINDS",
    "set_binarization",
    "PackedBlock",
    "PackedBNN",
    "export_packed",
    "save_packed",
    "load_packed",
]


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0`` else ``-1``; gradient ``1{|x| <= 1}`` (straight-through).

    >>> ste_sign(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    """
    return _SignSTE.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with Bi-Real's gradient ``max(0, 2 - 2|x|)``."""
    return _ApproxSign.apply(x)


_STES = {"ste": ste_sign, "approx": approx_sign}


def _ste(name: str):
    if name not in _STES:
        raise InvalidParameterError(f"ste={name!r} is not one of {sorted(_STES)}.")
    return _STES[name]


class RSign(nn.Module):
    """ReActNet's RSign: ``sign(x - beta)`` with a learnable per-channel threshold ``beta``."""

    def __init__(self, channels: int, ste: str = "approx") -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self._sign = _ste(ste)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._sign(x - self.beta.view(1, -1, *([1] * (x.dim() - 2))))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``prelu(x - gamma) + zeta`` with per-channel ``gamma``, slope, ``zeta``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.zeta = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x - self.gamma.view(shape)
        return torch.where(y >= 0, y, y * self.slope.view(shape)) + self.zeta.view(shape)


class _Binarized:
    """Shared switches of the binary layers (see :func:`set_binarization`)."""

    binarize_activations: bool
    binarize_weights: bool

    def _binary_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binarize_activations:
            return x
        return self.rsign(x) if self.rsign is not None else self._sign(x)

    def _binary_weight(self, w: torch.Tensor) -> torch.Tensor:
        if not self.binarize_weights:
            return w
        wb = ste_sign(w)
        if self.scale_weights:
            alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
            wb = wb * alpha
        return wb


class BinaryConv2d(nn.Conv2d, _Binarized):
    """Conv2d over sign(input) and sign(weight) * alpha (XNOR-Net); zero padding as in the
    packed kernels (a padded tap contributes 0). ``rsign=True`` adds ReActNet's learnable
    input threshold."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, *, scale_weights: bool = True, rsign: bool = False, ste: str = "ste") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.scale_weights = scale_weights
        self._sign = _ste(ste)
        self.rsign = RSign(in_channels, ste) if rsign else None
        self.binarize_activations = True
        self.binarize_weights = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._binary_input(x), self._binary_weight(self.weight), None)


class BinaryLinear(nn.Linear, _Binarized):
    """Linear layer over sign(input) and sign(weight) * alpha (XNOR-Net)."""

    def __init__(self, in_features: int, out_features: int, *, scale_weights: bool = True,
                 rsign: bool = False, ste: str = "ste") -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale_weights = scale_weights
        self._sign = _ste(ste)
        self.rsign = RSign(in_features, ste) if rsign else None
        self.binarize_activations = True
        self.binarize_weights = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._binary_input(x), self._binary_weight(self.weight))


def set_binarization(model: nn.Module, *, activations: bool, weights: bool) -> nn.Module:
    """Switch every binary layer of ``model``; step 1 of the two-step recipe is
    ``activations=True, weights=False``, step 2 ``activations=True, weights=True``."""
    for m in model.modules():
        if isinstance(m, _Binarized):
            m.binarize_activations = activations
            m.binarize_weights = weights
    return model


BNN_KINDS = Registry("bnn kind")
for _k in ("fp32", "xnor", "reactnet"):
    BNN_KINDS.register(_k)(_k)


class Block(nn.Module):
    """conv -> BN (-> + shortcut) -> activation.

    ``fp32``: real conv, ReLU. ``xnor``: sign -> binary conv (alpha) -> BN, no shortcut (the next
    layer's sign is the nonlinearity). ``reactnet``: RSign -> binary conv -> BN -> + real shortcut
    (Bi-Real; average-pooled and channel-duplicated when the shape changes) -> RPReLU.
    """

    def __init__(self, cin: int, cout: int, stride: int, kind: str) -> None:
        super().__init__()
        BNN_KINDS.get(kind)
        if kind == "reactnet" and cout not in (cin, 2 * cin):
            raise InvalidParameterError(f"a reactnet Block needs cout == cin or 2*cin for its shortcut; got {cin} -> {cout}.")
        self.kind, self.cin, self.cout, self.stride = kind, cin, cout, stride
        if kind == "fp32":
            self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.act = nn.ReLU()
        elif kind == "xnor":
            self.conv = BinaryConv2d(cin, cout, 3, stride, 1, ste="ste")
            self.act = nn.Identity()
        else:
            self.conv = BinaryConv2d(cin, cout, 3, stride, 1, rsign=True, ste="approx")
            self.act = RPReLU(cout)
        self.bn = nn.BatchNorm2d(cout)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.cout == 2 * self.cin:
            x = torch.cat([x, x], dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.kind == "reactnet":
            y = y + self.shortcut(x)
        return self.act(y)


class MnistBNN(nn.Module):
    """Small CNN for 28x28 digits, one shape for all kinds: a real 3x3 stem, binary (or real,
    for ``fp32``) 3x3 blocks, global average pooling and a real linear classifier. First and
    last layers stay real, as in XNOR-Net, Bi-Real and ReActNet."""

    def __init__(self, kind: str = "xnor", widths: tuple[int, ...] = (32, 64, 64, 128, 128),
                 strides: tuple[int, ...] = (2, 1, 2, 1), num_classes: int = 10) -> None:
        super().__init__()
        BNN_KINDS.get(kind)
        if len(strides) != len(widths) - 1:
            raise InvalidParameterError(f"need one stride per block: {len(widths) - 1}; got {len(strides)}.")
        self.kind = kind
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_act = nn.ReLU() if kind == "fp32" else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(widths[i], widths[i + 1], strides[i], kind) for i in range(len(strides))
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_act(self.stem_bn(self.stem(x)))
        for b in self.blocks:
            h = b(h)
        return self.fc(h.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- packed export
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


@dataclass(frozen=True, kw_only=True)
class PackedBNN:
    """A trained :class:`MnistBNN` in bit-packed form, run by :mod:`edgeslim.kernels.binary`.

    Activations are NHWC; between two ``xnor`` blocks batch norm and sign fuse into the
    integer threshold test of :func:`~edgeslim.kernels.binary.bn_to_threshold`.
    """

    kind: str
    stem_w: np.ndarray  # [O, 1, 3, 3] with BN folded
    stem_b: np.ndarray
    blocks: tuple[PackedBlock, ...]
    fc_w: np.ndarray
    fc_b: np.ndarray
    _thresholds: tuple = field(default=(), init=False, repr=False)
    _weights: tuple = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        from ..kernels import binary as bk

        # run-time forms: fused BN+sign thresholds and the lut engine's tables (built once)
        object.__setattr__(self, "_thresholds", tuple(bk.bn_to_threshold(b.scale, b.shift) for b in self.blocks))
        object.__setattr__(self, "_weights", tuple(bk.prepare_weights(b.w_packed) for b in self.blocks))

    def weight_bytes(self) -> int:
        """Bytes of all weights (packed binary layers + real stem/classifier)."""
        arrays = [self.stem_w, self.stem_b, self.fc_w, self.fc_b]
        for b in self.blocks:
            arrays += [b.w_packed, b.scale, b.shift]
        return int(sum(a.nbytes for a in arrays))

    def _stem(self, x: np.ndarray) -> np.ndarray:
        # x [B, 1, H, W] -> NHWC [B, H, W, C]: a direct 3x3 conv with one input channel (numba)
        out = np.empty((x.shape[0], x.shape[2], x.shape[3], self.stem_w.shape[0]), dtype=np.float32)
        _stem_kernel()(np.ascontiguousarray(x[:, 0]), self.stem_w.reshape(self.stem_w.shape[0], 9), self.stem_b, out)
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[B, classes]`` for images ``[B, 1, H, W]`` (float32, normalized like training)."""
        from ..kernels import binary as bk

        x = np.asarray(x, dtype=np.float32)
        h = self._stem(x).astype(np.float32)
        packed = None
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            if self.kind == "xnor":
                if packed is None:
                    packed = bk.pack_bits(h)
                if i < n - 1:
                    thr, sgn = self._thresholds[i]
                    packed = bk.binary_conv2d_packed(packed, self._weights[i], blk.cin, thr, sgn, blk.stride, 1)
                else:
                    dot = bk.binary_conv2d(packed, self._weights[i], blk.cin, blk.stride, 1)
                    h = dot * blk.scale + blk.shift
            else:
                dot = bk.binary_conv2d(bk.pack_bits(h - blk.beta), self._weights[i], blk.cin, blk.stride, 1)
                y = dot * blk.scale + blk.shift
                y = y + _np_shortcut(h, blk.stride, blk.cout)
                gamma, slope, zeta = blk.rprelu
                y = y - gamma
                h = (np.where(y >= 0, y, y * slope) + zeta).astype(np.float32)
        return h.mean(axis=(1, 2)) @ self.fc_w.T + self.fc_b


_STEM = []


def _stem_kernel():
    """Compiled lazily so importing this module needs no numba."""
    if not _STEM:
        from numba import njit

        @njit(nogil=True, fastmath=True, cache=True)
        def stem(x, w, b, out):
            n, h, wd = x.shape
            o_n = w.shape[0]
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
                                    out[bi, y, xx, o] += v * w[o, dy * 3 + dx]

        _STEM.append(stem)
    return _STEM[0]


def _np_shortcut(h: np.ndarray, stride: int, cout: int) -> np.ndarray:
    if stride > 1:
        b, hh, ww, c = h.shape
        h = h[:, : hh // stride * stride, : ww // stride * stride].reshape(b, hh // stride, stride, ww // stride, stride, c).mean(axis=(2, 4))
    if cout == 2 * h.shape[-1]:
        h = np.concatenate([h, h], axis=-1)
    return h


def _fold_bn(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    inv = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    shift = bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * inv
    return inv, shift


def export_packed(model: MnistBNN) -> PackedBNN:
    """Fold batch norm and XNOR scales, pack the binary weights; the model must be fully
    binarized (step 2 of the recipe) and is read in eval mode."""
    from ..kernels import binary as bk

    if model.kind == "fp32":
        raise RecipeError("export_packed needs an xnor or reactnet MnistBNN; this one is fp32. Export it to ONNX instead.")
    for m in model.modules():
        if isinstance(m, _Binarized) and not (m.binarize_activations and m.binarize_weights):
            raise RecipeError("the model is not fully binarized; call set_binarization(model, activations=True, "
                              "weights=True) and finish training before export_packed.")
    s_scale, s_shift = _fold_bn(model.stem_bn)
    stem_w = (model.stem.weight.detach().double().numpy() * s_scale[:, None, None, None]).astype(np.float32)
    blocks = []
    for blk in model.blocks:
        conv = blk.conv
        w = conv.weight.detach().double()
        alpha = w.abs().mean(dim=(1, 2, 3)).numpy() if conv.scale_weights else np.ones(w.shape[0])
        bn_scale, bn_shift = _fold_bn(blk.bn)
        kw = {}
        if model.kind == "reactnet":
            act = blk.act
            kw = dict(
                beta=conv.rsign.beta.detach().numpy().reshape(-1).astype(np.float32),
                rprelu=tuple(p.detach().numpy().astype(np.float32) for p in (act.gamma, act.slope, act.zeta)),
                shortcut=True,
            )
        pb = PackedBlock(w_packed=bk.pack_conv_weight(w.numpy()), cin=blk.cin, cout=blk.cout, stride=blk.stride,
                         scale=bn_scale * alpha, shift=bn_shift, **kw)
        blocks.append(pb)
    return PackedBNN(
        kind=model.kind,
        stem_w=stem_w,
        stem_b=s_shift.astype(np.float32),
        blocks=tuple(blocks),
        fc_w=model.fc.weight.detach().numpy().astype(np.float32),
        fc_b=model.fc.bias.detach().numpy().astype(np.float32),
    )


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
    np.savez(path, **arrays)


def load_packed(path) -> PackedBNN:
    """Read a file written by :func:`save_packed`."""
    from ..errors import ModelLoadError

    try:
        z = np.load(path, allow_pickle=False)
        blocks = []
        for i in range(int(z["n_blocks"])):
            cin, cout, stride, shortcut = (int(v) for v in z[f"b{i}_meta"])
            rp = z[f"b{i}_rprelu"] if f"b{i}_rprelu" in z else None
            blocks.append(PackedBlock(w_packed=z[f"b{i}_w"], cin=cin, cout=cout, stride=stride, scale=z[f"b{i}_scale"],
                                      shift=z[f"b{i}_shift"], beta=z[f"b{i}_beta"] if f"b{i}_beta" in z else None,
                                      rprelu=tuple(rp) if rp is not None else None, shortcut=bool(shortcut)))
        return PackedBNN(kind=str(z["kind"]), stem_w=z["stem_w"], stem_b=z["stem_b"], blocks=tuple(blocks),
                         fc_w=z["fc_w"], fc_b=z["fc_b"])
    except (OSError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a packed BNN written by save_packed ({e}).") from e
