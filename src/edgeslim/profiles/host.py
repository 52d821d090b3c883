"""The `host` profile: what this machine's onnxruntime CPU provider does, measured with short microbenchmarks.

Measured, with the thread count in use and the `dedicated` thread policy (what `optimize` selects with by default),
each figure from the median of repeated runs (the typical time, as a candidate's p50 is):

- ceilings per kernel class (ops/s, a multiply-add = 2): one-node models of a 1x1 convolution, a 3x3 depthwise
  convolution and a MatMul with constant weights, each at three sizes (a node's ceiling is interpolated between
  them by its multiply-accumulates), in float32, as static int8 (`DequantizeLinear -> op -> QuantizeLinear`, which
  onnxruntime runs as one int8 kernel), as dynamic int8 (`ConvInteger`, `MatMulInteger`) and in float32 with int8
  weights dequantized at run time (weight-only); fp16 the same way where the runtime has kernels for it;
- the element rate of `DequantizeLinear` on 8- and 4-bit weights per output channel (what weight-only recipes run
  at every inference; onnxruntime does it far below memory bandwidth);
- peak per precision: the best ceiling of that precision;
- bandwidth: an elementwise `Add` of two float32 tensors, at 1 Mi elements per tensor (12 MiB moved: the cache
  level such a tensor sits in) and at 8 Mi (96 MiB: main memory); the cache size from sysfs;
- launch cost: a chain of 64 tiny `Relu` nodes against one (per node), and a one-node model (per run);
- precisions the runtime executes as another: a float16 (bfloat16) MatMul whose session inserts `Cast` nodes to
  float32 has no fp16 (bf16) kernel here; its estimate then uses the fp32 figures.

Cached per CPU model, CPU flags, thread count and onnxruntime version in `$EDGESLIM_CACHE/profiles/` (a change to
this file measures again). A few seconds on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["host_profile", "measure_host", "host_key"]

_OPSET = 17
_RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset: int = _OPSET) -> bytes:
    g = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _session(model: bytes, threads: int, optimize: bool = True, save_to: str | None = None):
    import onnxruntime as ort

    from ..engines.base import thread_policy

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    for k, v in thread_policy("dedicated")["ort_session_config"].items():
        so.add_session_config_entry(k, v)
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save_to:
        so.optimized_model_filepath = save_to
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _best_time(sess, feeds: dict, budget_s: float = 0.06, min_reps: int = 5, max_reps: int = 400) -> float:
    """Median time of a run after two warm-up runs: the typical time, as a candidate's p50 is (on a quiet machine the
    median and the best are close; on a busy one both slow down alike)."""
    for _ in range(2):
        sess.run(None, feeds)
    times, spent = [], 0.0
    while len(times) < min_reps or (spent < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return float(np.median(times))


# ---- one-node models ---------------------------------------------------------------------------------------

_FLOAT = {"fp32": (TensorProto.FLOAT, np.float32), "fp16": (TensorProto.FLOAT16, np.float16)}


def _float_input(shape, prec: str) -> np.ndarray:
    return (_RNG.random(shape, dtype=np.float32) - 0.5).astype(_FLOAT[prec][1]) if prec in _FLOAT else None


def _conv_case(kind: str, c: int, hw: int, mode: str, prec: str = "fp32") -> tuple[bytes, dict, int]:
    """(model, feeds, MACs) of one convolution: kind conv (1x1, c->c) or dwconv (3x3 depthwise, pad 1)."""
    x_shape = (1, c, hw, hw)
    if kind == "conv":
        w_shape, attrs = (c, c, 1, 1), {"kernel_shape": [1, 1]}
    else:
        w_shape, attrs = (c, 1, 3, 3), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": c}
    w = (_RNG.random(w_shape, dtype=np.float32) - 0.5) * 0.2
    return (*_weighted_case("Conv", attrs, w, 0, x_shape, mode, prec), c * hw * hw * int(np.prod(w_shape[1:])))


def _matmul_case(n: int, mode: str, prec: str = "fp32") -> tuple[bytes, dict, int]:
    """(model, feeds, MACs) of an [n, n] x [n, n] MatMul with constant weights."""
    w = (_RNG.random((n, n), dtype=np.float32) - 0.5) * 0.2
    return (*_weighted_case("MatMul", {}, w, 1, (n, n), mode, prec), n ** 3)


def _weighted_case(op: str, attrs: dict, w: np.ndarray, w_axis: int, x_shape: tuple, mode: str, prec: str):
    """One `op` node (Conv or MatMul, output shaped like its input) with constant weights `w`, as the candidates'
    recipes emit it: `float` (fp32/fp16 weights), `qdq` (int8 activations and per-channel weights along `w_axis`
    through Q/DQ), `integer` (ConvInteger / MatMulInteger) or `rtw` (float activations, int8 weights dequantized at
    every run). Returns (model, feeds)."""
    if mode == "float":
        et, dt = _FLOAT[prec]
        model = _model([helper.make_node(op, ["x", "w"], ["y"], **attrs)], [_vi("x", et, x_shape)],
                       [_vi("y", et, x_shape)], [numpy_helper.from_array(w.astype(dt), "w")])
        return model, {"x": _float_input(x_shape, prec)}
    c = w.shape[w_axis]
    wq = np.clip(np.round(w / 0.002), -127, 127).astype(np.int8)
    w_inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.full(c, 0.002, np.float32), "ws"),
               numpy_helper.from_array(np.zeros(c, np.int8), "wz")]
    dq_w = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=w_axis)
    x8 = _RNG.integers(0, 255, x_shape, dtype=np.uint8)
    if mode == "qdq":
        inits = w_inits + [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                           numpy_helper.from_array(np.array(128, np.uint8), "z"),
                           numpy_helper.from_array(np.array(0.05, np.float32), "so")]
        nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]), dq_w,
                 helper.make_node(op, ["x", "w"], ["y"], **attrs),
                 helper.make_node("QuantizeLinear", ["y", "so", "z"], ["yq"])]
        return _model(nodes, [_vi("xq", TensorProto.UINT8, x_shape)], [_vi("yq", TensorProto.UINT8, x_shape)], inits), {"xq": x8}
    if mode == "integer":
        inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(128, np.uint8), "z")]
        nodes = [helper.make_node(op + "Integer", ["xq", "wq", "z"], ["y"], **attrs)]
        return _model(nodes, [_vi("xq", TensorProto.UINT8, x_shape)], [_vi("y", TensorProto.INT32, x_shape)], inits), {"xq": x8}
    nodes = [dq_w, helper.make_node(op, ["x", "w"], ["y"], **attrs)]
    return (_model(nodes, [_vi("x", TensorProto.FLOAT, x_shape)], [_vi("y", TensorProto.FLOAT, x_shape)], w_inits),
            {"x": _float_input(x_shape, "fp32")})


# three sizes per kernel class: the ceiling of a node is interpolated between them by its multiply-accumulates
# (small kernels run far below peak; some, like ConvInteger, also slow down when large)
_CONV_SIZES = ((32, 32), (128, 32), (384, 32))  # 1x1 conv: (channels, spatial side): 1M, 17M, 151M MACs
_DW_SIZES = ((32, 32), (128, 32), (128, 64))  # 3x3 depthwise: 0.3M, 1.2M, 4.7M MACs
_MM_SIZES = (64, 256, 512)  # n x n x n: 0.3M, 17M, 134M MACs


def _curve(kind: str, mode: str, prec: str, threads: int) -> tuple[list[list[float]], list]:
    """[[MACs, ops/s], ...] of one kernel class at its three sizes (failed sizes left out), and the raw rows."""
    points, rows = [], []
    if kind == "matmul":
        cases = [(lambda n=n: _matmul_case(n, mode, prec)) for n in _MM_SIZES]
    else:
        cases = [(lambda c=c, hw=hw: _conv_case(kind, c, hw, mode, prec)) for c, hw in (_CONV_SIZES if kind == "conv" else _DW_SIZES)]
    for make in cases:
        model, feeds, macs = make()
        try:
            t = _best_time(_session(model, threads), feeds)
        except Exception as e:  # a kernel this runtime lacks: no ceiling for that class
            rows.append({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
            continue
        points.append([float(macs), 2.0 * macs / t])
        rows.append({"macs": macs, "best_s": t, "gops": round(2.0 * macs / t / 1e9, 2)})
    return points, rows


def _dq_rate(c: int, bits: int, threads: int) -> tuple[float, float]:
    """(elements, elements/s) of dequantizing a [c, c, 3, 3] weight per output channel, as weight-only recipes write
    it (int8 at opset 17, int4 at opset 21)."""
    shape = (c, c, 3, 3)
    q = np.random.default_rng(0).integers(-7, 7, shape).astype(np.int8)
    if bits == 4:
        wq = helper.make_tensor("wq", TensorProto.INT4, list(shape), q.flatten().tolist())
        opset = 21
    else:
        wq, opset = numpy_helper.from_array(q, "wq"), _OPSET
    inits = [wq, numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws")]
    # a graph of the one node, no inputs: runtimes keep DequantizeLinear out of constant folding
    model = _model([helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0)], [],
                   [_vi("w", TensorProto.FLOAT, shape)], inits, opset=opset)
    n = int(np.prod(shape))
    return float(n), n / _best_time(_session(model, threads), {})


def _add_bandwidth(n: int, threads: int) -> float:
    model = _model([helper.make_node("Add", ["a", "b"], ["y"])], [_vi("a", TensorProto.FLOAT, (n,)), _vi("b", TensorProto.FLOAT, (n,))],
                   [_vi("y", TensorProto.FLOAT, (n,))], [])
    a = _RNG.random(n, dtype=np.float32)
    t = _best_time(_session(model, threads), {"a": a, "b": a.copy()}, budget_s=0.15)
    return 3 * 4 * n / t


def _launch_costs(threads: int) -> tuple[float, float]:
    """(per-node, per-run) seconds: a chain of 64 Relu nodes on 8 floats against a single one, unoptimized."""
    def chain(k: int) -> bytes:
        nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(k)]
        return _model(nodes, [_vi("t0", TensorProto.FLOAT, (1, 8))], [_vi(f"t{k}", TensorProto.FLOAT, (1, 8))], [])
    x = {"t0": np.ones((1, 8), np.float32)}
    t1 = _best_time(_session(chain(1), threads, optimize=False), x)
    t64 = _best_time(_session(chain(64), threads, optimize=False), x)
    return max(0.0, (t64 - t1) / 63), t1


def _widened(prec: str) -> bool | None:
    """Whether onnxruntime runs a `prec` MatMul through casts to float32 (True), natively (False), or not at all
    (None)."""
    et = TensorProto.FLOAT16 if prec == "fp16" else TensorProto.BFLOAT16
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", et, (16, 16)), _vi("w", et, (16, 16))],
                   [_vi("y", et, (16, 16))], [])
    with tempfile.TemporaryDirectory(prefix="edgeslim-host-") as d:
        out = os.path.join(d, "opt.onnx")
        try:
            _session(model, 1, save_to=out)
            opt = onnx.load(out)
        except Exception:
            return None
    return any(n.op_type == "Cast" for n in opt.graph.node)


def _cache_bytes() -> int | None:
    """The largest CPU cache (sysfs), or None where the OS does not say."""
    best = None
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            s = f.read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
            v = int(s.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
        best = v if best is None else max(best, v)
    return best


def measure_host(threads: int = 2, progress=None) -> dict:
    """Run the microbenchmarks; returns the host profile's fields (see the module docstring)."""
    import onnxruntime

    from ..bench import machine_info

    prog = progress or (lambda *a: None)
    t_start = time.time()
    runs_as, why = {}, {}
    native = {"fp32"}
    for prec in ("fp16", "bf16"):
        w = _widened(prec)
        if w is True:
            runs_as[prec] = "fp32"
            why[prec] = f"onnxruntime {onnxruntime.__version__} has no {prec} MatMul/Conv kernels on this CPU: it casts to fp32"
        elif w is False and prec == "fp16":
            native.add(prec)  # bf16 ceilings would need bf16 conv models; onnxruntime's CPU provider has none
    ceilings, detail = {}, {}
    plan = [(kind, "float", p) for p in sorted(native) for kind in ("conv", "dwconv", "matmul")]
    plan += [(kind, mode, "int8") for mode in ("qdq", "integer") for kind in ("conv", "dwconv", "matmul")]
    plan += [(kind, "rtw", "fp32") for kind in ("conv", "dwconv", "matmul")]
    for i, (kind, mode, prec) in enumerate(plan):
        prog("measure host", i, len(plan) + 3)
        points, rows = _curve(kind, mode, prec, threads)
        detail[f"{kind}:{mode}:{prec}"] = rows
        if points:
            ceilings[f"{kind}:{mode}:{prec}"] = points
    for bits in (8, 4):
        try:
            ceilings[f"quant:w{bits}:elem"] = [list(_dq_rate(c, bits, threads)) for c in (64, 256)]
        except Exception as e:  # no kernel for it: its nodes are costed by bandwidth alone
            detail[f"quant:w{bits}:elem"] = [{"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}]
    prog("measure host", len(plan), len(plan) + 3)
    cache_bw = _add_bandwidth(1 << 20, threads)
    dram_bw = _add_bandwidth(1 << 23, threads)
    prog("measure host", len(plan) + 1, len(plan) + 3)
    per_node, per_run = _launch_costs(threads)
    prog("measure host", len(plan) + 3, len(plan) + 3)
    peaks = {}
    for prec in ("fp32", "fp16", "bf16", "int8"):
        vals = [ops for k, pts in ceilings.items() if k.endswith(":" + prec) and ":rtw:" not in k for _, ops in pts]
        peaks[prec] = max(vals) if vals else None
    mach = machine_info(threads)
    return {
        "peak_ops_per_s": peaks, "memory_bandwidth_bytes_per_s": dram_bw, "cache_bandwidth_bytes_per_s": cache_bw,
        "cache_bytes": _cache_bytes(), "node_overhead_s": per_node, "run_overhead_s": per_run,
        "kernel_ceilings": ceilings, "runs_as": runs_as, "runs_as_why": why,
        "measurement": {"threads": threads, "policy": "dedicated", "onnxruntime": onnxruntime.__version__,
                        "cpu": mach.get("cpu"), "flags": mach.get("flags"), "cores": mach.get("cores"),
                        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t_start, 1),
                        "detail": detail,
                        "method": "best of repeated runs of one-node onnxruntime models (see edgeslim.profiles.host)"},
    }


def host_key(threads: int) -> str:
    import onnxruntime

    from ..bench import machine_info

    mach = machine_info(threads)
    src = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    raw = json.dumps([mach.get("cpu"), mach.get("flags"), mach.get("cores"), threads, onnxruntime.__version__, src])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def host_profile(threads: int = 2, cache: bool = True, refresh: bool = False, progress=None, measure: bool = True):
    """The measured `host` profile for `threads`: from the cache when this CPU was measured before, else measured
    now (about 10 s) and stored. With `measure=False` a profile that is not cached yet is None."""
    from ..cache import Cache
    from ..zoo import cache_dir
    from . import Profile

    store, key = Cache(cache_dir() / "profiles"), host_key(threads)
    hit = store.get("host", key) if cache and not refresh else None
    data = hit[0] if hit is not None and "peak_ops_per_s" in hit[0] else None
    if data is None:
        if not measure:
            return None
        data = measure_host(threads, progress=progress)
        if cache:
            store.drop("host", key)  # a refresh replaces the entry (the store keeps the first writer's otherwise)
            store.put("host", key, data)
    m = data["measurement"]
    return Profile(
        name="host", title=f"this machine: {m.get('cpu')} ({m.get('threads')} threads, onnxruntime {m.get('onnxruntime')})",
        kind="cpu", cores=f"{m.get('cores')} cores, {m.get('threads')} threads used", clock_ghz=None,
        peak_ops_per_s=data["peak_ops_per_s"], memory_bandwidth_bytes_per_s=data["memory_bandwidth_bytes_per_s"],
        sources=({"url": "measured", "gives": m.get("method", ""), "values": []},),
        notes="measured with onnxruntime microbenchmarks; see edgeslim.profiles.host", measured=True,
        kernel_ceilings=data["kernel_ceilings"], cache_bandwidth_bytes_per_s=data["cache_bandwidth_bytes_per_s"],
        cache_bytes=data["cache_bytes"], node_overhead_s=data["node_overhead_s"], run_overhead_s=data["run_overhead_s"],
        runs_as=data["runs_as"], runs_as_why=data["runs_as_why"], measurement=m)
