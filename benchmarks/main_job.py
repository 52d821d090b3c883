"""The main job against what a user would pick instead, in ONE run on the default PP-OCRv4 recognizer.

Rows: ORT fp32 (the model as shipped); onnxslim (graph simplification); ORT's quantizer as a new user calls it
(`quantize_static` defaults); ORT's quantizer as a careful user runs it (opset 13, `quant_pre_process`, per-channel
QDQ, first and last layers excluded); NNCF (`nncf.quantize` defaults after the opset-13 upgrade NNCF needs; with the
MIXED preset and the first/last layers ignored; `quantize_with_accuracy_control` with a CER validation function on
the labelled calibration lines); edgeslim's selection (`optimize`, no flags), on whichever engine it picked.
Each is timed at 1x3x48x320 in its own worker process, order rotated every round, ratio to ORT fp32 per round
(median and range), thread policy recorded; CER on the bundled eval split and on the held-out real crops
(evaluation only, never calibration). A row whose tool fails is recorded with its reason.
Writes the table into BENCHMARKS.md between markers and ends with one RESULT line.

    pip install -e '.[peers]'   # nncf, onnxslim
    python benchmarks/main_job.py [--rounds 9] [--threads 2] [--cpu dedicated] [--shared ../shared] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import onnx
import onnx.version_converter

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


def first_last(model: onnx.ModelProto) -> list[str]:
    """Names of the first Conv and the last MatMul/Gemm/Conv: the layers careful users keep in float."""
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    return [nodes[0].name, nodes[-1].name] if len(nodes) > 1 else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", default="dedicated", choices=["dedicated", "shared"])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgeslim.bench import BenchSpec, bench_rounds, machine_info
    from edgeslim.engines import get_engine
    from edgeslim.study import StudyConfig, optimize
    from edgeslim.tasks import get_task
    from edgeslim.tasks.base import evaluate
    from edgeslim.tasks.ocr_rec import cer, edit_distance
    from edgeslim.zoo import resolve

    logging.getLogger().setLevel(logging.ERROR)
    t_start = time.time()
    model_path = resolve("ppocrv4-rec")
    original = onnx.load(str(model_path))
    task = get_task("ocr-rec").bind(original)
    calib, ev = task.load(None)
    real = real_crops(args.shared)
    work = Path(tempfile.mkdtemp(prefix="edgeslim-mainjob-"))
    # what a user does before NNCF or ORT's per-channel quantizer (both need opset >= 13): onnx's own converter
    up13 = onnx.version_converter.convert_version(original, 13)
    up13_path = work / "opset13.onnx"
    onnx.save(up13, str(up13_path))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(task.batches(calib, 1))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else b.feeds

    # name -> (engine, artifact) ; name -> failure reason
    rows: dict[str, tuple[str, Path]] = {"ORT fp32": ("ort", model_path)}
    failed: dict[str, str] = {}
    built_s: dict[str, float] = {}

    def build(name: str, fn) -> None:
        print(f"building: {name} ...", flush=True)
        t0 = time.time()
        try:
            rows[name] = fn()
            built_s[name] = round(time.time() - t0, 1)
        except Exception as e:  # a peer tool failing is a row with its reason, not a dead benchmark
            failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
            traceback.print_exc(limit=2)

    def onnxslim_row():
        import onnxslim

        p = work / "onnxslim.onnx"
        onnx.save(onnxslim.slim(onnx.load(str(model_path))), str(p))
        return "ort", p

    def ort_defaults():
        p = work / "ort_static_default.onnx"
        quantize_static(str(model_path), str(p), Reader())
        return "ort", p

    def ort_careful():
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = work / "ort_pre.onnx"
        quant_pre_process(str(up13_path), str(pre), skip_symbolic_shape=True)
        p = work / "ort_careful.onnx"
        quantize_static(str(pre), str(p), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        nodes_to_exclude=first_last(onnx.load(str(pre))))
        return "ort", p

    def nncf_dataset():
        import nncf

        return nncf.Dataset([b.feeds for b in task.batches(calib, 1)])

    def nncf_default():
        import nncf

        p = work / "nncf_default.onnx"
        onnx.save(nncf.quantize(up13, nncf_dataset(), subset_size=len(calib)), str(p))
        return "ort", p

    def nncf_mixed():
        import nncf

        p = work / "nncf_mixed.onnx"
        q = nncf.quantize(up13, nncf_dataset(), subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED,
                          ignored_scope=nncf.IgnoredScope(names=first_last(up13)))
        onnx.save(q, str(p))
        return "ort", p

    def nncf_accuracy_control():
        import nncf
        import onnxruntime as ort

        texts = [s.text for s in calib]

        def validate(model, data):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            preds = [task.decode(sess.run(None, feeds))[0] for feeds in data]
            per = [1.0 - edit_distance(p, r) / max(len(r), 1) for p, r in zip(preds, texts)]
            return 1.0 - cer(preds, texts), per

        p = work / "nncf_accuracy_control.onnx"
        q = nncf.quantize_with_accuracy_control(up13, nncf_dataset(), nncf_dataset(), validate, max_drop=0.005,
                                                subset_size=len(calib))
        onnx.save(q, str(p))
        return "ort", p

    build("onnxslim", onnxslim_row)
    build("ORT quantize_static (defaults)", ort_defaults)
    build("ORT careful (opset 13, quant_pre_process, per-channel QDQ, first/last fp32)", ort_careful)
    build("NNCF quantize (defaults, opset 13)", nncf_default)
    build("NNCF quantize (MIXED, first/last ignored)", nncf_mixed)
    build("NNCF quantize_with_accuracy_control (CER, max_drop 0.005)", nncf_accuracy_control)

    print("running: edgeslim optimize (default recipes, full eval split) ...", flush=True)
    t0 = time.time()
    study = optimize(StudyConfig(model=str(model_path), model_label="ppocrv4-rec", threads=args.threads, rounds=5,
                                 cpu=args.cpu, cache=False), work / "study")
    built_s["edgeslim optimize"] = round(time.time() - t0, 1)
    sel = study.candidate(study.selected)
    sel_name = f"edgeslim selected ({sel.id})"
    rows[sel_name] = (sel.engine, work / "study" / sel.artifact)

    figures = {}
    for name, (eng, path) in rows.items():
        engine = get_engine(eng)
        runner = engine.load(path, args.threads)
        out = {}
        for split, samples in (("eval", ev), ("real", real)):
            preds, nonfinite = evaluate(runner, task, samples)
            out[split] = cer(preds, [s.text for s in samples])
        out["size"] = engine.size_bytes(path)
        figures[name] = out
        print(f"  {name}: CER eval {out['eval']:.4f} real {out['real']:.4f} size {out['size'] / 1e6:.2f} MB", flush=True)

    feeds = task.bench_feeds(ev)
    specs = [BenchSpec(id=n, engine=e, artifact=str(p)) for n, (e, p) in rows.items()]
    res, tel = bench_rounds(specs, feeds, args.threads, rounds=args.rounds, policy=args.cpu,
                            progress=lambda r, n: print(f"  round {r}/{n}", flush=True))
    base = figures["ORT fp32"]
    lines = ["| config | p50 ms | speedup vs ORT fp32 (median [range]) | CER eval | CER real crops | size MB | size ratio |",
             "|---|---|---|---|---|---|---|"]
    result = {}
    for r, (name, f) in zip(res, figures.items()):
        if not r.ok:
            lines.append(f"| {name} | - | failed to time: {r.reason[:80]} | {f['eval']:.4f} | {f['real']:.4f} | "
                         f"{f['size'] / 1e6:.2f} | {f['size'] / base['size']:.2f} |")
            continue
        lat = r.latency()
        sp, rg = r.speedup(), r.speedup_range()
        lines.append(f"| {name} | {lat.get('p50', float('nan')):.2f} | {sp:.2f}x [{rg[0]:.2f}-{rg[1]:.2f}] | {f['eval']:.4f} | "
                     f"{f['real']:.4f} | {f['size'] / 1e6:.2f} | {f['size'] / base['size']:.2f} |")
        result[name] = (sp, f)
    for name, why in failed.items():
        lines.append(f"| {name} | - | failed: {why.replace('|', '/')} | - | - | - | - |")
    m = machine_info(args.threads)
    sp, f = result.get(sel_name, (float("nan"), figures[sel_name]))
    nncf_rows = [n for n in result if n.startswith("NNCF")]
    nncf_best = max(nncf_rows, key=lambda n: result[n][0]) if nncf_rows else None
    nncf_sp, nncf_f = result[nncf_best] if nncf_best else (float("nan"), {"eval": float("nan")})
    int8_selected = any(k in sel.recipe for k in ("int8", "mixed"))
    result_line = (f"RESULT speedup={sp:.3f} dcer={f['eval'] - base['eval']:.4f} real_dcer={f['real'] - base['real']:.4f} "
                   f"size_ratio={f['size'] / base['size']:.3f} selected={sel.id} int8_selected={int8_selected} "
                   f"nncf_speedup={nncf_sp:.3f} nncf_dcer={nncf_f['eval'] - base['eval']:.4f}")
    cand_lines = ["| candidate | status | CER eval | agree w/ fp32 | speedup [range] | size MB | reason |",
                  "|---|---|---|---|---|---|---|"]
    for c in study.candidates:
        rng = f" [{c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}]" if c.speedup_range else ""
        cand_lines.append(f"| {c.id} | {c.status} | {'-' if c.metric is None else f'{c.metric:.4f}'} | "
                          f"{c.fidelity.get('exact_match', float('nan')):.3f} | {'-' if c.speedup is None else f'{c.speedup:.2f}x'}{rng} | "
                          f"{(c.size_bytes or 0) / 1e6:.2f} | {c.reason.replace('|', '/')[:90]} |")
    sel_info = study.selection
    section = "\n".join([
        "<!-- main_job:start -->",
        "## Main job: `edgeslim optimize` on the default PP-OCRv4 recognizer, against ORT's quantizer, NNCF and onnxslim",
        "",
        "Command: `pip install -e '.[peers]' && python benchmarks/main_job.py` (one run; every row below comes from it).",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; {args.threads} threads, thread policy "
        f"`{args.cpu}` (see `edgeslim.engines.base.thread_policy`), onnxruntime {m['onnxruntime']}, Python {platform.python_version()}. "
        f"Input 1x3x48x320; {args.rounds} rounds, each config in its own process, order rotated every round; speedup = median of "
        f"per-round ratios. Eval split: {len(ev)} bundled lines; real crops: {len(real)} held-out photos (evaluation only). "
        f"Load average before/after timing: {tel.get('loadavg_before')} / {tel.get('loadavg_after')}; noisy: {tel.get('noisy')} "
        f"{tel.get('noise_reasons') or ''}.",
        "",
        *lines,
        "",
        f"edgeslim's selection: {sel_info.get('why', '')}; with `--cpu {study.bench.get('other_policy')}` it would be "
        f"`{sel_info.get('if_' + str(study.bench.get('other_policy')))}`. Build times (s): {json.dumps(built_s)}.",
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
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "main_job.md").write_text(section + "\n")
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
