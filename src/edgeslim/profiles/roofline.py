"""Per-node work and data movement of an ONNX graph, and its roofline time on a chip profile.

The model (Williams, Waterman, Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009; cache-aware variant: Ilic, Pratas, Sousa, IEEE CAL 2014):

    time(node)  = max(ops / compute_ceiling, bytes / bandwidth) + per-node overhead
    time(graph) = sum over the nodes the runtime executes

- ops: 2 x multiply-accumulates for Conv / ConvTranspose / MatMul / Gemm (and their integer forms), one op per
  output element for every other node (negligible beside its bytes).
- bytes: every activation read and written plus the weights, each element at the size the candidate's precision
  gives it: float tensors at 4 bytes (fp32) or 2 (fp16, bf16); nodes that run as int8 read and write 1-byte
  tensors; integer tensors at their own size.
- compute_ceiling: the profile's peak for the node's precision, or, where the profile measured one (the host), the
  ceiling of the node's kernel class (dense conv, depthwise conv, matmul x float, static int8, dynamic int8,
  float with weights dequantized at run time), and the element rate of dequantizing 8- and 4-bit weights.
- bandwidth: the profile's memory bandwidth; where the profile also knows its cache (the host) and the node's bytes
  fit in it, the bandwidth measured at that size.
- overhead: the profile's per-node launch cost where measured (the host), else 0.

What the runtime executes, from the graph alone: nodes computed from constants only are folded at load; an
activation (Relu, Clip, HardSigmoid, HardSwish, Sigmoid, LeakyRelu, Tanh) or BatchNormalization that is the sole
reader of a Conv/Gemm/MatMul output is fused into it; view ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity)
move no data; `DequantizeLinear -> Conv/MatMul -> QuantizeLinear` runs as one int8 kernel (the Q/DQ pair costs
nothing), while a Q or DQ between a float node and an int8 one is a pass over memory of its own; a
`DequantizeLinear` of a weight feeding a float node (weight-only quantization) runs at every inference.

A plain roofline (published peaks, no overhead) is a lower bound: small, latency-bound networks run far below
peak. The host profile measures its ceilings per kernel class and its per-node overhead on this machine, so its
estimate can be checked against measured latency (`benchmarks/seed_roofline.py`); target chips only have their
published peaks, so theirs stay lower bounds. A profile without a published bandwidth gets the compute roof alone
(still a lower bound, and the result says so); one without a peak for the precision gets no estimate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

__all__ = ["NodeCost", "graph_costs", "roofline", "RooflineResult", "PRECISIONS", "FLOAT_BYTES", "KINDS", "MODES"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
KINDS = ("conv", "dwconv", "matmul")  # compute kernel classes
MODES = ("float", "qdq", "integer", "rtw")  # float | static int8 (Q/DQ) | dynamic int8 (ConvInteger...) | float, runtime-dequantized weights

_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedMatMul"}
_INTEGER = {"ConvInteger": "conv", "MatMulInteger": "matmul", "DynamicQuantizeMatMul": "matmul"}
_QLINEAR = {"QLinearConv": "conv", "QLinearMatMul": "matmul"}
_NBITS = {"MatMulNBits": "matmul"}
_FUSABLE = {"Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Tanh", "BatchNormalization"}
_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Shape", "Size"}
_FLOAT_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)}
_FOUR_BIT = {getattr(onnx.TensorProto, k) for k in ("INT4", "UINT4") if hasattr(onnx.TensorProto, k)}


@dataclass
class NodeCost:
    """What one executed node does. Element counts are kept per dtype class so a precision can size them."""

    name: str
    op: str
    kind: str  # conv | dwconv | matmul | elementwise | quant | view
    mode: str = "float"  # compute kinds: float | qdq | integer | rtw; quant: act | w8 | w4 (a weight dequantized per run)
    macs: int = 0
    ops: int = 0  # non-MAC ops (elementwise nodes: one per output element)
    float_elems: int = 0  # activation + weight elements stored as float (sized by the precision)
    int8_elems: int = 0  # elements that are 8-bit (quantized tensors, int8 weights)
    other_bytes: int = 0  # integer tensors at their own size (int32 accumulators, int64 shapes, 4-bit weights)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RooflineResult:
    """Roofline time of a graph on one profile at one precision (seconds), or why there is none."""

    profile: str
    precision: str
    seconds: float | None
    bound: str = ""  # compute | memory | overhead: the term that holds most of the time
    reason: str = ""  # why `seconds` is None, or a note on how the precision ran
    gops: float = 0.0  # ops counted, 1e9
    gbytes: float = 0.0  # bytes moved, 1e9
    split_s: dict[str, float] = field(default_factory=dict)  # time held by compute / memory / overhead terms
    by_kind_s: dict[str, float] = field(default_factory=dict)

    @property
    def ms(self) -> float | None:
        return None if self.seconds is None else self.seconds * 1e3

    def to_dict(self) -> dict:
        return {"profile": self.profile, "precision": self.precision,
                "ms": None if self.seconds is None else float(f"{self.seconds * 1e3:.5g}"), "bound": self.bound,
                "reason": self.reason, "gops": round(self.gops, 4), "gbytes": round(self.gbytes, 5),
                "split_ms": {k: float(f"{v * 1e3:.4g}") for k, v in self.split_s.items()},
                "by_kind_ms": {k: float(f"{v * 1e3:.4g}") for k, v in self.by_kind_s.items()}}


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _tensor_info(model: onnx.ModelProto, shapes: dict[str, tuple] | None) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of every tensor: initializers from the graph, the rest from one run of the model (onnx shape
    inference stalls on Shape->Reshape chains; a run gives real shapes)."""
    from ..model import input_specs, resolve_shape, run_all_tensors

    info: dict[str, tuple[tuple, np.dtype]] = {}
    for t in model.graph.initializer:
        info[t.name] = (tuple(t.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)))
    feeds = {}
    shapes = shapes or {}
    for spec in input_specs(model):
        shp = resolve_shape(spec, tuple(shapes[spec.name]) if spec.name in shapes else None)
        dt = np.dtype(spec.dtype) if spec.dtype != "?" else np.dtype(np.float32)
        feeds[spec.name] = (np.random.default_rng(0).random(shp) * 0.5).astype(dt) if dt.kind == "f" else np.zeros(shp, dt)
    for k, v in feeds.items():
        info[k] = (tuple(v.shape), v.dtype)
    wanted = [o for n in model.graph.node for o in n.output if o and o not in info]
    for k, v in run_all_tensors(model, feeds, wanted).items():
        a = np.asarray(v)
        info[k] = (tuple(a.shape), a.dtype)
    return info


def graph_costs(model: onnx.ModelProto, shapes: dict[str, tuple] | None = None) -> list[NodeCost]:
    """Per-node work and data of the nodes a runtime executes (see the module docstring for the rules).

    `shapes` gives the input shapes (name -> shape); dynamic dims not given are 1.

    >>> costs = graph_costs(onnx.load("model.onnx"), {"x": (1, 3, 48, 320)})  # doctest: +SKIP
    >>> sum(c.macs for c in costs)  # doctest: +SKIP
    """
    from ..graph import constants_to_initializers

    m = constants_to_initializers(model)
    info = _tensor_info(m, shapes)
    nodes = list(m.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            if i:
                readers[i].append(n)
    outputs = {o.name for o in m.graph.output}

    # constants: initializers and everything computed from them alone (folded when the session loads), except
    # DequantizeLinear, which runtimes keep so they can fuse it into an int8 kernel
    const = {t.name for t in m.graph.initializer}
    const_dq: set[str] = set()  # outputs of DequantizeLinear(weight)
    for n in nodes:  # graph order is topological
        ins = [i for i in n.input if i]
        if n.op_type in ("Constant",) or (ins and all(i in const for i in ins)):
            if n.op_type == "DequantizeLinear":
                const_dq.update(o for o in n.output if o)
            else:
                const.update(o for o in n.output if o)
        elif n.op_type in ("Cast", "Reshape", "Transpose", "Unsqueeze", "Identity") and ins and ins[0] in const_dq \
                and all(i in const or i in const_dq for i in ins):
            const_dq.update(o for o in n.output if o)

    def from_dq(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear" and t not in const_dq

    def sole_reader(t: str) -> onnx.NodeProto | None:
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in outputs else None

    quantized: set[int] = set()  # ids of compute nodes fed by DQ(activation) and DQ(weight)
    fused: set[int] = set()  # ids of nodes that cost nothing (fused into a neighbour)
    for n in nodes:
        if n.op_type in _COMPUTE and len(n.input) >= 2:
            if from_dq(n.input[0]) and n.input[1] in const_dq:
                quantized.add(id(n))
    for n in nodes:
        if id(n) in quantized:
            fused.add(id(producer[n.input[0]]))  # the activation DQ folds into the int8 kernel...
            out = n.output[0]
            r = sole_reader(out)
            if r is not None and r.op_type in _FUSABLE - {"BatchNormalization"}:
                fused.add(id(r))
                out = r.output[0]
                r = sole_reader(out)
            if r is not None and r.op_type == "QuantizeLinear":
                fused.add(id(r))  # ...and so does the requantization of its output
        elif n.op_type in _COMPUTE and len(n.input) > 1 and n.input[1] in const:
            # runtimes fold BatchNormalization into constant weights and fuse the activation into the kernel; with
            # weights dequantized at run time (weight-only) or an integer kernel they run as nodes of their own
            r = sole_reader(n.output[0])
            while r is not None and r.op_type in _FUSABLE:
                fused.add(id(r))
                r = sole_reader(r.output[0])
    # an activation DQ read by a quantized node and also by float nodes still runs for the float readers
    for n in nodes:
        if n.op_type == "DequantizeLinear" and id(n) in fused and n.output[0] not in const_dq:
            if any(id(r) not in quantized for r in readers.get(n.output[0], [])):
                fused.discard(id(n))

    weight_type = {t.name: t.data_type for t in m.graph.initializer}

    def elems(t: str) -> int:
        return _numel(info[t][0]) if t in info else 0

    def dtype(t: str) -> np.dtype:
        return info[t][1] if t in info else np.dtype(np.float32)

    costs: list[NodeCost] = []
    for n in nodes:
        ins = [i for i in n.input if i]
        outs = [o for o in n.output if o]
        if not outs or all(o in const or o in const_dq for o in outs) and n.op_type != "DequantizeLinear":
            continue  # folded at load
        if id(n) in fused:
            continue
        if n.op_type == "DequantizeLinear" and outs[0] in const_dq:
            # a weight DQ: free inside an int8 kernel; a pass over the weights at every run for a float reader
            if all(id(r) in quantized or r.op_type in ("Cast", "Reshape", "Transpose", "Unsqueeze", "Identity")
                   for r in readers.get(outs[0], [])):
                continue
            bits = 4 if weight_type.get(ins[0]) in _FOUR_BIT else 8
            c = NodeCost(n.name, n.op_type, "quant", mode=f"w{bits}", ops=elems(outs[0]), float_elems=elems(outs[0]))
            if bits == 4:
                c.other_bytes += (elems(ins[0]) + 1) // 2
            else:
                _add_tensor(c, ins[0], elems(ins[0]), dtype(ins[0]))
            costs.append(c)
            continue
        c = NodeCost(n.name, n.op_type, "elementwise")
        if n.op_type in _COMPUTE or n.op_type in _INTEGER or n.op_type in _QLINEAR or n.op_type in _NBITS:
            c.kind, c.macs = _compute_kind(n, info)
            if id(n) in quantized or n.op_type in _QLINEAR:
                c.mode = "qdq"
                x, w = ins[0], ins[1] if n.op_type not in _QLINEAR else ins[3]
                c.int8_elems += elems(x) + elems(w) + elems(outs[0])
                costs.append(c)
                continue
            if n.op_type in _INTEGER:
                c.mode = "integer"
            elif n.op_type in _NBITS or (len(ins) > 1 and ins[1] in const_dq):
                c.mode = "rtw"
        elif n.op_type in _VIEWS:
            c.kind = "view"
            costs.append(c)
            continue
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            c.kind, c.mode = "quant", "act"
        if c.kind == "elementwise" or c.kind == "quant":
            c.ops = sum(elems(o) for o in outs)
        for t in ins:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and t != ins[0]:
                continue  # scale and zero point
            _add_tensor(c, t, elems(t), dtype(t))
        for t in outs:
            _add_tensor(c, t, elems(t), dtype(t))
        costs.append(c)
    return costs


def _add_tensor(c: NodeCost, name: str, n: int, dt: np.dtype) -> None:
    if dt in _FLOAT_DTYPES:
        c.float_elems += n
    elif dt.itemsize == 1:
        c.int8_elems += n
    else:
        c.other_bytes += n * dt.itemsize


def _compute_kind(n: onnx.NodeProto, info: dict) -> tuple[str, int]:
    """(kernel class, multiply-accumulates) of a Conv/MatMul/Gemm node or an integer/QLinear form of one."""
    ins = [i for i in n.input]
    op = n.op_type
    if op in _QLINEAR:
        x, w = ins[0], ins[3]
    else:
        x, w = ins[0], ins[1] if len(ins) > 1 else ""
    out = n.output[0]
    oshape = info.get(out, ((), None))[0]
    wshape = info.get(w, ((), None))[0]
    xshape = info.get(x, ((), None))[0]
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        group = int(_attr(n, "group", 1) or 1)
        if op == "ConvTranspose":
            macs = _numel(xshape) * _numel(wshape[1:]) if wshape else 0
        else:
            macs = _numel(oshape) * _numel(wshape[1:]) if wshape else 0
        cin = xshape[1] if len(xshape) > 1 else 0
        kind = "dwconv" if group > 1 and group == cin and len(wshape) > 1 and wshape[1] == 1 else "conv"
        return kind, int(macs)
    if op == "Gemm":
        trans_a = bool(_attr(n, "transA", 0))
        k = xshape[0] if trans_a else (xshape[-1] if xshape else 0)
        return "matmul", int(_numel(oshape) * k)
    if op == "MatMulNBits":
        return "matmul", int(_numel(oshape) * int(_attr(n, "K", 0) or 0))
    k = xshape[-1] if xshape else 0  # MatMul, FusedMatMul (transA rarely set), MatMulInteger, DynamicQuantizeMatMul
    if op == "FusedMatMul" and _attr(n, "transA", 0):
        k = xshape[-2]
    return "matmul", int(_numel(oshape) * k)


def roofline(costs: list[NodeCost], precision: str, profile) -> RooflineResult:
    """Roofline time of `costs` on `profile` at `precision` (fp32 | fp16 | bf16 | int8).

    The precision decides the compute peak and the element sizes: at fp16/bf16 float tensors count 2 bytes; at int8,
    compute nodes the graph does not already quantize run as int8 (1-byte activations and weights), as an engine
    that quantizes the model itself would run them. A precision the profile runs as another (the host's runtime
    widening fp16 to fp32) is estimated as that one. A peak or bandwidth the profile does not publish gives no
    estimate (`seconds` None, `reason` says which).
    """
    if precision not in PRECISIONS:
        from ..errors import InvalidParameterError

        raise InvalidParameterError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    eff = profile.runs_as.get(precision, precision)
    note = f"{precision} runs as {eff} here ({profile.runs_as_why.get(precision, 'runtime')})" if eff != precision else ""
    float_prec = eff if eff in FLOAT_BYTES else profile.runs_as.get("fp32", "fp32")
    fbytes = FLOAT_BYTES.get(float_prec, 4)
    graph_has_qdq = any(c.mode == "qdq" for c in costs)
    peak_int8 = profile.peak("int8")
    peak_float = profile.peak(float_prec)
    name = profile.name
    if eff == "int8" or graph_has_qdq:
        if peak_int8 is None and (eff == "int8" or any(c.mode in ("qdq", "integer") for c in costs)):
            return RooflineResult(name, precision, None, reason="n/a: no published int8 peak")
    if peak_float is None:
        return RooflineResult(name, precision, None, reason=f"n/a: no published {float_prec} peak")
    split = {"compute": 0.0, "memory": 0.0, "overhead": 0.0}
    by_kind: dict[str, float] = defaultdict(float)
    ops_total = bytes_total = 0.0
    overhead = profile.node_overhead_s or 0.0
    for c in costs:
        mode = c.mode
        int8_elems, float_elems = c.int8_elems, c.float_elems
        if c.kind in KINDS and eff == "int8" and not graph_has_qdq and mode == "float":
            mode = "qdq"  # the engine quantizes this node itself
            int8_elems, float_elems = int8_elems + float_elems, 0
        nbytes = float_elems * fbytes + int8_elems + c.other_bytes
        ops = 2.0 * c.macs + c.ops
        if c.kind in KINDS:
            prec = "int8" if mode in ("qdq", "integer") else float_prec
            ceiling = profile.kernel_ceiling(c.kind, mode, prec, c.macs) or profile.peak(prec)
        elif c.kind == "quant" and profile.kernel_ceiling("quant", c.mode, "elem", c.ops):
            ceiling = profile.kernel_ceiling("quant", c.mode, "elem", c.ops)  # elements per second
        else:
            ceiling = peak_float
        t_compute = ops / ceiling if ceiling else 0.0
        t_memory = 0.0 if c.kind == "view" else nbytes / profile.bandwidth_for(nbytes)
        t = max(t_compute, t_memory) + overhead
        if t_compute >= t_memory:
            split["compute"] += t_compute
        else:
            split["memory"] += t_memory
        split["overhead"] += overhead
        by_kind[c.kind] += t
        ops_total += ops
        bytes_total += nbytes
    split["overhead"] += profile.run_overhead_s or 0.0  # once per inference
    total = sum(split.values())
    bound = max(split, key=split.get) if total > 0 else ""
    if profile.bandwidth is None:  # one roof is still a lower bound
        note = "; ".join(x for x in (note, "compute roof only: no published memory bandwidth") if x)
    return RooflineResult(name, precision, total, bound=bound, reason=note, gops=ops_total / 1e9, gbytes=bytes_total / 1e9,
                          split_s=split, by_kind_s=dict(by_kind))
