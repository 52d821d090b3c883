"""Where the default model's time goes, per operator type: the ORT fp32 original against OpenVINO bf16 (what the
default search selects or ties on CPUs with native bf16), at the benchmark input 1x3x48x320.

    python benchmarks/rec_profile.py [--runs 200] [--threads 2] [--no-write]

ORT: onnxruntime's own profiler (`enable_profiling`, kernel events summed per op type). OpenVINO: the CPU plugin's
performance counters (`PERF_COUNT`, real time per executed layer summed per layer type). Both after 20 warm-up runs,
with the study's thread settings (2 threads, latency hint for OpenVINO). The two profiles are measured one after the
other in this process, so their totals are not a speed ratio (benchmarks/main_job.py measures that); the shares say
what is left to speed up. Stored as benchmarks/results/rec_profile.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def ort_profile(model: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    for _ in range(20):
        s.run(None, {name: x})
    t0 = time.perf_counter()
    for _ in range(runs):
        s.run(None, {name: x})
    wall = (time.perf_counter() - t0) / runs
    events = json.loads(Path(s.end_profiling()).read_text())
    per: dict[str, float] = {}
    n_runs = 20 + runs
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            per[op] = per.get(op, 0.0) + e["dur"] / 1000.0 / n_runs
    return {"wall_ms": round(wall * 1e3, 3), "kernel_ms": round(sum(per.values()), 3),
            "by_op_ms": {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}}


def ov_profile(model: Path, x: np.ndarray, runs: int, threads: int, precision: str) -> dict:
    import openvino as ov

    core = ov.Core()
    cm = core.compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    req = cm.create_infer_request()
    for _ in range(20):
        req.infer([x])
    per: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(runs):
        req.infer([x])
        for p in req.profiling_info:
            if p.status == p.Status.EXECUTED:
                key = f"{p.node_type} ({p.exec_type})"
                per[key] = per.get(key, 0.0) + p.real_time.total_seconds() * 1e3 / runs
    wall = (time.perf_counter() - t0) / runs
    return {"wall_ms_with_counters": round(wall * 1e3, 3), "layer_ms": round(sum(per.values()), 3),
            "by_layer_ms": {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import onnx

    from edgeslim.bench import machine_info
    from edgeslim.engines import get_engine
    from edgeslim.engines.openvino import native_bf16
    from edgeslim.zoo import resolve

    model = resolve("ppocrv4-rec")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeslim-recprof-") as d:
        prec = "bf16" if native_bf16() else "fp32"
        xml = get_engine("openvino").convert(onnx.load(str(model)), Path(d) / "m.xml", prec)
        res = {"machine": machine_info(args.threads), "input": [1, 3, 48, 320], "runs": args.runs,
               "ort_fp32": ort_profile(model, x, args.runs, args.threads),
               f"openvino_{prec}": ov_profile(xml, x, args.runs, args.threads, "bf16" if prec == "bf16" else "f32")}
    for k in ("ort_fp32", f"openvino_{prec}"):
        r = res[k]
        tot = r.get("kernel_ms") or r.get("layer_ms")
        items = r.get("by_op_ms") or r.get("by_layer_ms")
        print(f"{k}: {tot:.2f} ms in kernels/layers per run")
        for name, ms in list(items.items())[:10]:
            print(f"   {name:40s} {ms:7.3f} ms  {100 * ms / tot:5.1f}%")
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "rec_profile.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
