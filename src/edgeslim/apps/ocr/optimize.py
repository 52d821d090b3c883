"""`edgeslim optimize ocr-pipeline`: optimize detector, angle classifier and recognizer each under its own budget
with the main job (engine x precision search, evaluation, benchmark, selection), then measure the assembled
pipeline end to end against the original one on whole photos.

Each stage is one run of `edgeslim.study.optimize` on its zoo model and task (`ocr-det` and `ocr-cls` on the
labelled photo set, `ocr-rec` on the bundled line set), written into its own sub-folder exactly as the main job
writes an output folder (deploy.json, results.json, report). `pipeline.json` names the three folders and the
pipeline's pre/post-processing; `edgeslim ocr --models OUTDIR` runs it.

End-to-end text metrics (`text_metrics`) on labelled photos: predicted lines are matched one-to-one to labelled
quads by IoU >= 0.5 (greedy, best first; predictions on "do not care" quads are dropped); hmean of that matching;
CER = total edit distance of matched lines' text to the labels over total label length, a missed label counting
its full length. Text is compared without whitespace and case-insensitively (ICDAR labels words, detectors find
lines, and the recognizers' space and case habits are not what is measured).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...candidate import Status
from ...errors import InvalidParameterError
from .pipeline import PIPELINE_FILE, ZOO_MODELS, OcrConfig, OcrModels, OcrPipeline, parse_det_limit

__all__ = ["STAGES", "optimize_pipeline", "pipeline_pick", "PipelineResult", "text_metrics", "time_pipelines", "normalize_text"]

# stage -> (zoo model, task)
STAGES = {"det": (ZOO_MODELS["det"], "ocr-det"), "cls": (ZOO_MODELS["cls"], "ocr-cls"), "rec": (ZOO_MODELS["rec"], "ocr-rec")}
# The detector input policy the original pipeline (RapidOCR as shipped) uses: shorter side at least 736, longer side at
# most 2000. The stage studies judge the detector at these pixels; smaller inputs are a knob searched end to end.
ORIGINAL_DET_LIMIT = "min:736"
DET_SIZES = (ORIGINAL_DET_LIMIT, "max:960", "max:736")
# the end-to-end gate a smaller detector input must pass against the original pipeline on the evaluation photos
E2E_GATE = {"hmean": 0.01, "cer": 0.01}
Progress = Callable[[str, int, int], None]


def normalize_text(s: str) -> str:
    """What the end-to-end CER compares: no whitespace, case folded."""
    return "".join(s.split()).casefold()


def text_metrics(preds: Sequence[Sequence[tuple[np.ndarray, str]]], photos: Sequence[Any]) -> dict[str, float]:
    """End-to-end metrics over photos: `preds[i]` is photo i's list of (quad, text); `photos[i]` has `quads`,
    `ignore`, `texts` (an `edgeslim.tasks.ocr_det.Photo`). Returns cer, hmean, precision, recall, counts."""
    from ...tasks.ocr_det import detection_scores
    from ...tasks.ocr_rec import edit_distance
    from ...tasks._ocr_geometry import quad_iou

    counts, dist, total, exact = [], 0, 0, 0
    for pred, ph in zip(preds, photos):
        care = [i for i, ign in enumerate(ph.ignore) if not ign]
        dont = [i for i, ign in enumerate(ph.ignore) if ign]
        kept = [k for k, (q, _) in enumerate(pred) if not any(quad_iou(q, ph.quads[g]) >= 0.5 for g in dont)]
        pairs = sorted(((quad_iou(pred[k][0], ph.quads[g]), k, g) for k in kept for g in care), reverse=True)
        used_p, match = set(), {}
        for v, k, g in pairs:
            if v < 0.5:
                break
            if k in used_p or g in match:
                continue
            used_p.add(k)
            match[g] = k
        counts.append((len(match), len(kept), len(care)))
        for g in care:
            ref = normalize_text(ph.texts[g])
            got = normalize_text(pred[match[g]][1]) if g in match else ""
            d = edit_distance(got, ref)
            dist += d
            total += len(ref)
            exact += d == 0 and g in match
    sc = detection_scores(counts)
    n_care = sum(c[2] for c in counts)
    return {"cer": dist / max(total, 1), "hmean": sc["hmean"], "precision": sc["precision"], "recall": sc["recall"],
            "line_acc": exact / max(n_care, 1), "labels": n_care, "predicted": sum(c[1] for c in counts),
            "matched": sum(c[0] for c in counts)}


def time_pipelines(runs: dict[str, Callable[[], Any]], rounds: int = 5, baseline: str | None = None) -> dict:
    """Wall time of each callable (one pass over a photo set), alternating in rounds with the order rotated each
    round; per round, the ratio baseline time / each time. Returns per name: times, ratios, median ratio."""
    names = list(runs)
    base = baseline or names[0]
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
    out = {}
    for n in names:
        ratios = [b / t for b, t in zip(times[base], times[n])]
        out[n] = {"seconds": [round(t, 4) for t in times[n]], "median_s": statistics.median(times[n]),
                  "ratios": [round(x, 4) for x in ratios], "speedup": statistics.median(ratios),
                  "speedup_range": [min(ratios), max(ratios)]}
    return out


@dataclass
class PipelineResult:
    """What `optimize_pipeline` returns: each stage's study, the end-to-end comparison and where it was saved."""

    stages: dict[str, Any]
    e2e: dict
    spec: dict
    saved_to: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.spec


def _stage_row(study, folder: Path) -> dict:
    sel = study.candidate(study.selected) if study.selected else None
    dep = json.loads((folder / "deploy.json").read_text(encoding="utf-8")) if (folder / "deploy.json").is_file() else {}
    model_bytes = sum(f["bytes"] for f in dep.get("files", []) if f["name"] in dep.get("model_files", {}).values())
    base = study.candidate(study.baseline)
    return {"folder": folder.name, "model": study.config.model_label, "task": study.config.task,
            "selected": study.selected, "engine": dep.get("engine"), "precision": dep.get("precision"),
            "bytes": model_bytes, "original_bytes": base.size_bytes,
            "metric": {"name": study.metric_name, "budget": study.budget, "baseline": base.metric,
                       "selected": sel.metric if sel else None},
            "fidelity": sel.fidelity if sel else {}, "speedup": sel.speedup if sel else None}


def pipeline_pick(study) -> str | None:
    """Re-select a stage for the pipeline: among the candidates the main job's selection found tied on speed (none
    beats the fastest by a margin its rounds support), the smallest, then the most faithful to fp32.

    The main job breaks such ties by fidelity first, which keeps a 10.9 MB fp32 recognizer beside a 4.8 MB one that
    is as fast and within the CER budget; a pipeline is judged on its total size too (three models ship together),
    so it breaks them by size. Only candidates within the stage's budget are ever tied. Records the main job's own
    pick under `selection["main_job_selected"]`."""
    if not study.selected:
        return None
    tied = [study.candidate(i) for i in study.selection.get("tied", []) if study.candidate(i).status == Status.OK]
    if not tied:
        return study.selected
    pick = min(tied, key=lambda c: (c.size_bytes or 0, -c.fidelity.get("exact_match", 0.0)))
    if pick.id != study.selected:
        study.selection["main_job_selected"] = study.selected
        study.selection["pipeline_rule"] = ("smallest of the candidates tied on speed (the pipeline's size matters): "
                                            f"{pick.id} ({(pick.size_bytes or 0) / 1e6:.2f} MB) instead of "
                                            f"{study.selected}")
        study.selected = pick.id
    return study.selected


def optimize_pipeline(opts: dict[str, Any], folder: Path, *, det_limit: str | None = None,
                      det_sizes: Sequence[str] = DET_SIZES, e2e_rounds: int = 3,
                      progress: Progress | None = None, command: list[str] | None = None) -> PipelineResult:
    """Run the three stage studies into `folder` (which the caller owns, e.g. an `OutputDir`'s temp folder), write
    `pipeline.json` and `report.md`, and measure the pipeline end to end on the evaluation photos of `opts["data"]`
    (default: the bundled photo set) against the original zoo pipeline. `opts` are resolved options of the main job
    (`edgeslim.api.resolve_options`); `data` is a labelled photo folder (the `ocr-det` format), the recognizer
    always uses its own bundled line set.

    The detector is studied at the original pipeline's input policy (`ORIGINAL_DET_LIMIT`), the recognizer's
    candidates are timed on a batch as the pipeline runs it (`OcrConfig.rec_batch` lines of the median padded
    width). The detector input size is then searched end to end over `det_sizes` (or fixed to `det_limit`): the
    fastest size whose pipeline stays within `E2E_GATE` of the original's hmean and CER on the evaluation photos and
    is faster than the original policy in every timed round; else the original policy. The choice and every size's
    figures are recorded (`e2e["det_sizes"]`, `e2e["det_choice"]`) and the report says it."""
    from ..._version import __version__
    from ...api import save_outputs, study_config
    from ...bench import machine_info
    from ...study import optimize as run_study
    from ...tasks.ocr_det import BUNDLED_PHOTOS, load_photo_set
    from ...tasks.ocr_rec import BUNDLED as BUNDLED_LINES

    t_start = time.time()
    prog = progress or (lambda *a: None)
    folder = Path(folder)
    photos = str(opts.get("data") or BUNDLED_PHOTOS)
    sizes = [det_limit] if det_limit else list(dict.fromkeys([ORIGINAL_DET_LIMIT, *det_sizes]))
    for size in sizes:
        parse_det_limit(size)  # a bad size fails before any study runs
    _, eval_photos = load_photo_set(Path(photos))  # a bad photo folder fails before any study runs
    task_options = {"det": (("det_limit", ORIGINAL_DET_LIMIT),), "rec": (("bench_batch", OcrConfig().rec_batch),)}
    studies, rows = {}, {}
    for stage, (zoo_name, task) in STAGES.items():
        stage_opts = dict(opts, model=zoo_name, task=task, data=str(BUNDLED_LINES) if task == "ocr-rec" else photos,
                          outdir=str(folder / stage))
        if task == "ocr-rec" and stage_opts.get("eval_limit") is None and not stage_opts.get("full"):
            from ...api import DEFAULT_EVAL_LIMIT

            stage_opts["eval_limit"] = DEFAULT_EVAL_LIMIT
        cfg = replace(study_config(stage_opts), task_options=task_options.get(stage, ()))
        cfg.validate()
        sub = folder / stage
        sub.mkdir(parents=True, exist_ok=True)
        study = run_study(cfg, sub, progress=lambda s, a, t, stage=stage: prog(f"{stage}: {s}", a, t), command=command)
        pipeline_pick(study)
        save_outputs(study, sub, stage_opts)
        if not study.selected:
            raise InvalidParameterError(f"the {stage} stage ({zoo_name}) kept no candidate, not even the original; see "
                                        f"{sub / 'report.md'}.")
        studies[stage], rows[stage] = study, _stage_row(study, sub)
    original_config = OcrConfig(det_resize=parse_det_limit(ORIGINAL_DET_LIMIT))
    config = original_config
    spec = {"schema": 1, "kind": "ocr-pipeline", "created_by": f"edgeslim {__version__}",
            "stages": rows, "config": config.to_dict(), "threads": opts["threads"], "cpu": opts["cpu"],
            "total_bytes": sum(r["bytes"] for r in rows.values()),
            "original_total_bytes": sum(r["original_bytes"] or 0 for r in rows.values()),
            "machine": machine_info(opts["threads"]), "command": command}
    (folder / PIPELINE_FILE).write_text(json.dumps(spec, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")

    # end to end, on whole photos: the original zoo pipeline (at its own detector input) vs the assembled one at each
    # detector input size, same threads and policy, timed in one run
    models = OcrModels.from_folder(folder, opts["threads"], opts["cpu"])
    pipes = {"original": OcrPipeline(OcrModels.from_zoo(opts["threads"], opts["cpu"]), original_config)}
    pipes.update({f"optimized@{s}": OcrPipeline(models, replace(original_config, det_resize=parse_det_limit(s)))
                  for s in sizes})
    e2e: dict[str, Any] = {"photos": len(eval_photos), "source": photos, "original_det": ORIGINAL_DET_LIMIT}
    metrics = {}
    for name, pipe in pipes.items():
        prog(f"end to end: {name}", 0, len(eval_photos))
        res = []
        for ph in eval_photos:
            r = pipe.read_array(ph.image, ph.name)
            res.append([(np.asarray(l.quad, np.float32), l.text) for l in r.lines])
            prog(f"end to end: {name}", 1, len(eval_photos))
        metrics[name] = text_metrics(res, eval_photos)
    timing = time_pipelines({n: (lambda p=p: [p.read_array(ph.image, ph.name) for ph in eval_photos])
                             for n, p in pipes.items()}, rounds=e2e_rounds)
    e2e["det_sizes"], chosen, e2e["det_choice"] = _choose_det_size(sizes, metrics, timing)
    config = replace(original_config, det_resize=parse_det_limit(chosen))
    spec["config"] = config.to_dict()
    e2e["original"], e2e["optimized"] = metrics["original"], metrics[f"optimized@{chosen}"]
    e2e["same_det_input"] = metrics[f"optimized@{ORIGINAL_DET_LIMIT}"] if ORIGINAL_DET_LIMIT in sizes else None
    e2e["timing"] = {"original": timing["original"], "optimized": timing[f"optimized@{chosen}"], **timing}
    e2e["speedup"] = timing[f"optimized@{chosen}"]["speedup"]
    spec["e2e"] = e2e
    (folder / PIPELINE_FILE).write_text(json.dumps(spec, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(spec), encoding="utf-8")
    return PipelineResult(stages=studies, e2e=e2e, spec=spec, seconds=time.time() - t_start)


def _choose_det_size(sizes: list[str], metrics: dict[str, dict], timing: dict[str, dict]) -> tuple[list[dict], str, str]:
    """The detector input size the pipeline ships with: the fastest that passes `E2E_GATE` against the original
    pipeline and is faster than the original policy in every timed round (its per-round ratio to it above 1); else
    the original policy (or the one size given). Returns one row per size, the choice and the sentence saying why."""
    orig, ref = metrics["original"], f"optimized@{sizes[0]}"
    rows = []
    for s in sizes:
        m, t = metrics[f"optimized@{s}"], timing[f"optimized@{s}"]
        vs_ref = [a / b for a, b in zip(timing[ref]["seconds"], t["seconds"])]
        fails = []
        if m["hmean"] < orig["hmean"] - E2E_GATE["hmean"]:
            fails.append(f"hmean {m['hmean']:.4f} < original {orig['hmean']:.4f} - {E2E_GATE['hmean']}")
        if m["cer"] > orig["cer"] + E2E_GATE["cer"]:
            fails.append(f"CER {m['cer']:.4f} > original {orig['cer']:.4f} + {E2E_GATE['cer']}")
        rows.append({"det": s, "cer": m["cer"], "hmean": m["hmean"], "speedup": t["speedup"],
                     "speedup_range": t["speedup_range"], "vs_first": [round(x, 4) for x in vs_ref],
                     "passed": not fails, "reason": "; ".join(fails)})
    ok = [r for r in rows[1:] if r["passed"] and min(r["vs_first"]) > 1.0]
    if len(sizes) == 1:
        return rows, sizes[0], f"detector input {sizes[0]}, as asked"
    if not ok:
        return rows, sizes[0], (f"detector input {sizes[0]} (the original's): no smaller input passed the end-to-end gate "
                                f"(hmean -{E2E_GATE['hmean']}, CER +{E2E_GATE['cer']}) and was faster in every round")
    best = max(ok, key=lambda r: statistics.median(r["vs_first"]))
    return rows, best["det"], (f"detector input {best['det']} instead of the original's {sizes[0]}: "
                               f"{statistics.median(best['vs_first']):.2f}x faster end to end (every round faster), hmean "
                               f"{best['hmean'] - orig['hmean']:+.4f} and CER {best['cer'] - orig['cer']:+.4f} against the "
                               "original pipeline on the evaluation photos")


def markdown(spec: dict) -> str:
    """The pipeline's report: one row per stage, then the end-to-end comparison."""
    e = spec.get("e2e", {})
    lines = ["# edgeslim optimize ocr-pipeline", "",
             f"- threads {spec['threads']}, thread policy {spec['cpu']}; detector input {spec['config']['det_resize']}",
             f"- models: {spec['total_bytes'] / 1e6:.2f} MB (original {spec['original_total_bytes'] / 1e6:.2f} MB)", "",
             "| stage | model | selected | metric (baseline -> selected, budget) | agree w/ fp32 | stage speedup | MB |",
             "|---|---|---|---|---|---|---|"]
    for stage, r in spec["stages"].items():
        m = r["metric"]
        lines.append(f"| {stage} | {r['model']} | {r['selected']} | {m['name']} {m['baseline']:.4f} -> "
                     f"{(m['selected'] if m['selected'] is not None else float('nan')):.4f} ({m['budget']}) | "
                     f"{r['fidelity'].get('exact_match', float('nan')):.3f} | "
                     f"{(r['speedup'] or 1.0):.2f}x | {r['bytes'] / 1e6:.2f} |")
    if e:
        lines += ["", f"## End to end on {e['photos']} photos ({e['source']})", "",
                  "| pipeline | CER | hmean | line accuracy | median s per pass | speedup (median of rounds) |", "|---|---|---|---|---|---|"]
        for n in ("original", "optimized"):
            t = e["timing"][n]
            lines.append(f"| {n} | {e[n]['cer']:.4f} | {e[n]['hmean']:.4f} | {e[n]['line_acc']:.3f} | {t['median_s']:.3f} | "
                         f"{t['speedup']:.2f}x [{t['speedup_range'][0]:.2f}-{t['speedup_range'][1]:.2f}] |")
        if e.get("det_sizes"):
            lines += ["", f"**{e['det_choice']}.**", "",
                      "| optimized, detector input | CER | hmean | speedup vs original | end-to-end gate |", "|---|---|---|---|---|"]
            for r in e["det_sizes"]:
                lines.append(f"| {r['det']}{' (original)' if r['det'] == e.get('original_det') else ''} | {r['cer']:.4f} | "
                             f"{r['hmean']:.4f} | {r['speedup']:.2f}x [{r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}] | "
                             f"{'passed' if r['passed'] else r['reason']} |")
    return "\n".join(lines) + "\n"
