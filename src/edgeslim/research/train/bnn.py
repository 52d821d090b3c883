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
  the numba kernels of :mod:`edgeslim.research.kernels.binary` (batch norm folded into integer thresholds).
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidParameterError, RecipeError
from ..kernels.packed_bnn import PackedBlock, PackedBNN, load_packed, save_packed  # noqa: F401  (re-exported)
from ...registry import Registry

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
    (Bi-Real) -> RPReLU. Where the shape changes the shortcut is average-pooled, then either channel-duplicated
    (``downsample="pool"``, no parameters) or passed through a real 1x1 conv + BN (``downsample="proj"``, the
    real-valued downsampling shortcut of Bi-Real Net and ReActNet's ResNet variant).
    """

    def __init__(self, cin: int, cout: int, stride: int, kind: str, downsample: str = "pool") -> None:
        super().__init__()
        BNN_KINDS.get(kind)
        if downsample not in ("pool", "proj"):
            raise InvalidParameterError(f"downsample={downsample!r} is not one of ['pool', 'proj'].")
        if kind == "reactnet" and downsample == "pool" and cout not in (cin, 2 * cin):
            raise InvalidParameterError(f"a reactnet Block needs cout == cin or 2*cin for its shortcut; got {cin} -> {cout}.")
        self.kind, self.cin, self.cout, self.stride = kind, cin, cout, stride
        self.proj = None
        if kind == "reactnet" and downsample == "proj" and (stride > 1 or cout != cin):
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
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
        if self.proj is not None:
            return self.proj(x)
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
                 strides: tuple[int, ...] = (2, 1, 2, 1), num_classes: int = 10, downsample: str = "pool") -> None:
        super().__init__()
        BNN_KINDS.get(kind)
        if len(strides) != len(widths) - 1:
            raise InvalidParameterError(f"need one stride per block: {len(widths) - 1}; got {len(strides)}.")
        self.kind = kind
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_act = nn.ReLU() if kind == "fp32" else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(widths[i], widths[i + 1], strides[i], kind, downsample) for i in range(len(strides))
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_act(self.stem_bn(self.stem(x)))
        for b in self.blocks:
            h = b(h)
        return self.fc(h.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------- packed export
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
            if blk.proj is not None:  # real 1x1 conv + BN of the downsampling shortcut, BN folded: [O, C] and [O]
                p_scale, p_shift = _fold_bn(blk.proj[1])
                pw = blk.proj[0].weight.detach().double().numpy()[:, :, 0, 0] * p_scale[:, None]
                kw["proj"] = (pw.astype(np.float32), p_shift.astype(np.float32))
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


