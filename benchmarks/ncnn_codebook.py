"""ncnn `bf16-w8` on the default PP-OCRv4 recognizer: weights as 8-bit k-means codebooks beside plain bf16.

Builds `ncnn/bf16` and `ncnn/bf16-w8` the way `edgeslim optimize` does (the bf16-w8 search scored on the 96 bundled
calibration lines with the task's metric and the default CER budget 0.005), plus `bf16-w8` with every codable layer
coded (no search). Then, in one run: file sizes, CER on the first 300 bundled eval lines, and latency of the three
against the model as shipped on onnxruntime (own processes, rotated order, median of per-round ratios).
Writes benchmarks/results/ncnn_codebook.json; prints a RESULT line.

    python benchmarks/ncnn_codebook.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgeslim.bench import BenchSpec, bench_rounds, machine_info
    from edgeslim.engines import get_engine
    from edgeslim.engines.base import read_meta
    from edgeslim.study import StudyConfig, evaluate_baseline, prepare
    from edgeslim.tasks.base import evaluate
    from edgeslim.zoo import resolve

    model_path = resolve("ppocrv4-rec")
    work = Path(tempfile.mkdtemp(prefix="edgeslim-codebook-"))
    # the study's own first stages: the same task, data, budget and scorer as `edgeslim optimize`
    prep = prepare(StudyConfig(model=str(model_path), eval_limit=300, threads=args.threads, recipes=("fp32",),
                               engines=("ort",), cache=False), work)
    original, task, calib, ev = prep.original, prep.task, prep.calib, prep.eval
    score = prep.context(evaluate_baseline(prep).candidate).score_runner
    ncnn = get_engine("ncnn")
    feeds = [b.feeds for b in task.batches(calib, 8)]
    arts = {
        "ncnn/bf16": ncnn.convert(original, work / "bf16.ncnn.bin", precision="bf16", calib_feeds=feeds[:1]),
        "ncnn/bf16-w8 (searched)": ncnn.convert(
            original, work / "w8.ncnn.bin", precision="bf16-w8", calib_feeds=feeds[:1], budget=task.default_budget,
            score=lambda p: score(ncnn.load(p, args.threads), "search")),
        "ncnn/bf16-w8 (all coded)": ncnn.convert(
            original, work / "w8all.ncnn.bin", precision="bf16-w8", calib_feeds=feeds[:1], budget=task.default_budget,
            score=lambda p: (0.0, {"exact_match": 1.0, "metric_vs_fp32": 0.0})),
    }
    rows = {"ort/original": {"size_mb": round(model_path.stat().st_size / 1e6, 3)}}
    preds, _ = evaluate(get_engine("ort").load(model_path, args.threads), task, ev)
    rows["ort/original"]["cer"] = round(task.score(preds, ev)["metric"], 4)
    for name, art in arts.items():
        preds, _ = evaluate(ncnn.load(art, args.threads), task, ev)
        meta = read_meta(art, "ncnn")
        rows[name] = {"cer": round(task.score(preds, ev)["metric"], 4), "size_mb": round(ncnn.size_bytes(art) / 1e6, 3),
                      "codebook": meta.get("codebook"), "search": meta.get("search")}
        print(name, rows[name]["cer"], rows[name]["size_mb"], flush=True)
    specs = [BenchSpec(id="ort/original", engine="ort", artifact=str(model_path))] + \
            [BenchSpec(id=n, engine="ncnn", artifact=str(a)) for n, a in arts.items()]
    res, tel = bench_rounds(specs, task.bench_feeds(ev), args.threads, rounds=args.rounds, policy="dedicated")
    for r in res:
        rows[r.id].update(speedup=round(r.speedup(), 3), range=[round(x, 3) for x in r.speedup_range()])
    m = machine_info(args.threads)
    out = {"machine": m, "threads": args.threads, "rounds": args.rounds, "policy": "dedicated", "eval_lines": len(ev),
           "load": [tel.get("loadavg_before"), tel.get("loadavg_after")], "noisy": tel.get("noisy"),
           "noise_reasons": tel.get("noise_reasons"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ncnn_codebook.json").write_text(json.dumps(out, indent=1))
    for n, r in rows.items():
        print(f"{n:28s} CER {r['cer']:.4f}  {r['size_mb']:6.2f} MB  {r['speedup']:.2f}x [{r['range'][0]:.2f}-{r['range'][1]:.2f}]")
    s, a, b = rows["ncnn/bf16"], rows["ncnn/bf16-w8 (searched)"], rows["ncnn/bf16-w8 (all coded)"]
    base = rows["ort/original"]
    print(f"RESULT bf16_size_ratio={s['size_mb'] / base['size_mb']:.3f} w8_size_ratio={a['size_mb'] / base['size_mb']:.3f} "
          f"w8all_size_ratio={b['size_mb'] / base['size_mb']:.3f} cer_original={base['cer']} cer_bf16={s['cer']} "
          f"cer_w8={a['cer']} cer_w8all={b['cer']} speedup_bf16={s['speedup']:.2f} speedup_w8={a['speedup']:.2f} "
          f"noisy={out['noisy']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    main()
