"""Mixed precision found automatically: int8 everywhere except the nodes that hurt accuracy most.

This is the white/black-list idea of automatic mixed precision (PaddlePaddle AMP; NVIDIA's AMP op lists), with
the black list found by measurement instead of written by hand:

1. White list: quantize the GEMM-shaped nodes (dense convolutions, MatMul, Gemm) with the best calibrator;
   depthwise convolutions stay fp32 (`scope=gemm`: int8 does not pay there on onnxruntime's CPU provider).
2. Sensitivity of each quantized node: feed it the fp32 model's own inputs on calibration data, run it with its
   int8 weights and quantized input, and compare its output with fp32 -> SQNR in dB (local, so one node's error
   is not blamed on the nodes after it).
3. Black list: keep the least-SQNR nodes in fp32, doubling their number, until on the calibration lines the
   metric drops by at most budget/2 and the output differs from fp32's by at most 2 x budget (CER vs fp32 text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import toposort
from ..model import run_all_tensors
from . import register_recipe
from .base import Recipe, RecipeContext, RecipeOutput
from .int8 import best_calibrated, calibrated_ranges, outside_scope, quantize_qdq


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    noise = float(np.sum((ref - test) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return 200.0
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def _node_subgraph(qmodel: onnx.ModelProto, node: onnx.NodeProto) -> tuple[onnx.ModelProto, list[str]] | None:
    """The QDQ node with the Q->DQ pairs on its activation inputs and the DQ on its weights, as a small model
    whose inputs are the float tensors before those Q nodes."""
    from onnx import helper

    prod = {o: n for n in qmodel.graph.node for o in n.output}
    init = {t.name for t in qmodel.graph.initializer}
    needed, inputs = [], []
    for i in node.input:
        if not i or i in init:
            continue
        dq = prod.get(i)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        if dq.input[0] in init:  # a quantized weight or bias
            needed.append(dq)
            continue
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        needed += [q, dq]
        inputs.append(q.input[0])
    if not inputs:
        return None
    needed.append(node)
    names = {i for n in needed for i in n.input}
    inits = [t for t in qmodel.graph.initializer if t.name in names]
    g = helper.make_graph(needed, "node", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in dict.fromkeys(inputs)],
                          [helper.make_empty_tensor_value_info(node.output[0])], inits)
    m = helper.make_model(g, opset_imports=qmodel.opset_import, ir_version=qmodel.ir_version)
    return m, list(dict.fromkeys(inputs))


def node_sensitivity(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                     op_types: tuple[str, ...]) -> list[dict]:
    """Local SQNR (dB) of each quantized node of `qmodel`, lowest (most sensitive) first."""
    import onnxruntime as ort

    qnodes = [n for n in qmodel.graph.node if n.op_type in op_types]
    subs = {}
    for n in qnodes:
        s = _node_subgraph(qmodel, n)
        if s is not None:
            subs[n.name] = (toposort(s[0]), s[1], n)
    fp32_names = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}

    def ref(name: str) -> str:
        # the quantizer renames a graph output X it quantizes to X_QuantizeLinear_Input
        base = name.removesuffix("_QuantizeLinear_Input")
        return name if name in fp32_names else base

    wanted = sorted({ref(x) for _, xs, _ in subs.values() for x in xs} | {ref(n.output[0]) for _, _, n in subs.values()})
    wanted = [w for w in wanted if w in fp32_names]
    captured = [run_all_tensors(fp32, f, [w for w in wanted if w not in f]) | f for f in feeds]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rows = []
    for name, (m, xs, n) in subs.items():
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        refs, tests = [], []
        for c in captured:
            yo = ref(n.output[0])
            if yo not in c or any(ref(x) not in c for x in xs):
                continue
            refs.append(c[yo].ravel())
            tests.append(sess.run(None, {x: c[ref(x)] for x in xs})[0].ravel())
        if refs:
            rows.append({"node": name, "op": n.op_type, "sqnr_db": round(float(sqnr_db(np.concatenate(refs), np.concatenate(tests))), 2)})
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows


@register_recipe("mixed")
class Mixed(Recipe):
    @dataclass(frozen=True, kw_only=True)
    class Config:
        ops: str = "Conv+MatMul+Gemm"
        scope: str = "gemm"
        sensitivity_batches: int = 8

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        ops = tuple(self.config.ops.split("+"))
        by_scope = outside_scope(ctx.model, self.config.scope, ops)  # fp32 whatever their sensitivity
        base = best_calibrated(ctx, ops, exclude=by_scope)
        cal = base.info.get("calibrator", "minmax")
        feeds = []
        for f in ctx.calib_feeds():
            feeds.append(f)
            if len(feeds) >= self.config.sensitivity_batches:
                break
        table = node_sensitivity(ctx.model, base.model, feeds, ops)
        if ctx.calib_drop is None:
            return RecipeOutput(base.model, {"calibrator": cal, "sensitivity": table, "fp32_nodes": list(by_scope)})
        ranges = calibrated_ranges(ctx, cal, ops)
        order = [r["node"] for r in table]
        trials, chosen = [], None
        k_values = [0] + [2**i for i in range(0, 12) if 2**i < len(order)] + [len(order)]
        for k in k_values:
            m = base.model if k == 0 else quantize_qdq(ctx.model, ranges, op_types=ops, exclude=by_scope + tuple(order[:k]))
            drop, fid = ctx.calib_drop(m)
            trials.append({"fp32_nodes": k, "calib_drop": round(drop, 5), **{f: round(v, 5) for f, v in fid.items()}})
            if ctx.progress:
                ctx.progress("mixed", 1, len(k_values))
            if drop <= ctx.budget / 2 and fid.get("metric_vs_fp32", 0.0) <= 2 * ctx.budget:
                chosen = (k, m)
                break
        if chosen is None:
            chosen = (len(order), m)
        k, m = chosen
        for r in table:
            r["kept_fp32"] = r["node"] in set(order[:k])
        return RecipeOutput(m, {"calibrator": cal, "sensitivity": table, "fp32_nodes": list(by_scope) + order[:k],
                                "fp32_by_scope": len(by_scope), "fp32_by_sensitivity": k, "search": trials})
