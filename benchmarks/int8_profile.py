"""Where an int8 PP-OCRv4 spends its time on onnxruntime's CPU provider, beside the exact fp32 rewrite.

Builds, with edgeslim's own recipes on the default model: `fp32` (exact rewrites), `int8` (static QDQ, calibrator
auto), `int8:absorb_affine=true` (scalar-affine BatchNormalizations folded into the quantizers), each of these with
`bias_correction=true` (per-channel conv output means matched to fp32), `mixed`. Then, in
one run: speedup vs the model as shipped (own processes, rotated order, median of per-round ratios), CER on the
first 300 bundled eval lines, and onnxruntime's per-op profile (share of kernel time by op type, 2 threads, 30 runs).
Writes benchmarks/results/int8_profile.{json,md}; prints a RESULT line.

    python benchmarks/int8_profile.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent


def profile(path: Path, feeds: dict, threads: int, runs: int = 30) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    agg = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    total = sum(agg.values())
    return {"ms_per_run": round(total / runs / 1e3, 3),
            **{op: round(100 * d / total, 1) for op, d in agg.most_common(10)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgeslim.bench import BenchSpec, bench_rounds, machine_info
    from edgeslim.engines import get_engine
    from edgeslim.recipes import get_recipe
    from edgeslim.study import StudyConfig, evaluate_baseline, prepare
    from edgeslim.tasks.base import evaluate
    from edgeslim.zoo import resolve

    model_path = resolve("ppocrv4-rec")
    work = Path(tempfile.mkdtemp(prefix="edgeslim-int8prof-"))
    # the study's own first stages: the same task, data, budget and recipe context as `edgeslim optimize`
    prep = prepare(StudyConfig(model=str(model_path), eval_limit=300, threads=args.threads, recipes=("fp32",),
                               engines=("ort",), cache=False), work)
    task, ev = prep.task, prep.eval
    ctx = prep.context(evaluate_baseline(prep).candidate)
    paths = {"original": model_path}
    infos = {}
    for spec in ("fp32", "int8", "int8:bias_correction=true", "int8:absorb_affine=true",
                 "int8:absorb_affine=true,bias_correction=true", "mixed"):
        print(f"building {spec} ...", flush=True)
        out = get_recipe(spec).apply(ctx)
        p = work / (spec.replace(":", "_").replace("=", "-") + ".onnx")
        onnx.save(out.model, str(p))
        paths[spec] = p
        infos[spec] = {k: v for k, v in out.info.items() if k in ("calibrator", "absorb_affine", "bias_correction", "fp32_by_sensitivity")}
    ort_engine = get_engine("ort")
    cer = {}
    for name, p in paths.items():
        preds, _ = evaluate(ort_engine.load(p, args.threads), task, ev)
        cer[name] = round(task.score(preds, ev)["metric"], 4)
        print(f"  {name}: CER {cer[name]}", flush=True)
    feeds = task.bench_feeds(ev)
    res, tel = bench_rounds([BenchSpec(id=n, engine="ort", artifact=str(p)) for n, p in paths.items()], feeds,
                            args.threads, rounds=args.rounds, policy="dedicated")
    prof = {n: profile(p, feeds, args.threads) for n, p in paths.items()}
    m = machine_info(args.threads)
    rows = []
    for r in res:
        rows.append({"candidate": r.id, "speedup": r.speedup(), "range": r.speedup_range(), "cer_300": cer[r.id],
                     "profile": prof[r.id], "info": infos.get(r.id, {})})
    out = {"machine": m, "threads": args.threads, "rounds": args.rounds, "policy": "dedicated", "eval_lines": len(ev),
           "load": [tel.get("loadavg_before"), tel.get("loadavg_after")], "noisy": tel.get("noisy"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "int8_profile.json").write_text(json.dumps(out, indent=1))
    md = ["| candidate | speedup vs shipped (median [range]) | CER (300 lines) | kernel ms/run (profiled) | top ops (% of kernel time) |",
          "|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in r["profile"].items() if k != "ms_per_run")
        md.append(f"| {r['candidate']} | {r['speedup']:.2f}x [{r['range'][0]:.2f}-{r['range'][1]:.2f}] | {r['cer_300']:.4f} | "
                  f"{r['profile']['ms_per_run']:.2f} | {ops} |")
    (HERE / "results" / "int8_profile.md").write_text(
        f"Machine: {m['cpu']}, flags {' '.join(m['flags'])}; {args.threads} threads, onnxruntime {m['onnxruntime']}; "
        f"load {out['load']}, noisy {out['noisy']}.\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    sp = {r["candidate"]: r["speedup"] for r in rows}
    print(f"RESULT fp32={sp['fp32']:.3f} int8={sp['int8']:.3f} int8_absorb={sp['int8:absorb_affine=true']:.3f} "
          f"mixed={sp['mixed']:.3f} cer_int8_bc={cer['int8:bias_correction=true']} "
          f"cer_int8_absorb_bc={cer['int8:absorb_affine=true,bias_correction=true']} cer_fp32={cer['fp32']} cer_int8={cer['int8']} cer_int8_absorb={cer['int8:absorb_affine=true']} "
          f"cer_mixed={cer['mixed']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    main()
