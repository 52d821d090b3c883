"""The main job against what a user would do by hand, in ONE run on the default PP-OCRv4 recognizer.

Rows: ORT fp32 (the model as shipped); ORT's quantizer as a new user calls it (`quantize_static` defaults);
ORT's best manual setting (opset upgrade + per-channel QDQ); edgeslim's selected candidate (`optimize`, no flags).
Each is timed at 1x3x48x320 in its own worker process, alternating rounds, ratio to ORT fp32 per round (median and
range); CER on the bundled eval split and on the held-out real crops (evaluation only, never calibration).
Writes the table into BENCHMARKS.md between markers and ends with one RESULT line.

    python benchmarks/main_job.py [--rounds 9] [--shared ../shared] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]


def real_crops(shared: Path):
    """The held-out real crops (labels.tsv with a header: crop, text, ...)."""
    from edgeslim.tasks.base import read_image
    from edgeslim.tasks.ocr_rec import Line

    folder = shared / "data" / "ocr_real" / "crops"
    rows = (folder / "labels.tsv").read_text(encoding="utf-8").splitlines()
    head = rows[0].split("\t")
    ci, ti = head.index("crop"), head.index("text")
    return [Line(r.split("\t")[ci], read_image(folder / r.split("\t")[ci]), r.split("\t")[ti]) for r in rows[1:] if r.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgeslim.bench import BenchSpec, bench_rounds, machine_info
    from edgeslim.engines import get_engine
    from edgeslim.graph import constants_to_initializers, upgrade_opset
    from edgeslim.study import StudyConfig, optimize
    from edgeslim.tasks import get_task
    from edgeslim.tasks.base import evaluate
    from edgeslim.tasks.ocr_rec import cer
    from edgeslim.zoo import resolve

    t_start = time.time()
    model_path = resolve("ppocrv4-rec")
    original = onnx.load(str(model_path))
    task = get_task("ocr-rec").bind(original)
    calib, ev = task.load(None)
    real = real_crops(args.shared)
    work = Path(tempfile.mkdtemp(prefix="edgeslim-mainjob-"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(task.batches(calib, 1))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else b.feeds

    import logging

    logging.getLogger().setLevel(logging.ERROR)
    rows: dict[str, Path] = {"ORT fp32": model_path}
    print("building: quantize_static defaults ...", flush=True)
    p = work / "ort_static_default.onnx"
    quantize_static(str(model_path), str(p), Reader())
    rows["ORT quantize_static (defaults)"] = p
    print("building: ORT best manual (opset 13 + per-channel QDQ) ...", flush=True)
    up = upgrade_opset(constants_to_initializers(original), 13)
    p = work / "ort_best_manual.onnx"
    quantize_static(up, str(p), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    rows["ORT best manual (opset 13, per-channel QDQ)"] = p

    print("running: edgeslim optimize (default recipes, full eval split) ...", flush=True)
    study = optimize(StudyConfig(model=str(model_path), model_label="ppocrv4-rec", threads=args.threads, rounds=5), work / "study")
    sel = next(c for c in study.candidates if c.id == study.selected)
    rows[f"edgeslim selected ({sel.id})"] = work / "study" / sel.artifact

    engine = get_engine("ort")
    figures = {}
    for name, path in rows.items():
        runner = engine.load(path, args.threads)
        out = {}
        for split, samples in (("eval", ev), ("real", real)):
            preds, nonfinite = evaluate(runner, task, samples)
            out[split] = cer(preds, [s.text for s in samples])
        out["size"] = path.stat().st_size
        figures[name] = out
        print(f"  {name}: CER eval {out['eval']:.4f} real {out['real']:.4f} size {out['size'] / 1e6:.2f} MB", flush=True)

    feeds = task.bench_feeds(ev)
    specs = [BenchSpec(id=n, engine="ort", artifact=str(p)) for n, p in rows.items()]
    res, tel = bench_rounds(specs, feeds, args.threads, rounds=args.rounds,
                            progress=lambda r, n: print(f"  round {r}/{n}", flush=True))
    base = figures["ORT fp32"]
    lines = [
        "| config | p50 ms | speedup vs ORT fp32 (median [range]) | CER eval | CER real crops | size MB | size ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    result = {}
    for r, (name, f) in zip(res, figures.items()):
        lat = r.latency()
        sp, rg = r.speedup(), r.speedup_range()
        lines.append(f"| {name} | {lat.get('p50', float('nan')):.2f} | {sp:.2f}x [{rg[0]:.2f}-{rg[1]:.2f}] | {f['eval']:.4f} | "
                     f"{f['real']:.4f} | {f['size'] / 1e6:.2f} | {f['size'] / base['size']:.2f} |")
        result[name] = (sp, f)
    m = machine_info(args.threads)
    sel_name = next(n for n in rows if n.startswith("edgeslim"))
    sp, f = result[sel_name]
    manual_sp = result["ORT best manual (opset 13, per-channel QDQ)"][0]
    result_line = (f"RESULT speedup={sp:.3f} dcer={f['eval'] - base['eval']:.4f} real_dcer={f['real'] - base['real']:.4f} "
                   f"size_ratio={f['size'] / base['size']:.3f} ort_best_manual_speedup={manual_sp:.3f}")
    cand_lines = ["| candidate | status | CER eval (subset of study) | agree w/ fp32 | speedup | size MB | reason |", "|---|---|---|---|---|---|---|"]
    for c in study.candidates:
        cand_lines.append(f"| {c.id} | {c.status} | {'-' if c.metric is None else f'{c.metric:.4f}'} | "
                          f"{c.fidelity.get('exact_match', float('nan')):.3f} | {'-' if c.speedup is None else f'{c.speedup:.2f}x'} | "
                          f"{(c.size_bytes or 0) / 1e6:.2f} | {c.reason.replace('|', '/')[:90]} |")
    section = "\n".join([
        "<!-- main_job:start -->",
        "## Main job: `edgeslim optimize` on the default PP-OCRv4 recognizer",
        "",
        "Command: `python benchmarks/main_job.py` (one run; every row below comes from it).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {args.threads} threads, onnxruntime {m['onnxruntime']}, Python {platform.python_version()}. "
        f"Input 1x3x48x320; {args.rounds} alternating rounds, each config in its own process; speedup = median of per-round ratios. "
        f"Eval split: {len(ev)} bundled lines; real crops: {len(real)} held-out photos (evaluation only). "
        f"CPU during timing: {tel.get('cpu_percent')}.",
        "",
        *lines,
        "",
        "Candidates of the `optimize` run inside this benchmark (selection made on the bundled eval split):",
        "",
        *cand_lines,
        "",
        "```",
        result_line,
        "```",
        f"<!-- took {time.time() - t_start:.0f} s -->",
        "<!-- main_job:end -->",
    ])
    print("\n".join(lines))
    if not args.no_write:
        bm = ROOT / "BENCHMARKS.md"
        text = bm.read_text() if bm.exists() else "# Benchmarks\n"
        if "<!-- main_job:start -->" in text:
            text = re.sub(r"<!-- main_job:start -->.*<!-- main_job:end -->", lambda _: section, text, flags=re.S)
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        bm.write_text(text)
    print(result_line)


if __name__ == "__main__":
    sys.exit(main())
