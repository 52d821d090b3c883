"""A weight-sharing supernet over :class:`~edgeslim.research.nas.space.SearchSpace` and the export of its subnets.

Every block position holds the largest weights it can need (max input channels x max expansion, the 7x7 depthwise
kernel, max output channels); a subnet uses the leading channels and the centred k x k window of the depthwise
kernel (Once-for-All's elastic kernel and width, Cai et al., ICLR 2020), so a subnet's weights are views of the
supernet's and training any subnet trains the shared weights (CARS, Yang et al., CVPR 2020).

Batch norm is shared the same way; its running statistics do not fit every subnet at once, so
:func:`calibrate_bn` recomputes them for one subnet from a batch of training images before it is evaluated or
exported. :class:`SubNet` is a standalone module holding copies of one subnet's weights; its forward is the same
function the supernet runs, so the exported ONNX model computes what the supernet computes for that subnet.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np  # noqa: F401  (the doctests use it)
import torch
import torch.nn.functional as F
from torch import nn

from .space import Arch, BlockSpec, SearchSpace

__all__ = ["SuperNet", "SubNet", "BlockWeights", "calibrate_bn", "export_onnx", "count_params", "evaluate_arch"]

BN_EPS = 1e-5


@dataclass
class BN:
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


@dataclass
class BlockWeights:
    """Weights of one active block: tensors that are views into a supernet, or a SubNet's own parameters."""

    expand: torch.Tensor | None
    bn1: BN | None
    dw: torch.Tensor
    bn2: BN
    project: torch.Tensor
    bn3: BN


def _bn(x: torch.Tensor, bn: BN, mode: str) -> torch.Tensor:
    # mode "train": batch statistics, running stats untouched (they are recomputed per subnet by calibrate_bn);
    # "calib": batch statistics written into the running stats (momentum 1: exactly this batch's);
    # "eval": running statistics.
    if mode == "eval":
        return F.batch_norm(x, bn.mean, bn.var, bn.weight, bn.bias, False, 0.0, BN_EPS)
    if mode == "calib":
        return F.batch_norm(x, bn.mean, bn.var, bn.weight, bn.bias, True, 1.0, BN_EPS)
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, BN_EPS)


def block_forward(x: torch.Tensor, spec: BlockSpec, w: BlockWeights, mode: str) -> torch.Tensor:
    """One inverted-residual block: [1x1 expand, BN, ReLU6], kxk depthwise, BN, ReLU6, 1x1 project, BN, (+ x)."""
    h = x
    if w.expand is not None:
        h = F.relu6(_bn(F.conv2d(h, w.expand), w.bn1, mode))
    h = F.conv2d(h, w.dw, stride=spec.stride, padding=spec.kernel // 2, groups=spec.hidden)
    h = F.relu6(_bn(h, w.bn2, mode))
    h = _bn(F.conv2d(h, w.project), w.bn3, mode)
    return h + x if spec.residual else h


def _slice_bn(m: nn.BatchNorm2d, c: int) -> BN:
    return BN(m.weight[:c], m.bias[:c], m.running_mean[:c], m.running_var[:c])


class _SuperBlock(nn.Module):
    def __init__(self, cin_max: int, cout_max: int, max_e: int, max_k: int) -> None:
        super().__init__()
        hid = cin_max * max_e
        self.expand = nn.Parameter(torch.empty(hid, cin_max, 1, 1))
        self.dw = nn.Parameter(torch.empty(hid, 1, max_k, max_k))
        self.project = nn.Parameter(torch.empty(cout_max, hid, 1, 1))
        for p in (self.expand, self.dw, self.project):
            nn.init.kaiming_normal_(p, mode="fan_out")
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(hid), nn.BatchNorm2d(hid), nn.BatchNorm2d(cout_max)
        self.max_k = max_k

    def weights(self, spec: BlockSpec) -> BlockWeights:
        """Views of the shared weights for ``spec`` (leading channels, centred kernel window)."""
        o = (self.max_k - spec.kernel) // 2
        hid = spec.hidden
        has_expand = spec.expand > 1
        return BlockWeights(
            expand=self.expand[:hid, :spec.cin] if has_expand else None,
            bn1=_slice_bn(self.bn1, hid) if has_expand else None,
            dw=self.dw[:hid, :, o:o + spec.kernel, o:o + spec.kernel],
            bn2=_slice_bn(self.bn2, hid),
            project=self.project[:spec.cout, :hid],
            bn3=_slice_bn(self.bn3, spec.cout))


class SuperNet(nn.Module):
    """All subnets of ``space`` in one module; ``forward(x, arch)`` runs one of them.

    >>> from edgeslim.research.nas.space import mnist_space
    >>> net = SuperNet(mnist_space())
    >>> arch = net.space.sample(np.random.default_rng(0))
    >>> net(torch.zeros(2, 3, 28, 28), arch).shape
    torch.Size([2, 10])
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.stem = nn.Parameter(torch.empty(space.stem_width, space.in_channels, 3, 3))
        nn.init.kaiming_normal_(self.stem, mode="fan_out")
        self.stem_bn = nn.BatchNorm2d(space.stem_width)
        max_e, max_k = max(space.expansions), max(space.kernels)
        self.blocks = nn.ModuleList()
        cin_max = space.stem_width
        for s, st in enumerate(space.stages):
            cout_max = space.max_channels(s)
            stage = nn.ModuleList()
            for d in range(st.max_depth):
                # the first block of a stage may receive any width of the previous stage: size it for the largest
                stage.append(_SuperBlock(cin_max if d == 0 else cout_max, cout_max, max_e, max_k))
            self.blocks.append(stage)
            cin_max = cout_max
        self.fc_w = nn.Parameter(torch.empty(space.num_classes, cin_max))
        self.fc_b = nn.Parameter(torch.zeros(space.num_classes))
        nn.init.normal_(self.fc_w, std=0.01)
        self.mode = "train"

    def subnet_weights(self, arch: Arch) -> dict:
        """Every tensor ``arch`` uses, as views of this supernet's parameters and buffers."""
        blocks = self.space.blocks(arch)
        cout = blocks[-1][-1].cout
        return {
            "stem": self.stem, "stem_bn": _slice_bn(self.stem_bn, self.space.stem_width),
            "blocks": [[self.blocks[s][d].weights(b) for d, b in enumerate(stage)] for s, stage in enumerate(blocks)],
            "fc_w": self.fc_w[:, :cout], "fc_b": self.fc_b, "specs": blocks}

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        mode = self.mode if self.training else "eval"
        return net_forward(x, self.space, self.subnet_weights(arch), mode)


def net_forward(x: torch.Tensor, space: SearchSpace, w: dict, mode: str) -> torch.Tensor:
    h = F.conv2d(x, w["stem"], stride=space.stem_stride, padding=1)
    h = F.relu6(_bn(h, w["stem_bn"], mode))
    for stage, ws in zip(w["specs"], w["blocks"]):
        for spec, bw in zip(stage, ws):
            h = block_forward(h, spec, bw, mode)
    return F.linear(h.mean(dim=(2, 3)), w["fc_w"], w["fc_b"])


@torch.no_grad()
def calibrate_bn(net: SuperNet, arch: Arch, x: torch.Tensor) -> None:
    """Set the running statistics of the batch norms ``arch`` uses to those of ``x`` (one batch of training
    images); shared statistics fit no subnet in particular, so this runs before evaluating or exporting one."""
    was = net.training
    net.train()
    net.mode = "calib"
    try:
        net(x, arch)
    finally:
        net.mode = "train"
        net.train(was)


def _copy_bn(bn: BN, prefix: str, params: nn.ParameterDict, buffers: dict) -> BN:
    params[prefix + "_w"] = nn.Parameter(bn.weight.detach().clone())
    params[prefix + "_b"] = nn.Parameter(bn.bias.detach().clone())
    buffers[prefix + "_m"] = bn.mean.detach().clone()
    buffers[prefix + "_v"] = bn.var.detach().clone()
    return BN(params[prefix + "_w"], params[prefix + "_b"], buffers[prefix + "_m"], buffers[prefix + "_v"])


class SubNet(nn.Module):
    """One architecture as a standalone module: copies of the supernet's views, the supernet's forward.

    Trainable on its own (fine-tuning of a front member); ``eval()`` uses the running statistics.
    """

    def __init__(self, net: SuperNet, arch: Arch) -> None:
        super().__init__()
        self.space, self.arch = net.space, net.space.canonical(arch)
        src = net.subnet_weights(self.arch)
        self.p = nn.ParameterDict()
        buffers: dict[str, torch.Tensor] = {}
        self.p["stem"] = nn.Parameter(src["stem"].detach().clone())
        self._bn = {"stem_bn": _copy_bn(src["stem_bn"], "stem_bn", self.p, buffers)}
        self.specs = src["specs"]
        self._blocks_meta = []
        for s, stage in enumerate(src["blocks"]):
            for d, bw in enumerate(stage):
                k = f"b{s}_{d}"
                if bw.expand is not None:
                    self.p[k + "_expand"] = nn.Parameter(bw.expand.detach().clone())
                    _copy_bn(bw.bn1, k + "_bn1", self.p, buffers)
                self.p[k + "_dw"] = nn.Parameter(bw.dw.detach().clone())
                self.p[k + "_project"] = nn.Parameter(bw.project.detach().clone())
                _copy_bn(bw.bn2, k + "_bn2", self.p, buffers)
                _copy_bn(bw.bn3, k + "_bn3", self.p, buffers)
                self._blocks_meta.append((s, d, bw.expand is not None))
        self.p["fc_w"] = nn.Parameter(src["fc_w"].detach().clone())
        self.p["fc_b"] = nn.Parameter(src["fc_b"].detach().clone())
        for name, t in buffers.items():
            self.register_buffer(name, t)

    def _bnw(self, k: str) -> BN:
        return BN(self.p[k + "_w"], self.p[k + "_b"], getattr(self, k + "_m"), getattr(self, k + "_v"))

    def weights(self) -> dict:
        blocks: list[list[BlockWeights]] = [[] for _ in self.specs]
        for s, d, has_expand in self._blocks_meta:
            k = f"b{s}_{d}"
            blocks[s].append(BlockWeights(
                expand=self.p[k + "_expand"] if has_expand else None, bn1=self._bnw(k + "_bn1") if has_expand else None,
                dw=self.p[k + "_dw"], bn2=self._bnw(k + "_bn2"), project=self.p[k + "_project"],
                bn3=self._bnw(k + "_bn3")))
        return {"stem": self.p["stem"], "stem_bn": self._bnw("stem_bn"), "blocks": blocks, "fc_w": self.p["fc_w"],
                "fc_b": self.p["fc_b"], "specs": self.specs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training a standalone subnet updates its running statistics the usual way (momentum 0.1)
        if self.training:
            w = self.weights()
            return _forward_train_running(x, self.space, w)
        return net_forward(x, self.space, self.weights(), "eval")


def _forward_train_running(x: torch.Tensor, space: SearchSpace, w: dict) -> torch.Tensor:
    def bn(h, b):
        return F.batch_norm(h, b.mean, b.var, b.weight, b.bias, True, 0.1, BN_EPS)

    h = F.relu6(bn(F.conv2d(x, w["stem"], stride=space.stem_stride, padding=1), w["stem_bn"]))
    for stage, ws in zip(w["specs"], w["blocks"]):
        for spec, bw in zip(stage, ws):
            y = h
            if bw.expand is not None:
                y = F.relu6(bn(F.conv2d(y, bw.expand), bw.bn1))
            y = F.relu6(bn(F.conv2d(y, bw.dw, stride=spec.stride, padding=spec.kernel // 2, groups=spec.hidden), bw.bn2))
            y = bn(F.conv2d(y, bw.project), bw.bn3)
            h = y + h if spec.residual else y
    return F.linear(h.mean(dim=(2, 3)), w["fc_w"], w["fc_b"])


def count_params(space: SearchSpace, arch: Arch) -> int:
    """Parameters of the deployed subnet (batch norm folded into the convolutions: one bias per channel)."""
    n = space.stem_width * space.in_channels * 9 + space.stem_width
    for stage in space.blocks(arch):
        for b in stage:
            if b.expand > 1:
                n += b.hidden * b.cin + b.hidden
            n += b.hidden * b.kernel * b.kernel + b.hidden + b.cout * b.hidden + b.cout
    return n + space.num_classes * (space.blocks(arch)[-1][-1].cout + 1)


def export_onnx(model: nn.Module, space: SearchSpace, batch: int | None = 1, opset: int = 17) -> bytes:
    """ONNX bytes of a :class:`SubNet` (eval mode): input ``input`` [N, C, H, W], output ``logits``.

    ``batch=None`` makes the batch dimension dynamic (what ``edgeslim optimize`` feeds in batches)."""
    model.eval()
    f = io.BytesIO()
    x = torch.zeros(batch or 1, space.in_channels, space.image_size, space.image_size)
    dyn = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(model, (x,), f, dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["logits"], dynamic_axes=dyn)
    return f.getvalue()


@torch.no_grad()
def evaluate_arch(net: SuperNet, arch: Arch, x_calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 1000) -> float:
    """Top-1 of ``arch`` with the shared weights, after :func:`calibrate_bn` on ``x_calib``."""
    calibrate_bn(net, arch, x_calib)
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i:i + batch_size], arch).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(1, len(x))
