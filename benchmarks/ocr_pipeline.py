"""Whole-image OCR: RapidOCR as shipped vs the optimized edgeslim pipeline, on the 15 real photos, in one script.

    python benchmarks/ocr_pipeline.py [--models DIR] [--threads 2] [--rounds 5] [--runs 3] [--det-limit min:736]

Without --models, the pipeline is built first with `edgeslim optimize ocr-pipeline` defaults (the studies tune and
calibrate on the bundled generated photos and lines only; the real photos are never seen before this evaluation)
into a temp folder (or --keep DIR).

Procedure: the edgeslim pipeline runs its detector at RapidOCR's own input policy (min:736: the same pixels) unless
--det-limit says otherwise; when the folder ships another detector input (its end-to-end search chose it on the
bundled photos), that pipeline is timed beside them as `edgeslim_shipped`. Both pipelines use the same intra-op thread
count (RapidOCR: `RapidOCR(intra_op_num_threads=T, inter_op_num_threads=1)`; edgeslim: `--threads T`); onnxruntime's
default thread-pool spinning is on in RapidOCR, and edgeslim runs its "dedicated" policy (spinning on) too.
`--runs` runs, each loading every pipeline afresh: one warm-up pass each, then `--rounds` rounds; each round times
one pass of each pipeline over all 15 photos (from the file, decoding included), the order rotated between rounds.
A run's speedup = median over its rounds of (RapidOCR wall time / edgeslim wall time) of the same round;
e2e_speedup = the median of the runs' speedups. Accuracy (`edgeslim.apps.ocr.optimize.text_metrics`, first run's
warm-up outputs): line-level matching of predicted to labelled quads (IoU >= 0.5, "###"/ignored labels do not
count), CER over labelled lines with misses counted in full, text compared without whitespace and
case-insensitively; hmean of the matching. total_mb: bytes of the three model files / 1e6.

Prints `RESULT e2e_speedup= e2e_cer= rapidocr_cer= hmean= rapidocr_hmean= total_mb= photos= same_det_input= runs=`
and writes benchmarks/results/ocr_pipeline.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RAPIDOCR_DET = "min:736"  # RapidOCR's detector input as shipped: shorter side at least 736, longer side at most 2000


def shared() -> Path:
    for p in (os.environ.get("EDGESLIM_SHARED"), ROOT.parent / "shared", "/work/shared"):
        if p and (Path(p) / "data").is_dir():
            return Path(p)
    raise SystemExit("shared data not found: set EDGESLIM_SHARED to the folder holding data/ocr_real")


def real_photos():
    from edgeslim.tasks.ocr_det import load_photo_set

    photos = []
    for sub in ("icdar2015_en", "rects_zh"):
        calib, ev = load_photo_set(shared() / "data" / "ocr_real" / sub)
        folder = shared() / "data" / "ocr_real" / sub / "images"
        photos += [(folder / p.name, p) for p in calib + ev]
    return photos


def build_pipeline(folder: Path, threads: int) -> dict:
    from edgeslim.api import resolve_options
    from edgeslim.apps.ocr.optimize import optimize_pipeline
    from edgeslim.outdir import OutputDir

    opts = resolve_options({"threads": threads, "outdir": str(folder), "force": True})
    with OutputDir(folder, force=True) as od:
        res = optimize_pipeline(opts, od.tmp, command=["benchmarks/ocr_pipeline.py"])
        od.commit()
    return res.spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="an ocr-pipeline folder (default: build one)")
    ap.add_argument("--keep", help="build the pipeline into this folder and keep it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per run")
    ap.add_argument("--runs", type=int, default=3, help="runs, each loading both pipelines afresh; the headline is their median")
    ap.add_argument("--det-limit", default=RAPIDOCR_DET,
                    help=f"the detector input edgeslim runs at (default {RAPIDOCR_DET}: RapidOCR's own, the same pixels)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ocr_pipeline"))
    a = ap.parse_args(argv)

    from dataclasses import replace

    from rapidocr_onnxruntime import RapidOCR

    from edgeslim.apps.ocr.optimize import text_metrics
    from edgeslim.apps.ocr.pipeline import OcrPipeline, parse_det_limit
    from edgeslim.bench import machine_info

    t_build = time.time()
    tmp = None
    if a.models:
        folder = Path(a.models)
    else:
        if a.keep:
            folder = Path(a.keep)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="ocr-pipeline-")
            folder = Path(tmp.name) / "pipeline"
        build_pipeline(folder, a.threads)
    build_s = time.time() - t_build
    photos = real_photos()
    paths = [str(p) for p, _ in photos]
    shipped = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))["config"]["det_resize"]

    def load():
        ours = OcrPipeline.load(folder, threads=a.threads, policy="dedicated")
        own = OcrPipeline(ours.models, ours.config)  # at the detector input the pipeline folder ships with
        ours.config = replace(ours.config, det_resize=parse_det_limit(a.det_limit))
        rapid = RapidOCR(intra_op_num_threads=a.threads, inter_op_num_threads=1)
        fns = {"rapidocr": lambda: [rapid(p) for p in paths], "edgeslim": lambda: [ours.read(p) for p in paths]}
        if shipped != ours.config.det_resize.spec():
            fns["edgeslim_shipped"] = lambda: [own.read(p) for p in paths]
        return fns, ours

    runs, outs = [], None
    for k in range(a.runs):
        fns, ours = load()
        first = {n: fn() for n, fn in fns.items()}  # warm-up; the first run's outputs are scored below
        outs = outs or first
        times = {n: [] for n in fns}
        load_before = os.getloadavg()
        for r in range(a.rounds):
            names = list(fns)
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        ratios = {n: [b / o for b, o in zip(times["rapidocr"], times[n])] for n in fns if n != "rapidocr"}
        runs.append({"seconds": times, "ratios": ratios, "speedup": {n: statistics.median(v) for n, v in ratios.items()},
                     "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
        print(f"run {k + 1}/{a.runs}: e2e_speedup {runs[-1]['speedup']['edgeslim']:.2f} "
              f"(rounds {min(ratios['edgeslim']):.2f}-{max(ratios['edgeslim']):.2f}), load {load_before[0]:.2f}", flush=True)
    per_run = [r["speedup"]["edgeslim"] for r in runs]
    outs_ours, outs_rapid = outs["edgeslim"], outs["rapidocr"]
    ratios = [x for r in runs for x in r["ratios"]["edgeslim"]]
    times = {n: [x for r in runs for x in r["seconds"][n]] for n in runs[0]["seconds"]}

    pred_ours = [[(np.asarray(l.quad, np.float32), l.text) for l in res.lines] for res in outs_ours]
    pred_rapid = [[(np.asarray(b, np.float32), t) for b, t, _ in (res[0] or [])] for res in outs_rapid]
    labels = [ph for _, ph in photos]
    m_ours, m_rapid = text_metrics(pred_ours, labels), text_metrics(pred_rapid, labels)
    m_shipped = (text_metrics([[(np.asarray(l.quad, np.float32), l.text) for l in res.lines] for res in outs["edgeslim_shipped"]],
                              labels) if "edgeslim_shipped" in outs else None)
    # profile: where each pipeline spends its time (seconds over the set, from the warm-up pass)
    prof_ours = {k: round(sum(r.seconds.get(k, 0.0) for r in outs_ours), 3) for k in ("det", "cls", "rec", "total")}
    prof_rapid = {k: round(sum((res[1] or [0, 0, 0])[i] if res[1] and len(res[1]) == 3 else 0.0 for res in outs_rapid), 3)
                  for i, k in enumerate(("det", "cls", "rec"))}
    desc = ours.describe()
    total_mb = desc["total_bytes"] / 1e6
    per_photo = [{"image": Path(p).name, "edgeslim": [t for _, t in po], "rapidocr": [t for _, t in pr]}
                 for p, po, pr in zip(paths, pred_ours, pred_rapid)]
    result = {
        "e2e_speedup": statistics.median(per_run), "per_run_speedup": per_run, "runs": runs,
        "speedup_range": [min(ratios), max(ratios)], "ratios": ratios, "det_limit": a.det_limit,
        "same_det_input": parse_det_limit(a.det_limit).spec() == parse_det_limit(RAPIDOCR_DET).spec(),
        "shipped_det_limit": shipped,
        "seconds": times, "e2e_cer": m_ours["cer"], "rapidocr_cer": m_rapid["cer"], "hmean": m_ours["hmean"],
        "rapidocr_hmean": m_rapid["hmean"], "metrics": {"edgeslim": m_ours, "rapidocr": m_rapid, "edgeslim_shipped": m_shipped},
        "shipped_speedup": (statistics.median([r["speedup"]["edgeslim_shipped"] for r in runs]) if m_shipped else None),
        "total_mb": total_mb,
        "photos": len(paths), "profile_s": {"edgeslim": prof_ours, "rapidocr": prof_rapid},
        "pipeline": desc, "models_folder": str(folder), "build_seconds": round(build_s, 1),
        "threads": a.threads, "rounds": a.rounds, "n_runs": a.runs,
        "thread_policy": {"edgeslim": "dedicated (each engine's own setting for a dedicated CPU: ORT allow_spinning=1, "
                                      "OpenVINO latency hint, ncnn/MNN OpenMP active; see edgeslim.policy)",
                          "rapidocr": "onnxruntime defaults (allow_spinning=1), enable_cpu_mem_arena=False"},
        "rapidocr_config": {"det": "limit_type min, limit_side_len 736, max_side_len 2000", "version": _rapid_version()},
        "machine": machine_info(a.threads), "per_photo_text": per_photo,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from edgeslim.zoo import resolve

    result["rapidocr_mb"] = sum(resolve(n).stat().st_size for n in ("ppocrv4-det", "ppocr-cls", "ppocrv4-rec")) / 1e6
    line = (f"RESULT e2e_speedup={result['e2e_speedup']:.2f} e2e_cer={m_ours['cer']:.4f} rapidocr_cer={m_rapid['cer']:.4f} "
            f"hmean={m_ours['hmean']:.4f} rapidocr_hmean={m_rapid['hmean']:.4f} total_mb={total_mb:.2f} photos={len(paths)} "
            f"same_det_input={result['same_det_input']} runs={a.runs}")
    result["result_line"] = line
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(_markdown(result), encoding="utf-8")
    print(line)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _rapid_version() -> str:
    from importlib.metadata import version

    return version("rapidocr-onnxruntime")


def _markdown(r: dict) -> str:
    mo, mr = r["metrics"]["edgeslim"], r["metrics"]["rapidocr"]
    st = r["pipeline"]["models"]
    rows = "\n".join(f"| {k} | {v.get('engine')} | {v.get('precision')} | {v.get('bytes', 0) / 1e6:.2f} |" for k, v in st.items())
    po, pr = r["profile_s"]["edgeslim"], r["profile_s"]["rapidocr"]
    return f"""# OCR pipeline: RapidOCR as shipped vs edgeslim optimized ({r['measured_at']})

`python benchmarks/ocr_pipeline.py` on {r['photos']} real photos (ICDAR 2015 x10, ReCTS x5), {r['threads']} threads each,
{r['rounds']} alternating rounds; machine {r['machine']['cpu']} ({r['machine']['cores']} cores), flags
{', '.join(r['machine']['flags'])}, onnxruntime {r['machine']['onnxruntime']}, rapidocr-onnxruntime {r['rapidocr_config']['version']}.

    {r['result_line']}

| pipeline | CER | hmean | precision | recall | line acc | median s / 15 photos | models MB |
|---|---|---|---|---|---|---|---|
| RapidOCR (det min:736) | {mr['cer']:.4f} | {mr['hmean']:.4f} | {mr['precision']:.3f} | {mr['recall']:.3f} | {mr['line_acc']:.3f} | {statistics.median(r['seconds']['rapidocr']):.3f} | {r['rapidocr_mb']:.2f} |
| edgeslim (det {r['det_limit']}) | {mo['cer']:.4f} | {mo['hmean']:.4f} | {mo['precision']:.3f} | {mo['recall']:.3f} | {mo['line_acc']:.3f} | {statistics.median(r['seconds']['edgeslim']):.3f} | {r['total_mb']:.2f} |

e2e speedup {r['e2e_speedup']:.2f}x: the median of {r['n_runs']} runs ({', '.join(f'{x:.2f}' for x in r['per_run_speedup'])}), each
the median of {r['rounds']} rounds; every round's ratio lies in {r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}. Load average
before each run: {', '.join(f"{x['loadavg_before'][0]:.2f}" for x in r['runs'])}.{_shipped(r)}
Labelled lines {mo['labels']}; predicted (counted) edgeslim {mo['predicted']}, RapidOCR {mr['predicted']}.

Profile over the set (s, warm-up pass): edgeslim det {po['det']}, cls {po['cls']}, rec {po['rec']}, total {po['total']};
RapidOCR det {pr['det']}, cls {pr['cls']}, rec {pr['rec']}.

| stage | engine | precision | MB |
|---|---|---|---|
{rows}
"""


def _shipped(r: dict) -> str:
    m = r["metrics"].get("edgeslim_shipped")
    if not m:
        return ""
    return (f"\n\nThe folder ships the detector input {r['shipped_det_limit']} (its end-to-end search on the bundled photos "
            f"chose it): {r['shipped_speedup']:.2f}x RapidOCR, CER {m['cer']:.4f}, hmean {m['hmean']:.4f} on these photos "
            "(not the same pixels, so not the headline).")


if __name__ == "__main__":
    sys.exit(main())
