"""The main job against what a user would pick instead, in ONE run on the default PP-OCRv4 recognizer.

Rows (peers), each the zero-effort or careful pick of a tool a user already has:
- ORT fp32: the model as shipped (the baseline of every ratio);
- onnxslim (graph simplification); ORT's quantizer as a new user calls it (`quantize_static` defaults) and as a
  careful user runs it (opset 13, `quant_pre_process`, per-channel QDQ, first and last layers excluded);
- NNCF on ORT (defaults after the opset-13 upgrade it needs; MIXED preset with first/last ignored;
  `quantize_with_accuracy_control` with a CER validation function on the labelled calibration lines);
- OpenVINO with its default settings on the shipped ONNX (`convert_model` + `save_model`, latency hint, the study's
  threads; the plugin picks the inference precision itself: bf16 on CPUs with native bf16);
- NNCF int8 on OpenVINO (default preset, the calibration lines);
- LiteRT with XNNPACK: fp32 and full int8 from the same converter (onnx2tf), when the litert engine is installed;
- edgeslim's selection: `edgeslim optimize` with no flags (the CLI's defaults), on whichever engine it picked.
Each is timed at 1x3x48x320 in its own worker process, order rotated every round, ratio to ORT fp32 per round
(median and range), thread policy recorded; CER on the bundled eval split and on the held-out real crops
(evaluation only, never calibration). A row whose tool fails is recorded with its reason.

Every run is stored in benchmarks/results/main_job.json (per-round ratios, load average, CPU flags), and the
BENCHMARKS.md section is rendered from that file; `--no-write` writes nothing under the tree; `--render` only
re-renders the section from the stored runs. Ends with one RESULT line naming every peer.

    pip install -e '.[peers]'   # nncf, onnxslim, openvino, LiteRT's converter
    python benchmarks/main_job.py [--rounds 9] [--threads 2] [--cpu dedicated] [--shared ../shared] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
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


PEER_KEYS = {  # row name -> RESULT key (prefix: the tool)
    "onnxslim": "onnxslim",
    "ORT quantize_static (defaults)": "ort_quantize_default",
    "ORT careful (opset 13, quant_pre_process, per-channel QDQ, first/last fp32)": "ort_careful",
    "NNCF quantize (defaults, opset 13)": "nncf_ort_default",
    "NNCF quantize (MIXED, first/last ignored)": "nncf_ort_mixed",
    "NNCF quantize_with_accuracy_control (CER, max_drop 0.005)": "nncf_ort_accuracy_control",
    "OpenVINO (defaults: latency hint, the plugin's own precision)": "openvino_default",
    "NNCF int8 on OpenVINO (default preset)": "openvino_nncf_int8",
    "LiteRT XNNPACK fp32 (onnx2tf)": "litert_fp32",
    "LiteRT XNNPACK full int8 (onnx2tf)": "litert_int8",
}
RESULTS = ROOT / "benchmarks" / "results" / "main_job.json"


def openvino_default(model_path: Path, out: Path) -> Path:
    """What `pip install openvino` and its documentation's first lines give: convert, save (fp16 weights by default),
    compile with the latency hint; the inference precision is the plugin's choice. Written with edgeslim's sidecar so
    its bench worker can time it; the sidecar asks for nothing beyond the latency hint."""
    import openvino as ov

    from edgeslim.engines.base import write_meta

    m = ov.convert_model(str(model_path))
    ov.save_model(m, str(out))
    from edgeslim.engines.openvino import policy_properties
    from edgeslim.policy import ThreadPolicy

    o = onnx.load(str(model_path), load_external_data=False)
    write_meta(out, {"engine": "openvino", "precision": "default", "inputs": [i.name for i in o.graph.input],
                     "outputs": [x.name for x in o.graph.output], "properties": {"PERFORMANCE_HINT": "LATENCY"},
                     "static_recompile": False,  # one dynamic-shape compilation, as the user's compile_model gives
                     "policy_properties": {p.value: policy_properties(p) for p in ThreadPolicy}})
    return out


def build_peers(work: Path, model_path: Path, original, task, calib, evals) -> tuple[dict, dict, dict]:
    """name -> (engine, artifact); name -> failure reason; name -> build seconds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgeslim.engines import get_engine
    from edgeslim.engines.base import read_meta, write_meta
    from edgeslim.tasks.ocr_rec import cer, edit_distance

    up13 = onnx.version_converter.convert_version(original, 13)  # NNCF and ORT's per-channel quantizer need >= 13
    up13_path = work / "opset13.onnx"
    onnx.save(up13, str(up13_path))
    feeds = [b.feeds for b in task.batches(calib, 1)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

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

    def nncf_default():
        import nncf

        p = work / "nncf_default.onnx"
        onnx.save(nncf.quantize(up13, nncf.Dataset(feeds), subset_size=len(feeds)), str(p))
        return "ort", p

    def nncf_mixed():
        import nncf

        p = work / "nncf_mixed.onnx"
        q = nncf.quantize(up13, nncf.Dataset(feeds), subset_size=len(feeds), preset=nncf.QuantizationPreset.MIXED,
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
            preds = [task.decode(sess.run(None, f))[0] for f in data]
            per = [1.0 - edit_distance(p, r) / max(len(r), 1) for p, r in zip(preds, texts)]
            return 1.0 - cer(preds, texts), per

        p = work / "nncf_accuracy_control.onnx"
        q = nncf.quantize_with_accuracy_control(up13, nncf.Dataset(feeds), nncf.Dataset(feeds), validate, max_drop=0.005,
                                                subset_size=len(feeds))
        onnx.save(q, str(p))
        return "ort", p

    def ov_default():
        return "openvino", openvino_default(model_path, work / "ov_default.xml")

    def ov_nncf_int8():  # the engine's convert without a score: plain NNCF PTQ, default preset
        art = get_engine("openvino").convert(original, work / "ov_int8.xml", precision="int8", calib_feeds=feeds)
        write_meta(art, {**read_meta(art, "openvino"), "static_recompile": False})  # compiled as a user would: dynamic
        return "openvino", art

    def litert(precision):
        def build():
            eng = get_engine("litert")  # an unknown engine (extra not installed) fails this row with its reason
            # a static-shape model: converted at the widest line of the data, as the study converts it, so every
            # evaluation line fits (narrower ones are zero-padded, as the recognizer's preprocessing pads)
            return "litert", eng.convert(original, work / f"litert_{precision}{eng.suffix}", precision=precision,
                                         calib_feeds=feeds, input_shapes=widest)
        return build

    widest: dict[str, list[int]] = {}
    for b in task.batches(calib + evals, 1):
        for k, v in b.feeds.items():
            widest[k] = [max(a, c) for a, c in zip(widest.get(k, [0] * v.ndim), [1, *v.shape[1:]])]

    makers = dict(zip(PEER_KEYS, [onnxslim_row, ort_defaults, ort_careful, nncf_default, nncf_mixed, nncf_accuracy_control,
                                  ov_default, ov_nncf_int8, litert("fp32"), litert("int8")]))
    rows, failed, built_s = {"ORT fp32": ("ort", model_path)}, {}, {}
    for name, fn in makers.items():
        print(f"building: {name} ...", flush=True)
        t0 = time.time()
        try:
            rows[name] = fn()
            built_s[name] = round(time.time() - t0, 1)
        except Exception as e:  # a peer tool failing is a row with its reason, not a dead benchmark
            failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
            traceback.print_exc(limit=2)
    return rows, failed, built_s


def measure(args, work: Path) -> dict:
    """One run: build the peers, run `edgeslim optimize` with the CLI's defaults, evaluate every row, time every row
    in the same rounds. Returns the run as stored in main_job.json."""
    from edgeslim.api import study_config
    from edgeslim.bench import BenchSpec, bench_rounds, machine_info
    from edgeslim.engines import get_engine
    from edgeslim.options import resolve_options
    from edgeslim.study import optimize
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
    rows, failed, built_s = build_peers(work, model_path, original, task, calib, ev + real)

    print("running: edgeslim optimize (no flags: the CLI's defaults) ...", flush=True)
    t0 = time.time()
    cfg = study_config(resolve_options({"threads": args.threads, "cpu": args.cpu, "cache": False}))
    study = optimize(cfg, work / "study")
    built_s["edgeslim optimize"] = round(time.time() - t0, 1)
    sel = study.candidate(study.selected)
    sel_name = f"edgeslim selected ({sel.id})"
    rows[sel_name] = (sel.engine, work / "study" / sel.artifact)

    figures = {}
    for name, (eng, path) in rows.items():
        engine = get_engine(eng)
        try:
            runner = engine.load(path, args.threads)
            out = {"engine": eng}
            for split, samples in (("eval", ev), ("real", real)):
                preds, _ = evaluate(runner, task, samples)
                out[split] = cer(preds, [s.text for s in samples])
            out["size"] = engine.size_bytes(path)
            figures[name] = out
            print(f"  {name}: CER eval {out['eval']:.4f} real {out['real']:.4f} size {out['size'] / 1e6:.2f} MB", flush=True)
        except Exception as e:
            failed[name] = f"evaluation: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    timed = {n: rows[n] for n in rows if n in figures}
    specs = [BenchSpec(id=n, engine=e, artifact=str(p)) for n, (e, p) in timed.items()]
    res, tel = bench_rounds(specs, task.bench_feeds(ev), args.threads, rounds=args.rounds, policy=args.cpu,
                            progress=lambda r, n: print(f"  round {r}/{n}", flush=True))
    for r in res:
        f = figures[r.id]
        f.update(ok=r.ok, reason=r.reason, speedup=r.speedup(), range=r.speedup_range(), ratios=[round(x, 4) for x in r.ratios],
                 p50_ms=r.latency().get("p50"))
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t_start),
        "machine": machine_info(args.threads), "threads": args.threads, "policy": args.cpu, "rounds": args.rounds,
        "eval_lines": len(ev), "real_crops": len(real),
        "load": {"before": tel.get("loadavg_before"), "after": tel.get("loadavg_after"),
                 "other_load_cores": tel.get("other_load_cores")},
        "noisy": tel.get("noisy"), "noise_reasons": tel.get("noise_reasons"),
        "rows": figures, "failed": failed, "build_s": built_s, "selected": sel.id, "selected_row": sel_name,
        "selection": {k: v for k, v in study.selection.items()}, "other_policy": study.bench.get("other_policy"),
        "candidates": [{"id": c.id, "status": str(c.status), "metric": c.metric, "agree": c.fidelity.get("exact_match"),
                        "speedup": c.speedup, "range": c.speedup_range, "size": c.size_bytes, "reason": c.reason}
                       for c in study.candidates],
    }


def result_line(run: dict) -> str:
    rows, base = run["rows"], run["rows"]["ORT fp32"]
    sel = rows.get(run["selected_row"], {})

    def sp(f):
        return f.get("speedup") if f.get("ok") else float("nan")

    parts = [f"speedup={sp(sel):.3f}", f"dcer={sel.get('eval', float('nan')) - base['eval']:.4f}",
             f"real_dcer={sel.get('real', float('nan')) - base['real']:.4f}",
             f"size_ratio={sel.get('size', float('nan')) / base['size']:.3f}", f"selected={run['selected']}"]
    for name, key in PEER_KEYS.items():
        f = rows.get(name)
        if f is None:
            parts.append(f"{key}_speedup=nan {key}_dcer=nan")
            continue
        parts.append(f"{key}_speedup={sp(f):.3f} {key}_dcer={f['eval'] - base['eval']:.4f}")
    ok_peers = [rows[n] for n in PEER_KEYS if n in rows and rows[n].get("ok")]
    best = max((sp(f) for f in ok_peers), default=float("nan"))
    parts.append(f"vs_best_peer={sp(sel) / best:.3f}")
    # the peers a user could ship under the CER budget the selection keeps (the task's default budget)
    from edgeslim.tasks.ocr_rec import OcrRecTask

    fair = [f for f in ok_peers if f["eval"] - base["eval"] <= OcrRecTask.default_budget]
    best_fair = max((sp(f) for f in fair), default=float("nan"))
    parts.append(f"vs_best_peer_in_budget={sp(sel) / best_fair:.3f}")
    return "RESULT " + " ".join(parts)


def render(store: dict) -> str:
    """The BENCHMARKS.md section, from the stored runs: the latest run's table, and the range of the headline over
    every stored run on the same CPU flags."""
    run = store["runs"][-1]
    m, base = run["machine"], run["rows"]["ORT fp32"]
    lines = ["| config | engine | speedup vs ORT fp32 (median [range]) | CER eval | CER real crops | size MB | size ratio |",
             "|---|---|---|---|---|---|---|"]
    for name, f in run["rows"].items():
        sp = (f"{f['speedup']:.2f}x [{f['range'][0]:.2f}-{f['range'][1]:.2f}]" if f.get("ok")
              else f"failed to time: {str(f.get('reason'))[:80]}")
        lines.append(f"| {name} | {f['engine']} | {sp} | {f['eval']:.4f} | {f['real']:.4f} | {f['size'] / 1e6:.2f} | "
                     f"{f['size'] / base['size']:.2f} |")
    for name, why in run["failed"].items():
        lines.append(f"| {name} | - | failed: {why.replace('|', '/')} | - | - | - | - |")
    same = [r for r in store["runs"] if r["machine"].get("flags") == m.get("flags")]
    heads = [r["rows"][r["selected_row"]].get("speedup") for r in same if r["rows"].get(r["selected_row"], {}).get("ok")]
    heads = [h for h in heads if h is not None]
    cands = ["| candidate | status | CER eval | agree w/ fp32 | speedup [range] | size MB | reason |", "|---|---|---|---|---|---|---|"]
    def num(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for c in run["candidates"]:
        rng = f" [{c['range'][0]:.2f}-{c['range'][1]:.2f}]" if c["range"] else ""
        sp = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x{rng}"
        cands.append(f"| {c['id']} | {c['status']} | {num(c['metric'], '.4f')} | {num(c['agree'], '.3f')} | {sp} | "
                     f"{(c['size'] or 0) / 1e6:.2f} | {str(c['reason']).replace('|', '/')[:90]} |")
    sel = run["selection"]
    return "\n".join([
        "<!-- main_job:start -->",
        "## Main job: `edgeslim optimize` on the default PP-OCRv4 recognizer, against the tools a user would pick",
        "",
        "Command: `pip install -e '.[peers]' && python benchmarks/main_job.py` (every row of a table comes from one run; "
        "runs are stored in `benchmarks/results/main_job.json` with their per-round ratios and load, and this section is "
        "rendered from that file).",
        f"Latest run {run['measured_at']}: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; {run['threads']} "
        f"threads, thread policy `{run['policy']}`; input 1x3x48x320; {run['rounds']} rounds, each config in its own process, "
        f"order rotated every round; speedup = median of per-round ratios. Eval split: {run['eval_lines']} bundled lines; "
        f"real crops: {run['real_crops']} held-out photos (evaluation only). Load average before/after timing: "
        f"{run['load']['before']} / {run['load']['after']}, other processes {run['load']['other_load_cores']} cores; "
        f"noisy: {run['noisy']} {run['noise_reasons'] or ''}.",
        "",
        *lines,
        "",
        f"The selection's speedup over the {len(heads)} stored run(s) on these CPU flags: "
        + (f"{min(heads):.2f}x-{max(heads):.2f}x (median {statistics.median(heads):.2f}x)." if heads else "none timed."),
        "",
        f"edgeslim's selection: {sel.get('why', '')}; with `--cpu {run['other_policy']}` it would be "
        f"`{sel.get('if_' + str(run['other_policy']))}`. Build times (s): {json.dumps(run['build_s'])}.",
        "",
        "Candidates of the `optimize` run inside this benchmark (selection made on the bundled eval split):",
        "",
        *cands,
        "",
        "```",
        result_line(run),
        "```",
        "<!-- main_job:end -->",
    ])


def write_section(section: str) -> None:
    bm = ROOT / "BENCHMARKS.md"
    text = bm.read_text() if bm.exists() else "# Benchmarks\n"
    if "<!-- main_job:start -->" in text:
        text = re.sub(r"<!-- main_job:start -->.*<!-- main_job:end -->", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    bm.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", default="dedicated", choices=["dedicated", "shared"])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--no-write", action="store_true", help="Write nothing under the tree: print the table and RESULT.")
    ap.add_argument("--render", action="store_true", help="Only re-render BENCHMARKS.md from the stored runs.")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    store = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    if args.render:
        write_section(render(store))
        return
    with tempfile.TemporaryDirectory(prefix="edgeslim-mainjob-") as d:
        run = measure(args, Path(d))
    section = render({"runs": store["runs"] + [run]})
    print(section)
    if not args.no_write:
        store["runs"].append(run)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(store, indent=1, default=str) + "\n")
        write_section(section)
    print(result_line(run))


if __name__ == "__main__":
    sys.exit(main())
