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
        return RecipeOutput(ctx.model, {"rewrites": ctx.rewrites})


@register_recipe("fp16")
class Fp16(Recipe):
    """All float tensors in fp16 with fp32 inputs/outputs (onnxruntime.transformers.float16), keeping in fp32 the
    nodes fp16 breaks (`keep=auto`).

    On x86 CPUs without AVX512-FP16 onnxruntime runs most fp16 ops through casts: the study measures whether that
    pays; its main gain is half the size. Some models break in fp16 (PP-OCRv4's DB detector: a BatchNormalization
    in its head turns a 0.3% error into 13x, 9K pixels flip). `keep=auto` runs the fp32 and the fp16 model on a
    few calibration inputs with every intermediate tensor exposed, finds the nodes where the relative error jumps
    (output error > 1% and > 10x their inputs' error) or whose fp32 values leave fp16's range, keeps those in fp32
    and repeats until the outputs agree (Olive's fp16 pass keeps a block list for the same reason, found by hand).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        keep_io_types: bool = True
        keep: str = "auto"  # auto | none
        max_rounds: int = 6

    def validate(self) -> None:
        from ..errors import InvalidParameterError

        if self.config.keep not in ("auto", "none"):
            raise InvalidParameterError(f"recipe option fp16:keep={self.config.keep!r} is not known. Use keep=auto or keep=none.")

    def _convert(self, model: onnx.ModelProto, block: list[str]) -> onnx.ModelProto:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            m = convert_float_to_float16(model, keep_io_types=self.config.keep_io_types, disable_shape_infer=False,
                                         node_block_list=block or None)
        except Exception as e:
            raise RecipeError(f"fp16 conversion failed: {str(e).splitlines()[0][:200]}") from None
        return toposort(_drop_fp16_round_trips(m)) if block else toposort(m)

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        block: list[str] = []
        m = self._convert(ctx.model, block)
        if self.config.keep == "none":
            return RecipeOutput(m)
        feeds = [f for _, f in zip(range(4), ctx.calib_feeds())]
        if not feeds:
            return RecipeOutput(m, {"fp32_nodes": []})
        ref = _all_float_tensors(ctx.model, feeds)
        producer = {o: n for n in ctx.model.graph.node for o in n.output}
        outputs = [o.name for o in ctx.model.graph.output]
        consumers: dict[str, list[str]] = {}
        for n in ctx.model.graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n.name)
        for name, v in ref.items():  # values fp16 cannot hold: their producer and every reader stay fp32
            if float(np.max(np.abs(v))) > 6.0e4:
                block += [n for n in [producer[name].name if name in producer else ""] + consumers.get(name, []) if n]
        history = []
        for _ in range(self.config.max_rounds):
            m = self._convert(ctx.model, sorted(set(block)))
            got = _all_float_tensors(m, feeds, names=list(ref))
            err = {k: _rel_err(ref[k], got[k]) for k in ref if k in got}
            out_err = max((err.get(o, 0.0) for o in outputs), default=0.0)
            history.append({"fp32_nodes": len(set(block)), "output_rel_err": round(out_err, 5)})
            if out_err <= 0.01:
                break
            jumps = []
            for n in ctx.model.graph.node:
                if not n.name or n.name in block or not n.output or n.output[0] not in err:
                    continue
                e_out = err[n.output[0]]
                e_in = max((err.get(i, 0.0) for i in n.input if i in err), default=0.0)
                if e_out > 0.01 and e_out > 10 * max(e_in, 1e-4):
                    jumps.append(n.name)
            if not jumps:
                break
            block += jumps
        return RecipeOutput(m, {"fp32_nodes": sorted(set(block)), "fp16_search": history})


def _drop_fp16_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Cast(fp16) -> Cast(fp32) pairs. onnxruntime's converter wraps every blocked node on its own, so two
    neighbouring fp32 nodes still talk through an fp16 tensor (a 1e5 value becomes inf between them); where the fp16
    tensor feeds only casts back to fp32 (and is no graph output), the round trip is dropped."""
    g = model.graph
    outputs = {o.name for o in g.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def cast_to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rename: dict[str, str] = {}
    drop: set[int] = set()
    for n in g.node:
        if cast_to(n) != TensorProto.FLOAT16 or n.output[0] in outputs:
            continue
        readers = users.get(n.output[0], [])
        if readers and all(cast_to(r) == TensorProto.FLOAT and r.output[0] not in outputs for r in readers):
            drop.add(id(n))
            for r in readers:
                drop.add(id(r))
                rename[r.output[0]] = n.input[0]
    if not drop:
        return model
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for k, i in enumerate(n.input):
            while i in rename:
                i = rename[i]
            n.input[k] = i
    del g.node[:]
    g.node.extend(keep)
    return model


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return 0.0
    if not np.all(np.isfinite(b)):
        return float("inf")
    na = np.linalg.norm(a)
    d = np.linalg.norm(a - b)
    return 0.0 if d == 0 else float(d / na) if na > 0 else float("inf")


def _all_float_tensors(model: onnx.ModelProto, feeds: list[dict], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every node output of `model` on `feeds` (float ones, concatenated over feeds along a flat axis)."""
    from ..model import run_all_tensors

    produced = [o for n in model.graph.node for o in n.output if o]
    names = produced if names is None else [k for k in names if k in set(produced)]
    acc: dict[str, list[np.ndarray]] = {}
    for f in feeds:
        vals = run_all_tensors(model, f, names)
        for k, v in vals.items():
            if np.issubdtype(np.asarray(v).dtype, np.floating):
                acc.setdefault(k, []).append(np.asarray(v, np.float32).ravel())
    return {k: np.concatenate(v) for k, v in acc.items() if len({x.size for x in v}) >= 1}


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
        # onnxruntime folds the Cast of each initializer when the session loads: the graph it runs is the fp32
        # recipe's, with weights rounded to bf16. The study treats the two as one speed class.
        return RecipeOutput(m, {"bf16_tensors": len(casts), "same_compute_as_recipe": "fp32",
                                "note": "bf16 weights, widened to fp32 when the session loads: fp32 compute, half the file"})
