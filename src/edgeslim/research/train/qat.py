"""Quantization-aware training: LSQ fake quantization and export to ONNX QDQ.

:class:`LsqQuantizer` fake-quantizes with a learnable step size (Esser et al., "Learned Step
Size Quantization", ICLR 2020): ``y = clamp(round(x / s), qmin, qmax) * s`` with the
straight-through estimator for ``round`` and LSQ's gradient scale ``1 / sqrt(numel * qmax)``
on ``s``. Weights are quantized per output channel (symmetric int8), activations per tensor
(int8, or uint8 when non-negative).

:func:`prepare_qat` swaps ``nn.Conv2d`` / ``nn.Linear`` for :class:`QConv2d` / :class:`QLinear`;
:func:`export_qdq` exports the trained model with ``QuantizeLinear``/``DequantizeLinear`` pairs
(weights per-channel, ``axis=0``) that onnxruntime fuses into int8 kernels. Inside
:func:`export_mode` the quantizers switch to ``torch.fake_quantize_*`` ops, numerically the same
as training, which the ONNX exporter maps onto QDQ nodes.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import onnx
import torch
from torch import nn

from ...errors import InvalidParameterError, NotFittedError, RecipeError

__all__ = ["QatConfig", "LsqQuantizer", "QConv2d", "QLinear", "prepare_qat", "export_mode", "export_qdq"]


@dataclass(frozen=True, kw_only=True)
class QatConfig:
    """Which layers to quantize and how.

    >>> QatConfig().weight_bits
    8
    """

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    skip: tuple[str, ...] = ()  # module names left in float

    def __post_init__(self) -> None:
        # ONNX QuantizeLinear stores int8/uint8, so the exportable range is 8 bits or fewer
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= 8:
                raise InvalidParameterError(f"QatConfig.{name}={bits}; use 2..8 (QDQ export stores int8/uint8).")


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return (x - x * g).detach() + x * g


_EXPORT = {"on": False}


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Make every :class:`LsqQuantizer` run as ``torch.fake_quantize_*`` (exportable to QDQ)."""
    prev = _EXPORT["on"]
    _EXPORT["on"] = True
    try:
        yield
    finally:
        _EXPORT["on"] = prev


class LsqQuantizer(nn.Module):
    """LSQ fake quantizer; ``axis`` set means one learnable step per slice along that axis.

    The step ``scale`` is initialized from the first batch it sees (``2 * mean|x| / sqrt(qmax)``);
    ``initialized_`` records that.

    >>> q = LsqQuantizer(bits=8, signed=True)
    >>> y = q(torch.tensor([0.0, 0.5, -1.0]))
    >>> bool(q.initialized_)
    True
    """

    def __init__(self, *, bits: int = 8, signed: bool = True, axis: int | None = None, channels: int = 1) -> None:
        super().__init__()
        self.bits, self.signed, self.axis = bits, signed, axis
        if signed:
            self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2**bits - 1
        self.scale = nn.Parameter(torch.ones(channels if axis is not None else 1))
        self.register_buffer("initialized_", torch.tensor(False))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.axis is None:
            return (1,) * x.dim() if x.dim() else ()
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return tuple(shape)

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        if self.axis is None:
            s = 2 * x.abs().mean() / math.sqrt(self.qmax)
            self.scale.fill_(float(s.clamp_min(1e-8)))
        else:
            dims = [d for d in range(x.dim()) if d != self.axis]
            s = 2 * x.abs().mean(dim=dims) / math.sqrt(self.qmax)
            self.scale.copy_(s.clamp_min(1e-8))
        self.initialized_.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_EXPORT["on"] or bool(self.initialized_)):
            if not self.training:
                raise NotFittedError("LsqQuantizer has not seen data; run a training (or calibration) batch first.")
            self._init(x)
        scale = self.scale.abs().clamp_min(1e-8)
        if _EXPORT["on"]:
            # rebuilt from Python floats so the tracer records a constant, not ops on the parameter
            scale = torch.tensor(scale.detach().tolist(), dtype=torch.float32)
            zp = torch.zeros(scale.shape, dtype=torch.int32)
            if self.axis is None:
                return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)
            return torch.fake_quantize_per_channel_affine(x, scale, zp, self.axis, self.qmin, self.qmax)
        g = 1.0 / math.sqrt(x.numel() / scale.numel() * self.qmax)
        s = _grad_scale(scale, g).view(self._shape(x))
        # clip, then round (LSQ): values beyond the grid get no gradient, the step gets qmin/qmax
        return _round_ste(torch.clamp(x / s, self.qmin, self.qmax)) * s


class QConv2d(nn.Conv2d):
    """Conv2d with LSQ fake-quantized input (per tensor) and weight (per output channel)."""

    def __init__(self, *args, config: QatConfig = QatConfig(), signed_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_q = LsqQuantizer(bits=config.activation_bits, signed=signed_input)
        self.weight_q = LsqQuantizer(bits=config.weight_bits, signed=True,
                                     axis=0 if config.per_channel else None, channels=self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_q(x), self.weight_q(self.weight), self.bias)


class QLinear(nn.Linear):
    """Linear with LSQ fake-quantized input (per tensor) and weight (per output channel)."""

    def __init__(self, *args, config: QatConfig = QatConfig(), signed_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_q = LsqQuantizer(bits=config.activation_bits, signed=signed_input)
        self.weight_q = LsqQuantizer(bits=config.weight_bits, signed=True,
                                     axis=0 if config.per_channel else None, channels=self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_q(x), self.weight_q(self.weight), self.bias)


def prepare_qat(model: nn.Module, config: QatConfig | None = None) -> nn.Module:
    """Replace (in place) every ``nn.Conv2d``/``nn.Linear`` not named in ``config.skip`` by its
    fake-quantized twin with the same weights; returns ``model``."""
    cfg = config or QatConfig()
    swaps = []
    for name, mod in model.named_modules():
        if name in cfg.skip or isinstance(mod, (QConv2d, QLinear)):
            continue
        if type(mod) is nn.Conv2d:
            q = QConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                        dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                        padding_mode=mod.padding_mode, config=cfg)
        elif type(mod) is nn.Linear:
            q = QLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, config=cfg)
        else:
            continue
        q.load_state_dict(mod.state_dict(), strict=False)
        swaps.append((name, q))
    if not swaps:
        raise RecipeError("prepare_qat found no nn.Conv2d or nn.Linear to quantize in this model.")
    for name, q in swaps:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], q)
    return model


def export_qdq(model: nn.Module, example: torch.Tensor, *, opset: int = 17,
               input_names: tuple[str, ...] = ("input",), output_names: tuple[str, ...] = ("output",),
               dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export a trained QAT model to an in-memory ONNX model with QDQ nodes.

    Needs every quantizer initialized (train or run a batch in train mode first).
    """
    if opset < 13:
        raise InvalidParameterError(f"opset={opset}; per-channel QuantizeLinear needs opset >= 13.")
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    if not quantizers:
        raise RecipeError("the model has no fake quantizers; call prepare_qat and train before export_qdq.")
    if not all(bool(q.initialized_) for q in quantizers):
        raise NotFittedError("some quantizers have not seen data; run at least one training batch before export_qdq.")
    was_training = model.training
    model.eval()
    f = io.BytesIO()
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
    try:
        with export_mode(), torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter warns about its own deprecation and about constants it traces
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), f, dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes)
    finally:
        model.train(was_training)
    proto = _constants_to_initializers(onnx.load_from_string(f.getvalue()))
    onnx.checker.check_model(proto)
    return proto


def _constants_to_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move tensor-valued ``Constant`` nodes (QDQ scales and zero points) into initializers,
    where graph tools and onnxruntime's QDQ fusion look for them."""
    keep = []
    for node in proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            t = onnx.TensorProto()
            t.CopyFrom(attrs["value"].t)
            t.name = node.output[0]
            proto.graph.initializer.append(t)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto
