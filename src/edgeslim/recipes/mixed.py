"""Mixed precision found automatically: int8 everywhere except the nodes that hurt accuracy most.

This is the white/black-list idea of automatic mixed precision (PaddlePaddle AMP; NVIDIA's AMP op lists), with
the black list found by measurement instead of written by hand:

1. White list: quantize the GEMM-shaped nodes (dense convolutions, MatMul, Gemm) with the best calibrator;
   depthwise convolutions stay fp32 (`scope=gemm`: int8 does not pay there on onnxruntime's CPU provider).
2. Sensitivity of each quantized node, two SQNRs in dB against fp32 on calibration data: local (feed the node
   the fp32 model's own inputs, run it with int8 weights and quantized input, compare its output) and at the
   model output (quantize that node alone inside the fp32 model). The ranking uses the output SQNR, which sees
   how later layers amplify a node's error.
3. Black list: keep the least-SQNR nodes in fp32, doubling their number and then bisecting, for the fewest that
   keep, on the calibration lines, the metric drop within budget/2 and the output within 2 x budget of fp32's
   (CER of its text against the fp32 text).
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


def _single_node_quantized(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, name: str, ref) -> onnx.ModelProto | None:
    """`fp32` with only node `name` quantized: its Q->DQ activation inputs and DQ weights copied from `qmodel`."""
    from onnx import helper

    qprod = {o: n for n in qmodel.graph.node for o in n.output}
    qinit = {t.name: t for t in qmodel.graph.initializer}
    qnode = next((n for n in qmodel.graph.node if n.name == name), None)
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    target = next((n for n in m.graph.node if n.name == name), None)
    if qnode is None or target is None or len(qnode.input) != len(target.input):
        return None
    have = {t.name for t in m.graph.initializer}
    new_nodes, changed = [], False
    for idx, i in enumerate(qnode.input):
        dq = qprod.get(i)
        if not i or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] in qinit:  # quantized weight or bias
            src, q = None, None
        else:
            q = qprod.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                return None
            src = ref(q.input[0])
        for t in (q.input[1:] if q is not None else []) + list(dq.input):
            if t in qinit and t not in have:
                m.graph.initializer.append(qinit[t])
                have.add(t)
        out = f"{name}/sens/in{idx}"
        if q is not None:
            new_nodes.append(helper.make_node("QuantizeLinear", [src, *q.input[1:]], [out + "_q"], name=out + "_Q",
                                              **{a.name: helper.get_attribute_value(a) for a in q.attribute}))
            new_nodes.append(helper.make_node("DequantizeLinear", [out + "_q", *dq.input[1:]], [out], name=out + "_DQ",
                                              **{a.name: helper.get_attribute_value(a) for a in dq.attribute}))
        else:
            new_nodes.append(helper.make_node("DequantizeLinear", list(dq.input), [out], name=out + "_DQ",
                                              **{a.name: helper.get_attribute_value(a) for a in dq.attribute}))
        target.input[idx] = out
        changed = True
    if not changed:
        return None
    nodes = new_nodes + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return toposort(m)


def output_sensitivity(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                       names: list[str]) -> dict[str, float]:
    """SQNR (dB) of the model's first output when only that node is quantized (noise amplified downstream counts)."""
    import onnxruntime as ort

    fp32_names = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}

    def ref(t: str) -> str:
        return t if t in fp32_names else t.removesuffix("_QuantizeLinear_Input")

    so = ort.SessionOptions()
    so.log_severity_level = 3
    base = ort.InferenceSession(fp32.SerializeToString(), so, providers=["CPUExecutionProvider"])
    refs = np.concatenate([base.run(None, f)[0].ravel() for f in feeds])
    out = {}
    for name in names:
        m = _single_node_quantized(fp32, qmodel, name, ref)
        if m is None:
            continue
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        test = np.concatenate([sess.run(None, f)[0].ravel() for f in feeds])
        out[name] = round(float(sqnr_db(refs, test)), 2)
    return out


@register_recipe("mixed")
class Mixed(Recipe):
    @dataclass(frozen=True, kw_only=True)
    class Config:
        ops: str = "Conv+MatMul+Gemm"
        scope: str = "gemm"
        sensitivity_batches: int = 8

    def validate(self) -> None:
        from ..errors import InvalidParameterError
        from .int8 import check_quant_options

        check_quant_options(self.registered_name, self.config.ops, self.config.scope)
        if self.config.sensitivity_batches < 1:
            raise InvalidParameterError(f"recipe option mixed:sensitivity_batches={self.config.sensitivity_batches} "
                                        "must be 1 or more.")

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
        # Rank by the output-level SQNR: a node's local error says little about how much later layers amplify it
        # (on PP-OCRv4 the first convolution has a high local SQNR yet hurts the output most).
        out_sqnr = output_sensitivity(ctx.model, base.model, feeds, [r["node"] for r in table])
        for r in table:
            r["output_sqnr_db"] = out_sqnr.get(r["node"], 200.0)
        table.sort(key=lambda r: r["output_sqnr_db"])
        if ctx.calib_drop is None:
            return RecipeOutput(base.model, {"calibrator": cal, "sensitivity": table, "fp32_nodes": list(by_scope)})
        ranges = calibrated_ranges(ctx, cal, ops)
        order = [r["node"] for r in table]
        trials: list[dict] = []
        steps = [0] + [2**i for i in range(0, 12) if 2**i < len(order)] + [len(order)]
        max_trials = len(steps) + 3  # doubling, then at most 3 bisection steps: the bar's total is known

        def trial(k: int) -> tuple[bool, onnx.ModelProto]:
            m = base.model if k == 0 else quantize_qdq(ctx.model, ranges, op_types=ops, exclude=by_scope + tuple(order[:k]))
            drop, fid = ctx.calib_drop(m)
            trials.append({"fp32_nodes": k, "calib_drop": round(drop, 5), **{f: round(v, 5) for f, v in fid.items()}})
            if ctx.progress:
                ctx.progress("mixed search (trials)", 1, max_trials)
            return drop <= ctx.budget / 2 and fid.get("metric_vs_fp32", 0.0) <= 2 * ctx.budget, m

        # doubling, then bisection between the last failing and the first passing count
        chosen, lo = None, -1
        for k in steps:
            ok, m = trial(k)
            if ok:
                chosen = (k, m)
                break
            lo = k
        if chosen is not None:
            hi = chosen[0]
            for _ in range(3):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                ok, m = trial(mid)
                if ok:
                    hi, chosen = mid, (mid, m)
                else:
                    lo = mid
        else:
            chosen = (len(order), m)
        k, m = chosen
        if ctx.progress:  # the search stopped early: fill the bar
            ctx.progress("mixed search (trials)", max_trials - len(trials), max_trials)
        for r in table:
            r["kept_fp32"] = r["node"] in set(order[:k])
        return RecipeOutput(m, {"calibrator": cal, "sensitivity": table, "fp32_nodes": list(by_scope) + order[:k],
                                "fp32_by_scope": len(by_scope), "fp32_by_sensitivity": k, "search": trials})
