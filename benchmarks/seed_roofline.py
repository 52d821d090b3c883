"""How far the host roofline estimate is from measured latency, on the main job's onnxruntime candidates.

Builds the candidates of the default model (the PP-OCRv4 recognizer shipped in rapidocr) through edgeslim's own
recipes, as `optimize` does (full: the model as shipped and fp32, fp16, bf16, int8, int8-dynamic, w8, w4, mixed;
`--quick`: the model as shipped, fp32, fp16, bf16, int8 with the minmax calibrator, int8-dynamic, w8), measures the
host profile (`edgeslim.profiles.host`: onnxruntime microbenchmarks, never these candidates) and then, in the same
run and at the same thread count, times every candidate with `edgeslim.bench.bench_rounds` (own worker process per
candidate, order rotated each round, thread policy `dedicated`: OMP_WAIT_POLICY=ACTIVE, onnxruntime spinning) at
the benchmark input 1x3x48x320.

Per candidate: the host roofline estimate (`edgeslim.profiles.estimate`), the measured p50, and
ratio = max(est/meas, meas/est). `roofline_err` is the worst ratio (target <= 2.0). `plain_err` is the same for a
plain roofline on the same host (best measured peak and main-memory bandwidth only: no per-kernel ceilings, no cache
bandwidth, no launch costs), to show what the measured ceilings add.

    python benchmarks/seed_roofline.py [--quick] [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREADS = 2
POLICY = "dedicated"

FULL_RECIPES = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8", "w4", "mixed")
QUICK_RECIPES = ("fp32", "fp16", "bf16", "int8:calibrator=minmax", "int8-dynamic", "w8")


def _build(recipes: tuple[str, ...], work: Path, threads: int, calib_limit: int | None) -> tuple[dict, dict, dict]:
    """{name: artifact path}, {name: recipe spec}, and the benchmark feeds."""
    import onnx

    from edgeslim.recipes import get_recipe
    from edgeslim.study import recipe_context
    from edgeslim.tasks import get_task
    from edgeslim.zoo import resolve

    model_path = resolve("ppocrv4-rec")
    original = onnx.load(str(model_path))
    task = get_task("ocr-rec", eval_limit=32).bind(original)
    calib, ev = task.load(None)
    calib = calib[:calib_limit] if calib_limit else calib
    ctx = recipe_context(original, task, calib, task.default_budget, threads)
    paths, specs = {"original": model_path}, {"original": "original"}
    for spec in recipes:
        t0 = time.time()
        out = get_recipe(spec).apply(ctx)
        p = work / (spec.replace(":", "_").replace("=", "-") + ".onnx")
        onnx.save(out.model, str(p))
        paths[spec], specs[spec] = p, spec
        print(f"  built {spec} ({time.time() - t0:.1f} s)", flush=True)
    return paths, specs, task.bench_feeds(ev)


def run(quick: bool = False, rounds: int | None = None, threads: int = THREADS) -> dict:
    """Estimate vs measurement for every candidate; returns `roofline_err` (worst ratio) and the rows."""
    import onnx

    from edgeslim.bench import BenchSpec, bench_rounds, machine_info, worker_env
    from edgeslim.profiles import candidate_precision, graph_costs, roofline
    from edgeslim.profiles.host import host_profile

    t_start = time.time()
    rounds = rounds or (3 if quick else 7)
    work = Path(tempfile.mkdtemp(prefix="edgeslim-roofline-"))
    print("building candidates ...", flush=True)
    paths, specs, feeds = _build(QUICK_RECIPES if quick else FULL_RECIPES, work, threads, 16 if quick else None)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    print("measuring the host profile ...", flush=True)
    host = host_profile(threads=threads, refresh=True)
    plain = dataclasses.replace(host, kernel_ceilings={}, cache_bandwidth_bytes_per_s=None, node_overhead_s=None,
                                run_overhead_s=None)
    print(f"timing {len(paths)} candidates, {rounds} rounds ...", flush=True)
    bench, tel = bench_rounds([BenchSpec(id=n, engine="ort", artifact=str(p)) for n, p in paths.items()], feeds, threads,
                              rounds=rounds, policy=POLICY)
    rows = []
    for r in bench:
        prec, note = candidate_precision(specs[r.id], "ort")
        costs = graph_costs(onnx.load(str(paths[r.id])), shapes)
        est, est_plain = roofline(costs, prec, host), roofline(costs, prec, plain)
        row = {"candidate": r.id, "precision": prec, "note": note or est.reason, "ok": r.ok, "reason": r.reason}
        if r.ok and est.seconds:
            meas = r.latency()["p50"]
            row.update(measured_p50_ms=meas, est_ms=round(est.ms, 3), bound=est.bound,
                       split_ms={k: round(v * 1e3, 3) for k, v in est.split_s.items()},
                       ratio=round(max(est.ms / meas, meas / est.ms), 3),
                       plain_est_ms=round(est_plain.ms, 3), plain_ratio=round(max(est_plain.ms / meas, meas / est_plain.ms), 3))
        rows.append(row)
        print(f"  {r.id:24s} {prec:5s} measured {row.get('measured_p50_ms', '-')} ms  estimate {row.get('est_ms', '-')} ms "
              f"({row.get('bound', '')})  ratio {row.get('ratio', '-')}  plain {row.get('plain_est_ms', '-')} ms", flush=True)
    done = [r for r in rows if "ratio" in r]
    mach = machine_info(threads)
    return {
        "roofline_err": max((r["ratio"] for r in done), default=None),
        "plain_err": max((r["plain_ratio"] for r in done), default=None),
        "n_candidates": len(done), "quick": quick, "threads": threads, "rounds": rounds, "policy": POLICY,
        "worker_env": worker_env(POLICY), "bench_input_shape": [list(s) for s in shapes.values()],
        "machine": mach, "cpu_flags": mach.get("flags"),
        "load": [tel.get("loadavg_before"), tel.get("loadavg_after")], "noisy": tel.get("noisy"),
        "noise_reasons": tel.get("noise_reasons"), "host_profile": host.to_dict(), "rows": rows,
        "seconds": round(time.time() - t_start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=THREADS)
    args = ap.parse_args()
    res = run(quick=args.quick, rounds=args.rounds, threads=args.threads)
    worst = max((r for r in res["rows"] if "ratio" in r), key=lambda r: r["ratio"], default={})
    print(f"RESULT roofline_err={res['roofline_err']} plain_err={res['plain_err']} worst={worst.get('candidate')} "
          f"n={res['n_candidates']} threads={res['threads']} policy={res['policy']} noisy={res['noisy']} "
          f"load={res['load']} quick={res['quick']}")
    if not args.quick:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "seed_roofline.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    # the benchmark workers get the policy's variables from bench_rounds; this process (host microbenchmarks) too
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    sys.exit(main())
