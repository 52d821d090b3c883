"""`optimize`: Model -> Recipe -> Candidate -> Evaluate + Benchmark -> Select. Returns plain data; no printing."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from .bench import BenchSpec, bench_rounds, machine_info
from .engines import get_engine
from .errors import EdgeslimError, InvalidParameterError
from .graph import constants_to_initializers, simplify, upgrade_opset
from .model import load_onnx
from .recipes import RecipeContext, get_recipe
from .tasks import get_task
from .tasks.base import evaluate

__all__ = ["StudyConfig", "Candidate", "StudyResult", "optimize", "DEFAULT_RECIPES", "prepare"]

DEFAULT_RECIPES = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8", "w4", "mixed")
# Precisions tried by default on the mobile engines (each costs a conversion and an evaluation; the full list is
# in each engine's `precisions()` and can be asked for with `--engine-precisions mnn:fp32,mnn:w8,...`).
# MNN's low/bf16 modes give fp32 results on x86 builds without fp16/bf16 kernels, so they are left out by default.
DEFAULT_ENGINE_PRECISIONS = {"mnn": ("fp32", "int8"), "ncnn": ("fp32", "bf16", "int8")}
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    model: str
    task: str = "ocr-rec"
    data: str | None = None
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    engine: str = "ort"
    engines: tuple[str, ...] | None = None  # mobile engines to try beside ort; None: every installed one
    engine_precisions: tuple[str, ...] | None = None  # "mnn:int8", ...; None: DEFAULT_ENGINE_PRECISIONS
    max_drop: float | None = None  # None: the task's default budget
    objective: str = "latency"
    threads: int = 2
    rounds: int = 5
    eval_limit: int | None = None
    calib_limit: int | None = None
    model_label: str | None = None  # how results.json names the model (e.g. a zoo name)


@dataclass
class Candidate:
    id: str
    recipe: str
    engine: str
    status: str = "ok"  # ok | rejected | failed
    reason: str = ""
    metric: float | None = None
    metric_extra: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None
    speedup_range: list[float] = field(default_factory=list)
    size_bytes: int | None = None
    artifact: str | None = None
    nonfinite: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class StudyResult:
    config: StudyConfig
    metric_name: str
    higher_is_better: bool
    budget: float
    baseline: str
    selected: str | None
    candidates: list[Candidate]
    machine: dict
    bench_input_shape: list[int]
    telemetry: dict
    data: dict
    seconds: float

    def to_dict(self) -> dict:
        return {
            "schema": 1,
            "model": self.config.model_label or self.config.model,
            "task": self.config.task,
            "threads": self.config.threads,
            "metric": {"name": self.metric_name, "higher_is_better": self.higher_is_better, "budget": self.budget},
            "objective": self.config.objective,
            "baseline": self.baseline,
            "selected": self.selected,
            "candidates": [c.to_dict() for c in self.candidates],
            "machine": self.machine,
            "bench_input_shape": self.bench_input_shape,
            "bench": {"rounds": self.config.rounds, "method": "own process per candidate, alternating rounds, median of per-round ratios"},
            "telemetry": self.telemetry,
            "data": self.data,
            "seconds": round(self.seconds, 1),
        }

    def to_rows(self) -> list[list[str]]:
        rows = []
        for c in self.candidates:
            mark = "*" if c.id == self.selected else ""
            rows.append([
                c.id + mark, c.status, "-" if c.metric is None else f"{c.metric:.4f}",
                "-" if not c.fidelity else f"{c.fidelity.get('exact_match', 0):.3f}",
                "-" if not c.latency_ms else f"{c.latency_ms['p50']:.2f}",
                "-" if c.speedup is None else f"{c.speedup:.2f}x",
                "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.2f} MB",
                c.reason,
            ])
        return rows


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The fp32 model every recipe starts from: exact rewrites; if one fails, the plain repaired model."""
    try:
        return simplify(model)
    except EdgeslimError:
        raise
    except Exception as e:  # a rewrite meeting a graph it does not expect must not stop the study
        m = upgrade_opset(constants_to_initializers(model), 13)
        return m, {"error": f"graph rewrites skipped: {type(e).__name__}: {e}"}


def _engine_plan(config: StudyConfig) -> list[tuple[str, str]]:
    from .engines import ENGINES, available_engines

    if config.engine_precisions is not None:
        plan = []
        for spec in config.engine_precisions:
            eng, _, prec = spec.partition(":")
            if not prec:
                raise InvalidParameterError(f"engine precision {spec!r} is not engine:precision. Write e.g. mnn:int8.")
            get_engine(eng).check_precision(prec)
            plan.append((eng, prec))
        return plan
    names = available_engines() if config.engines is None else list(config.engines)
    plan = []
    for n in names:
        if n == config.engine:
            continue
        e = ENGINES.get(n)()  # unknown names fail here with close matches
        if config.engines is not None and not e.available():
            raise InvalidParameterError(f"engine {n!r} is not installed. Run: pip install 'edgeslim[engines]'.")
        plan += [(n, p) for p in DEFAULT_ENGINE_PRECISIONS.get(n, e.precisions()[:1]) if p in e.precisions()]
    return plan


def _judge(task, cand: Candidate, base_metric: float, budget: float) -> None:
    if cand.nonfinite:
        cand.status, cand.reason = "rejected", f"{cand.nonfinite} NaN/Inf output values"
        return
    drop = task.drop(cand.metric, base_metric)
    name = task.metric_name
    if drop > budget:
        agree = cand.fidelity.get("exact_match", 1.0)
        collapsed = agree < 0.5 and drop > 5 * budget
        cand.status = "rejected"
        cand.reason = (f"{'collapsed: ' if collapsed else ''}{name} {cand.metric:.4f} vs baseline {base_metric:.4f} "
                       f"(budget {budget}); agrees with fp32 on {agree:.0%}")


def optimize(config: StudyConfig, workdir: Path, progress: Progress | None = None) -> StudyResult:
    """Build every recipe's candidate, evaluate and benchmark it beside the original, select under the budget.

    Artifacts go under `workdir/candidates/`. The caller owns `workdir` (the CLI uses a temp dir and renames it).
    """
    t_start = time.time()
    if config.objective not in ("latency", "size"):
        raise InvalidParameterError(f"--objective {config.objective!r} is not valid. Use latency or size.")
    if config.threads < 1:
        raise InvalidParameterError(f"--threads {config.threads} is not valid. Use 1 or more.")
    prog = progress or (lambda *a: None)
    recipes = [get_recipe(r) for r in config.recipes]  # unknown names fail before any work
    engine = get_engine(config.engine)
    original = load_onnx(config.model)
    prepared, rewrites = prepare(original)
    task = get_task(config.task, eval_limit=config.eval_limit).bind(original)
    calib, ev = task.load(Path(config.data) if config.data else None)
    calib = calib[: config.calib_limit] if config.calib_limit else calib
    budget = config.max_drop if config.max_drop is not None else task.default_budget
    cand_dir = workdir / "candidates"
    cand_dir.mkdir(parents=True, exist_ok=True)

    def run_eval(model_bytes: bytes | Path, samples: list, stage: str, eng=engine):
        runner = eng.load(model_bytes, config.threads)
        prog(stage, 0, len(samples))
        preds, nonfinite = evaluate(runner, task, samples, progress=lambda n: prog(stage, n, len(samples)))
        return preds, nonfinite

    # Baseline: the model as given.
    base = Candidate(id=f"{config.engine}/original", recipe="original", engine=config.engine)
    base_path = cand_dir / f"{config.engine}-original{engine.suffix}"
    engine.convert(original, base_path)
    base.artifact, base.size_bytes = str(base_path.relative_to(workdir)), base_path.stat().st_size
    t0 = time.time()
    try:
        base_preds, base.nonfinite = run_eval(base_path, ev, "evaluate original")
    except Exception as e:
        raise InvalidParameterError(f"{config.model}: the model cannot run on this data ({str(e).splitlines()[0][:200]}). "
                                    "Check --task and --data match the model.") from None
    if hasattr(task, "reference"):
        task.reference = base_preds
    scored = task.score(base_preds, ev)
    base.metric, base.metric_extra = scored.pop("metric"), scored
    base.fidelity = task.fidelity(base_preds, base_preds)
    base.seconds["evaluate"] = round(time.time() - t0, 2)
    calib_preds = None
    if calib:
        calib_preds, _ = run_eval(base_path, calib, "evaluate original (calib)")
        ref_task_state = getattr(task, "reference", None)
        if hasattr(task, "reference"):
            task.reference = calib_preds
        calib_metric = task.score(calib_preds, calib)["metric"]
        if hasattr(task, "reference"):
            task.reference = ref_task_state

    def calib_drop(model: onnx.ModelProto) -> tuple[float, dict]:
        preds, nonfinite = run_eval(model.SerializeToString(), calib, "score on calibration lines")
        if hasattr(task, "reference"):
            saved, task.reference = task.reference, calib_preds
        m = task.score(preds, calib)["metric"]
        if hasattr(task, "reference"):
            task.reference = saved
        fid = task.fidelity(preds, calib_preds)
        return (np.inf if nonfinite else task.drop(m, calib_metric)), fid

    def calib_feeds():
        for b in task.batches(calib, 1):
            yield b.feeds

    if not calib:
        raise InvalidParameterError("the data has no calibration samples. Provide more samples.")
    ctx = RecipeContext(model=prepared, original=original, calib_feeds=calib_feeds,
                        calib_drop=calib_drop if calib_preds is not None else None, budget=budget,
                        progress=prog, cache={"rewrites": rewrites, "calib_count": len(calib)})
    cands = [base]

    def build_and_score(c: Candidate, build: Callable[[], tuple[Any, Path]]) -> None:
        """Build an artifact, evaluate it on the eval lines, judge it; any failure is recorded, never raised."""
        cands.append(c)
        t0 = time.time()
        try:
            eng, path = build()
            c.seconds["build"] = round(time.time() - t0, 2)
            c.artifact, c.size_bytes = str(path.relative_to(workdir)), eng.size_bytes(path)
            t1 = time.time()
            preds, c.nonfinite = run_eval(path, ev, f"evaluate {c.id}", eng)
            c.seconds["evaluate"] = round(time.time() - t1, 2)
            scored = task.score(preds, ev)
            c.metric, c.metric_extra = scored.pop("metric"), scored
            c.fidelity = task.fidelity(preds, base_preds)
            _judge(task, c, base.metric, budget)
        except EdgeslimError as e:
            c.status, c.reason = "failed", str(e)
        except Exception as e:  # a failing candidate never stops the study
            c.status, c.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            c.info.setdefault("traceback", traceback.format_exc(limit=3))

    for r in recipes:
        c = Candidate(id=f"{config.engine}/{r.spec}", recipe=r.spec, engine=config.engine)

        def build_recipe(r=r, c=c):
            out = r.apply(ctx)
            c.info = out.info
            path = cand_dir / f"{config.engine}-{r.spec.replace(':', '_').replace('=', '-').replace(',', '_')}{engine.suffix}"
            return engine, engine.convert(out.model, path)

        build_and_score(c, build_recipe)

    # Engine x precision: the mobile engines convert the original model themselves (with their own rewrites).
    for eng_name, precision in _engine_plan(config):

        def build_engine(eng_name=eng_name, precision=precision):
            eng = get_engine(eng_name)
            path = cand_dir / f"{eng_name}-{precision}{eng.suffix}"
            calib_list = list(calib_feeds()) if eng.needs_calibration(precision) else None
            return eng, eng.convert(original, path, precision=precision, calib_feeds=calib_list)

        build_and_score(Candidate(id=f"{eng_name}/{precision}", recipe=precision, engine=eng_name), build_engine)

    # Benchmark: every candidate that built, each in its own process, alternating rounds.
    feeds = task.bench_feeds(ev)
    specs = [BenchSpec(id=c.id, engine=c.engine, artifact=str(workdir / c.artifact)) for c in cands if c.status != "failed"]
    results, telemetry = bench_rounds(specs, feeds, config.threads, rounds=config.rounds,
                                      progress=lambda r, n: prog("benchmark", r, n))
    by_id = {r.id: r for r in results}
    for c in cands:
        r = by_id.get(c.id)
        if r is None:
            continue
        if not r.ok:
            c.status, c.reason = "failed", r.reason
            continue
        c.latency_ms, c.speedup, c.speedup_range = r.latency(), r.speedup(), r.speedup_range()
        c.info["peak_rss_mb"] = round(r.peak_rss_mb, 1)
        c.info["bench_repeats_per_round"] = r.repeats
    ok = [c for c in cands if c.status == "ok" and c.speedup is not None]
    if config.objective == "latency":
        selected = max(ok, key=lambda c: (c.speedup, -(c.size_bytes or 0))) if ok else None
    else:
        selected = min(ok, key=lambda c: (c.size_bytes or 0, -(c.speedup or 0))) if ok else None
    shape = [int(s) for s in next(iter(feeds.values())).shape]
    return StudyResult(
        config=config, metric_name=task.metric_name, higher_is_better=task.higher_is_better, budget=budget,
        baseline=base.id, selected=selected.id if selected else None, candidates=cands,
        machine=machine_info(config.threads), bench_input_shape=shape, telemetry=telemetry,
        data={"calib": len(calib), "eval": len(ev), "source": config.data or "bundled"},
        seconds=time.time() - t_start,
    )
