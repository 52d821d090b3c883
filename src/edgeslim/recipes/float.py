"""Float recipes: the model as given, the graph-optimized fp32 model, fp16 and bf16 weight storage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import RecipeError
from ..graph import toposort
from . import register_recipe
from .base import Recipe, RecipeContext, RecipeOutput


@register_recipe("original")
class Original(Recipe):
    """The model exactly as given: the baseline every candidate is measured against."""

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        return RecipeOutput(ctx.original)


@register_recipe("fp32")
class Fp32(Recipe):
    """The prepared model: constants as initializers, opset 17, exact fusions (see `edgeslim.graph`)."""

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        return RecipeOutput(ctx.model, {"rewrites": ctx.cache.get("rewrites", {})})


@register_recipe("fp16")
class Fp16(Recipe):
    """All float tensors in fp16 with fp32 inputs/outputs (onnxruntime.transformers.float16).

    On x86 CPUs without AVX512-FP16 onnxruntime runs most fp16 ops through casts: the study measures whether
    that pays; its main gain is half the size.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        keep_io_types: bool = True

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            m = convert_float_to_float16(ctx.model, keep_io_types=self.config.keep_io_types, disable_shape_infer=False)
        except Exception as e:
            raise RecipeError(f"fp16 conversion failed: {str(e).splitlines()[0][:200]}") from None
        return RecipeOutput(toposort(m))


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(x)
    rounded = np.where(nan, (u >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def from_bfloat16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


@register_recipe("bf16")
class Bf16(Recipe):
    """Weights stored as bfloat16 and widened to fp32 for compute (the ncnn bf16-storage idea).

    onnxruntime's CPU provider has no bf16 Conv/MatMul kernels, so "true bf16 compute" is not available on this
    runtime; the Cast nodes are constant-folded when the session loads, so compute runs in fp32 at fp32 speed and
    the file is half the size. Engines with bf16 arithmetic (ncnn, MNN lowBF16) are where bf16 buys speed.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        min_elements: int = 16  # small tensors (shapes, scalars) stay fp32

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        m = onnx.ModelProto()
        m.CopyFrom(ctx.model)
        new_init, casts = [], []
        for t in m.graph.initializer:
            if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims or [1])) >= self.config.min_elements:
                bits = to_bfloat16_bits(numpy_helper.to_array(t))
                bt = helper.make_tensor(t.name + "_bf16", TensorProto.BFLOAT16, list(t.dims), bits.tobytes(), raw=True)
                new_init.append(bt)
                casts.append(helper.make_node("Cast", [bt.name], [t.name], to=TensorProto.FLOAT, name=t.name + "_widen"))
            else:
                new_init.append(t)
        del m.graph.initializer[:]
        m.graph.initializer.extend(new_init)
        nodes = casts + list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        return RecipeOutput(m, {"bf16_tensors": len(casts)})
