"""Weight-only quantization: int8 or int4 weights (per output channel, symmetric), fp32 activations and compute.

Written here rather than with onnxruntime's `MatMulNBitsQuantizer` because that one covers MatMul only, and
the convolutions hold most of the weights of vision models. Each weight becomes an integer initializer plus a
`DequantizeLinear` (int4 needs opset 21). The file shrinks ~4x/~8x; speed stays near fp32. `block=32` gives one
scale per 32 input channels (DequantizeLinear-21's blocked layout) instead of one per output channel: finer at 4
bits, though on PP-OCRv4's recognizer even block-wise int4 still loses most of the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import _prune_initializers, opset_of, upgrade_opset
from . import register_recipe
from .base import Recipe, RecipeContext, RecipeOutput


def quantize_weight(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel: returns (integer weights, scale per channel along `axis`)."""
    qmax = 2 ** (bits - 1) - 1
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax - 1, qmax).astype(np.int8)
    return q, scale


def quantize_weight_blocked(w: np.ndarray, bits: int, axis: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric, one scale per `block` consecutive elements along `axis` (the reduction axis) for every position of
    the other axes: DequantizeLinear-21's blocked layout (scale shaped like `w` with `axis` cut to ceil(n / block)).
    Per-channel int4 collapses PP-OCRv4 (CER 1.0): one scale over a whole filter is too coarse at 4 bits."""
    qmax = 2 ** (bits - 1) - 1
    n = w.shape[axis]
    nb = -(-n // block)
    wm = np.moveaxis(w, axis, 0)
    pad = nb * block - n
    wp = np.concatenate([wm, np.zeros((pad, *wm.shape[1:]), w.dtype)]) if pad else wm
    blocks = wp.reshape(nb, block, *wm.shape[1:])
    amax = np.abs(blocks).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(blocks / scale[:, None]), -qmax - 1, qmax).astype(np.int8).reshape(nb * block, *wm.shape[1:])[:n]
    return np.moveaxis(q, 0, axis), np.moveaxis(scale, 0, axis)


def _int4_tensor(name: str, q: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT4, list(q.shape), q.flatten().tolist())


class WeightOnly(Recipe):
    bits = 8

    @dataclass(frozen=True, kw_only=True)
    class Config:
        min_elements: int = 1024
        # >0: one scale per `block` input channels (the reduction axis) instead of one per output channel
        block: int = 0

    def validate(self) -> None:
        from ..errors import InvalidParameterError

        if self.config.block < 0 or (self.config.block and self.config.block & (self.config.block - 1)):
            raise InvalidParameterError(f"recipe option {self.registered_name}:block={self.config.block} must be 0 "
                                        "(per channel) or a power of two such as 32.")
        if self.config.min_elements < 1:
            raise InvalidParameterError(f"recipe option {self.registered_name}:min_elements={self.config.min_elements} "
                                        "must be 1 or more.")

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        m = onnx.ModelProto()
        m.CopyFrom(ctx.model)
        if (self.bits == 4 or self.config.block) and opset_of(m) < 21:
            m = upgrade_opset(m, 21)
        init = {t.name: t for t in m.graph.initializer}
        axis_of: dict[str, int] = {}
        for n in m.graph.node:
            if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1] in init:
                axis_of.setdefault(n.input[1], 0 if n.op_type == "Conv" else 1)
            elif n.op_type == "MatMul" and n.input[1] in init and len(init[n.input[1]].dims) == 2:
                axis_of.setdefault(n.input[1], 1)
            elif n.op_type == "Gemm" and n.input[1] in init:
                tb = any(a.name == "transB" and a.i for a in n.attribute)
                axis_of.setdefault(n.input[1], 0 if tb else 1)
        nodes, count = [], 0
        for name, axis in axis_of.items():
            t = init[name]
            if t.data_type != TensorProto.FLOAT or int(np.prod(t.dims)) < self.config.min_elements:
                continue
            w = numpy_helper.to_array(t)
            red = 1 - axis if w.ndim == 2 else 1  # the reduction axis: input channels (Conv), K (MatMul)
            blocked = self.config.block and w.shape[red] >= self.config.block
            if blocked:
                q, scale = quantize_weight_blocked(w, self.bits, red, self.config.block)
                attrs = {"axis": red, "block_size": self.config.block}
            else:
                q, scale = quantize_weight(w, self.bits, axis)
                attrs = {"axis": axis}
            qname, sname = name + f"_w{self.bits}", name + "_scale"
            qt = _int4_tensor(qname, q) if self.bits == 4 else numpy_helper.from_array(q, qname)
            m.graph.initializer.extend([qt, numpy_helper.from_array(scale, sname)])
            nodes.append(helper.make_node("DequantizeLinear", [qname, sname], [name], name=name + "_dq", **attrs))
            count += 1
        keep = [t for t in m.graph.initializer if t.name not in {n.output[0] for n in nodes}]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
        all_nodes = nodes + list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(all_nodes)
        _prune_initializers(m)
        return RecipeOutput(m, {"quantized_weights": count, "bits": self.bits, "block": self.config.block})


@register_recipe("w8")
class W8(WeightOnly):
    bits = 8


@register_recipe("w4")
class W4(WeightOnly):
    bits = 4
