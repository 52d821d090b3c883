"""`optimize`: Model -> Recipe -> Candidate -> Evaluate + Benchmark -> Select. Returns plain data; no printing."""

from __future__ import annotations

import itertools
import math
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from .bench import BenchResult, BenchSpec, bench_rounds, machine_info
from .cache import Cache, file_sha256, key_of, tree_sha256, versions
from .engines import get_engine
from .engines.base import read_meta
from .errors import DataError, EdgeslimError, InvalidParameterError
from .graph import prepare
from .model import load_onnx
from .recipes import RecipeContext, get_recipe
from .tasks import get_task
from .tasks.base import evaluate

__all__ = ["StudyConfig", "Candidate", "StudyResult", "optimize", "select", "beats", "recipe_context", "DEFAULT_RECIPES", "prepare",
           "CPU_CHOICES"]

DEFAULT_RECIPES = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8", "w4", "mixed")
Progress = Callable[[str, int, int], None]


CPU_CHOICES = ("dedicated", "shared")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """Everything a run depends on; `validate()` checks every value before any work starts."""

    model: str
    task: str = "ocr-rec"
    data: str | None = None
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    engine: str = "ort"
    engines: tuple[str, ...] | None = None  # mobile engines to try beside ort; None: every installed one
    engine_precisions: tuple[str, ...] | None = None  # "mnn:int8", ...; None: each engine's default precisions
    max_drop: float | None = None  # None: the task's default budget
    objective: str = "latency"
    threads: int = 2
    rounds: int = 5
    eval_limit: int | None = None
    calib_limit: int | None = None
    model_label: str | None = None  # how results.json names the model (e.g. a zoo name)
    cpu: str = "dedicated"  # thread-pool policy that selects: dedicated (spinning pools) or shared (passive)
    confirm_top: int = 3  # candidates re-measured head to head before selecting
    cache: bool = True
    cache_dir: str | None = None

    def validate(self) -> None:
        def bad(opt: str, val, what: str) -> InvalidParameterError:
            return InvalidParameterError(f"{opt} {val!r} is not valid: {what}.")

        if self.max_drop is not None:
            if not isinstance(self.max_drop, (int, float)) or not math.isfinite(self.max_drop) or self.max_drop < 0:
                raise bad("--max-drop", self.max_drop, "give a finite number >= 0, e.g. 0.005")
        if self.objective not in ("latency", "size"):
            raise bad("--objective", self.objective, "use latency or size")
        if self.cpu not in CPU_CHOICES:
            raise bad("--cpu", self.cpu, "use dedicated (an otherwise idle CPU) or shared (a busy CPU)")
        for opt, val, lo, hi in (("--threads", self.threads, 1, 1024), ("--rounds", self.rounds, 1, 1000),
                                 ("--calib-limit", self.calib_limit, 1, 10**9), ("--eval-limit", self.eval_limit, 1, 10**9),
                                 ("--confirm-top", self.confirm_top, 0, 100)):
            if val is None and opt in ("--calib-limit", "--eval-limit"):
                continue
            if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
                raise bad(opt, val, f"give a whole number from {lo} to {hi}")
        get_task(self.task)  # unknown task names fail here, with close matches
        specs = [get_recipe(r).spec for r in self.recipes]  # unknown names and bad option values fail here
        get_engine(self.engine)
        plan = _engine_plan(self)
        if "original" in specs:
            raise InvalidParameterError("--recipes original: the original model is always the baseline. Leave it out.")
        ids = [f"{self.engine}/{sp}" for sp in specs] + [f"{e}/{p}" for e, p in plan]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise InvalidParameterError(f"--recipes/--engine-precisions name {dup[0]} twice (options equal to the defaults "
                                        "name the same recipe). Keep one.")
        if not ids:
            raise InvalidParameterError("no recipe and no engine precision to try: there is nothing to compare with the "
                                        "original. Pass e.g. --recipes fp32,int8.")
        if self.data is not None and not Path(self.data).exists():
            raise DataError(f"{self.data}: data not found. Pass --data with an existing folder or file.")


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
    ratios: list[float] = field(default_factory=list)  # baseline time / this time, per benchmark round
    size_bytes: int | None = None
    artifact: str | None = None
    nonfinite: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    roofline: dict[str, Any] = field(default_factory=dict)  # estimates on chip profiles (edgeslim.profiles), not measured

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
    selection: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # command line, versions, hashes, cache use
    task: Any = field(default=None, repr=False)  # the bound task (pre/post-processing of the selection)
    workdir: Path | None = None
    profiles: list[dict] = field(default_factory=list)  # the chip profiles behind each candidate's `roofline`

    def candidate(self, cid: str) -> Candidate:
        return next(c for c in self.candidates if c.id == cid)

    def to_dict(self) -> dict:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.__dict__.items()}
        return {
            "schema": 1,
            "model": self.config.model_label or self.config.model,
            "task": self.config.task,
            "threads": self.config.threads,
            "metric": {"name": self.metric_name, "higher_is_better": self.higher_is_better, "budget": self.budget},
            "objective": self.config.objective,
            "baseline": self.baseline,
            "selected": self.selected,
            "selection": self.selection,
            "candidates": [c.to_dict() for c in self.candidates],
            "machine": self.machine,
            "bench_input_shape": self.bench_input_shape,
            "bench": {"rounds": self.config.rounds,
                      "method": "own process per candidate, order rotated each round, median of per-round ratios",
                      **self.bench},
            "telemetry": self.telemetry,
            "data": self.data,
            "config": cfg,
            **self.provenance,
            "profiles": self.profiles,
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


def _engine_plan(config: StudyConfig) -> list[tuple[str, str]]:
    from .engines import ENGINES, available_engines

    if config.engine_precisions is not None:
        plan = []
        for spec in config.engine_precisions:
            eng, _, prec = spec.partition(":")
            if not prec:
                raise InvalidParameterError(f"--engine-precisions {spec!r} is not engine:precision. Write e.g. mnn:int8.")
            e = get_engine(eng)
            e.check_precision(prec)
            if not e.available():
                raise InvalidParameterError(f"--engine-precisions {spec!r}: engine {eng!r} is not installed. "
                                            "Run: pip install 'edgeslim[engines]'.")
            plan.append((eng, prec))
        return plan
    names = available_engines() if config.engines is None else list(config.engines)
    plan = []
    for n in names:
        e = ENGINES.get(n)()  # unknown names fail here with close matches
        if n == config.engine:
            continue
        if config.engines is not None and not e.available():
            raise InvalidParameterError(f"--engines {n!r}: engine not installed. Run: pip install 'edgeslim[engines]'.")
        plan += [(n, p) for p in e.default_precisions if p in e.precisions()]
    return plan


def _judge(task, cand: Candidate, base_metric: float, budget: float) -> None:
    if cand.nonfinite:
        cand.status, cand.reason = "rejected", f"{cand.nonfinite} NaN/Inf output values"
        return
    second = task.extra_problem(cand.metric_extra)
    if second:
        cand.status, cand.reason = "rejected", second
        return
    drop = task.drop(cand.metric, base_metric)
    name = task.metric_name
    if drop > budget:
        agree = cand.fidelity.get("exact_match", 1.0)
        collapsed = agree < 0.5 and drop > 5 * budget
        cand.status = "rejected"
        cand.reason = (f"{'collapsed: ' if collapsed else ''}{name} {cand.metric:.4f} vs baseline {base_metric:.4f} "
                       f"(budget {budget}); agrees with fp32 on {agree:.0%}")


# ---- selection -----------------------------------------------------------------------------------------------

MARGIN = 1.05  # a candidate must be at least 5% faster (median of its per-round ratios) to beat another


def beats(a: Candidate, b: Candidate, margin: float = MARGIN) -> bool:
    """Whether `a` is faster than `b` by a margin its rounds support.

    Both were timed in the same rounds, so a/b's per-round ratio is ratios_a[r] / ratios_b[r] (each a ratio to the
    baseline of that round). `a` beats `b` when the median of those is >= `margin` and their lower quartile > 1:
    most rounds agree, not one lucky round.
    """
    r = [x / y for x, y in zip(a.ratios, b.ratios) if y > 0]
    if not r:
        return False
    return float(np.median(r)) >= margin and float(np.quantile(r, 0.25)) > 1.0


def select(cands: list[Candidate], baseline: Candidate, objective: str = "latency") -> tuple[Candidate | None, dict]:
    """Pick the candidate to deliver; returns it and how it was chosen.

    latency: start from the fastest (median ratio); every candidate it does not beat by a supported margin is a tie;
    ties go to fidelity (exact agreement with fp32), then size, then speed. A candidate slower than the baseline is
    never picked (the baseline itself is, when nothing beats it). size: the smallest candidate the baseline does not
    beat, ties to fidelity.
    """
    ok = [c for c in cands if c.status == "ok" and c.ratios
          and (objective != "latency" or c is baseline or (c.speedup or 0) >= 1.0)]
    if baseline.status == "ok" and baseline.ratios and baseline not in ok:
        ok.append(baseline)
    if not ok:
        return None, {"rule": "no candidate passed and was timed"}
    fid = lambda c: c.fidelity.get("exact_match", 0.0)  # noqa: E731
    if objective == "latency":
        fastest = max(ok, key=lambda c: c.speedup or 0)
        tied = [c for c in ok if c is fastest or not beats(fastest, c)]
        pick = max(tied, key=lambda c: (fid(c), -(c.size_bytes or 0), c.speedup or 0))
        if len(ok) == 1:
            why = f"no candidate passed and ran at least as fast as {baseline.id}: the original is kept"
        else:
            why = (f"fastest {fastest.id} ({fastest.speedup:.2f}x); " +
                   (f"it does not beat {', '.join(c.id for c in tied if c is not fastest)} by a {MARGIN:.2f}x margin "
                    f"its rounds support, so the tie went to fidelity, then size: {pick.id}" if len(tied) > 1
                    else "it beats every other timed candidate by a supported margin"))
    else:
        fit = [c for c in ok if c is baseline or not beats(baseline, c)]
        pick = min(fit, key=lambda c: (c.size_bytes or 0, -fid(c), -(c.speedup or 0)))
        tied, fastest = fit, pick
        why = f"smallest candidate not measurably slower than {baseline.id}: {pick.id}"
    return pick, {"rule": f"objective {objective}; margin {MARGIN}x (median per-round ratio, lower quartile > 1)",
                  "fastest": fastest.id, "tied": [c.id for c in tied], "why": why}


def recipe_context(original: onnx.ModelProto, task, calib: list, budget: float, threads: int = 2,
                   progress: Progress | None = None, reference_model: Path | bytes | None = None, engine=None) -> RecipeContext:
    """The one way to build what recipes see: the prepared fp32 model, calibration feeds, and a scorer of candidate
    models on the calibration samples (metric drop and fidelity vs the original), used by `int8:calibrator=auto`
    and `mixed`. `optimize`, `edgeslim quantize` and the MNN int8 path all build it here."""
    engine = engine or get_engine("ort")
    prog = progress or (lambda *a: None)
    memo: dict[str, Any] = {}

    def predict(runner, stage: str) -> tuple[list, int]:
        prog(stage, 0, len(calib))
        return evaluate(runner, task, calib, progress=lambda n: prog(stage, n, len(calib)))

    def reference() -> tuple[list, float]:
        if "preds" not in memo:
            src = reference_model if reference_model is not None else original.SerializeToString()
            preds, _ = predict(engine.load(src, threads), "evaluate original (calib)")
            memo["metric"] = task.score(preds, calib)["metric"]
            memo["preds"] = preds
        return memo["preds"], memo["metric"]

    def score_runner(runner, stage: str = "score on calibration lines") -> tuple[float, dict]:
        """(metric drop vs the original, fidelity) of any engine's runner on the calibration samples."""
        ref_preds, ref_metric = reference()
        preds, nonfinite = predict(runner, stage)
        m = task.score(preds, calib, reference=ref_preds)["metric"]
        return (np.inf if nonfinite else task.drop(m, ref_metric)), task.fidelity(preds, ref_preds)

    def calib_drop(model: onnx.ModelProto) -> tuple[float, dict]:
        return score_runner(engine.load(model.SerializeToString(), threads))

    def calib_feeds():
        for b in task.batches(calib, 1):
            yield b.feeds

    prepared, rewrites = prepare(original)
    return RecipeContext(model=prepared, original=original, calib_feeds=calib_feeds, calib_drop=calib_drop,
                         budget=budget, threads=threads, progress=prog, cache={"rewrites": rewrites, "calib_count": len(calib),
                                                              "score_runner": score_runner})


# ---- the study -----------------------------------------------------------------------------------------------

def _artifact_files(workdir: Path, artifact: str) -> list[Path]:
    """Every file of a candidate: the artifact and what lies beside it under the same stem (sidecar, .param, table)."""
    p = workdir / artifact
    stem = p.name.split(".")[0]
    return sorted(q for q in p.parent.iterdir() if q.is_file() and q.name.split(".")[0] == stem)


def _apply_bench(c: Candidate, r: BenchResult) -> None:
    if not r.ok:
        c.status, c.reason = "failed", r.reason
        return
    c.latency_ms, c.speedup, c.speedup_range, c.ratios = r.latency(), r.speedup(), r.speedup_range(), list(r.ratios)
    c.info["peak_rss_mb"] = round(r.peak_rss_mb, 1)
    c.info["bench_repeats_per_round"] = r.repeats


def confirm_candidates(timed: list[Candidate], k: int) -> list[Candidate]:
    """The candidates the confirm phase re-measures: the `k` fastest in the screen, and every other candidate whose
    screen speedup lies inside the k-th's range of per-round ratios (the screen cannot tell it from the k-th, so
    leaving it out would decide on noise)."""
    ranked = sorted(timed, key=lambda c: -(c.speedup or 0))
    top = ranked[:k]
    if not top:
        return []
    kth = top[-1]
    floor = min(kth.speedup_range) if kth.speedup_range else kth.speedup or 0.0
    return top + [c for c in ranked[k:] if (c.speedup or 0.0) >= floor]


def _attach_roofline(cands: list[Candidate], workdir: Path, model_path: str, shapes: dict[str, tuple], threads: int,
                     progress: Progress) -> list[dict]:
    """Roofline estimates of every built candidate on every chip profile and the measured host (`c.roofline`);
    returns the profiles' summaries. The graph is counted once per candidate artifact; an engine artifact that is not
    ONNX (MNN, ncnn) is estimated from the ONNX model it was converted from, at the candidate's precision. The host
    profile is cached per CPU whatever `--no-cache` says (it describes the machine, not the run). A failure here
    leaves an `error` in the candidate's estimates; the study goes on."""
    from .profiles import candidate_precision, graph_costs, load_profiles, roofline

    try:
        profiles = load_profiles(include_host=True, threads=threads)
    except Exception as e:
        for c in cands:
            c.roofline = {"error": f"profiles unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"}
        return []
    built = [c for c in cands if c.status != "failed" and c.artifact]
    counted: dict[str, list] = {}
    for i, c in enumerate(built):
        progress("roofline estimates", i, len(built))
        art = workdir / c.artifact
        is_onnx = art.suffix == ".onnx"
        src = art if is_onnx else Path(model_path)
        prec, note = candidate_precision(c.recipe, c.engine)
        try:
            if str(src) not in counted:
                counted[str(src)] = graph_costs(load_onnx(src), shapes)
            costs = counted[str(src)]
            est = {p.name: roofline(costs, prec, p).to_dict() for p in profiles}
        except Exception as e:
            c.roofline = {"precision": prec, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            continue
        c.roofline = {"precision": prec, "note": note,
                      "graph": "the candidate's ONNX" if is_onnx else f"the ONNX it was converted from ({c.engine} artifact is not ONNX)",
                      "estimates": {k: {f: v[f] for f in ("ms", "bound", "reason")} for k, v in est.items()}}
    progress("roofline estimates", len(built), len(built))
    return [p.summary() for p in profiles]


def optimize(config: StudyConfig, workdir: Path, progress: Progress | None = None, command: list[str] | None = None) -> StudyResult:
    """Build every recipe's candidate, evaluate and benchmark it beside the original, select under the budget.

    Artifacts go under `workdir/candidates/`. The caller owns `workdir` (the CLI and `edgeslim.optimize` use a temp
    folder swapped in at the end). Built and evaluated candidates are cached (see `edgeslim.cache`).
    """
    t_start = time.time()
    config.validate()
    prog = progress or (lambda *a: None)
    recipes = [get_recipe(r) for r in config.recipes]
    plan = _engine_plan(config)
    engine = get_engine(config.engine)
    original = load_onnx(config.model)
    task = get_task(config.task, eval_limit=config.eval_limit).bind(original)
    calib, ev = task.load(Path(config.data) if config.data else None)
    calib = calib[: config.calib_limit] if config.calib_limit else calib
    if not calib:
        raise DataError("the data has no calibration samples. Provide more samples.")
    budget = config.max_drop if config.max_drop is not None else task.default_budget
    cand_dir = workdir / "candidates"
    cand_dir.mkdir(parents=True, exist_ok=True)
    cache = Cache(config.cache_dir, enabled=config.cache)
    vers = versions()
    from .tasks.ocr_rec import BUNDLED

    data_src = Path(config.data) if config.data else (BUNDLED if config.task == "ocr-rec" else None)
    data_hash = tree_sha256(data_src) if data_src is not None and Path(data_src).exists() else None
    model_hash = file_sha256(config.model)
    mach = machine_info(config.threads)
    # results depend on the CPU too (MNN/ncnn pick kernels and precisions by CPU features)
    common = {"model": model_hash, "task": config.task, "data": data_hash, "calib": len(calib), "eval": len(ev),
              "calib_limit": config.calib_limit, "eval_limit": config.eval_limit, "threads": config.threads,
              "budget": budget, "versions": vers, "engine": config.engine, "cpu": [mach.get("cpu"), mach.get("flags")]}
    n_total = 1 + len(recipes) + len(plan)
    prog("candidates", 0, n_total)

    def run_eval(model_bytes: bytes | Path, samples: list, stage: str, eng=engine):
        runner = eng.load(model_bytes, config.threads)
        prog(stage, 0, len(samples))
        preds, nonfinite = evaluate(runner, task, samples, progress=lambda n: prog(stage, n, len(samples)))
        return preds, nonfinite

    def restore(c: Candidate, key: str) -> tuple[bool, Any]:
        """Fill `c` from the cache; returns (hit, the cached predictions)."""
        hit = cache.get("candidate", key)
        if hit is None:
            return False, None
        entry, folder = hit
        fields = ("status", "reason", "metric", "metric_extra", "fidelity", "size_bytes", "artifact", "nonfinite",
                  "seconds", "info")
        try:  # an entry that cannot be read back is a miss, and is forgotten
            values = {k: entry[k] for k in fields}
            blob = cache.blob(folder)
            for f in entry["files"]:
                shutil.copy2(folder / f, cand_dir / f)
        except Exception:
            cache.drop("candidate", key)
            return False, None
        for k, v in values.items():
            setattr(c, k, v)
        c.cached = True
        return True, blob

    def store(c: Candidate, key: str, preds: Any = None) -> None:
        if c.status == "failed" or c.artifact is None:
            return  # failures may be transient (a timeout): try again next time
        files = _artifact_files(workdir, c.artifact)
        entry = {k: getattr(c, k) for k in ("status", "reason", "metric", "metric_extra", "fidelity", "size_bytes",
                                            "artifact", "nonfinite", "seconds", "info")}
        entry["files"] = [f.name for f in files]
        cache.put("candidate", key, entry, files, preds)

    # Baseline: the model as given.
    base = Candidate(id=f"{config.engine}/original", recipe="original", engine=config.engine)
    base_key = key_of(common, base.id)
    hit_base, base_preds = restore(base, base_key)
    if not hit_base or base_preds is None:
        base_path = cand_dir / f"{config.engine}-original{engine.suffix}"
        engine.convert(original, base_path)
        base.artifact, base.size_bytes = str(base_path.relative_to(workdir)), base_path.stat().st_size
        t0 = time.time()
        try:
            base_preds, base.nonfinite = run_eval(base_path, ev, "evaluate original")
        except Exception as e:
            raise InvalidParameterError(f"{config.model}: the model cannot run on this data ({str(e).splitlines()[0][:200]}). "
                                        "Check --task and --data match the model.") from None
        scored = task.score(base_preds, ev)
        base.metric, base.metric_extra = scored.pop("metric"), scored
        base.fidelity = task.fidelity(base_preds, base_preds)
        base.seconds["evaluate"] = round(time.time() - t0, 2)
        store(base, base_key, base_preds)
    problem = task.baseline_problem(base.metric, len(ev))
    if problem:
        raise DataError(f"{config.data or 'bundled data'}: {problem}")
    prog("candidates", 1, n_total)

    ctx_memo: dict[str, RecipeContext] = {}

    def ctx() -> RecipeContext:
        if "ctx" not in ctx_memo:
            ctx_memo["ctx"] = recipe_context(original, task, calib, budget, config.threads, progress=prog,
                                             reference_model=workdir / base.artifact, engine=engine)
        return ctx_memo["ctx"]

    def calib_feeds():
        for b in task.batches(calib, 1):
            yield b.feeds

    cands = [base]
    keys = {base.id: base_key}

    def build_and_score(c: Candidate, build: Callable[[], tuple[Any, Path]]) -> None:
        """Build an artifact, evaluate it on the eval lines, judge it; any failure is recorded, never raised."""
        cands.append(c)
        keys[c.id] = key = key_of(common, c.id)
        if restore(c, key)[0]:
            prog("candidates", 1, n_total)
            return
        t0 = time.time()
        try:
            prog(f"build {c.id}", 0, 1)
            eng, path = build()
            prog(f"build {c.id}", 1, 1)
            c.seconds["build"] = round(time.time() - t0, 2)
            c.artifact, c.size_bytes = str(path.relative_to(workdir)), eng.size_bytes(path)
            t1 = time.time()
            preds, c.nonfinite = run_eval(path, ev, f"evaluate {c.id}", eng)
            c.seconds["evaluate"] = round(time.time() - t1, 2)
            scored = task.score(preds, ev, reference=base_preds)
            c.metric, c.metric_extra = scored.pop("metric"), scored
            c.fidelity = task.fidelity(preds, base_preds)
            _judge(task, c, base.metric, budget)
            if c.status == "ok" and c.info.get("note"):
                c.reason = c.info["note"]  # what the candidate really is, shown beside its figures
            store(c, key)
        except EdgeslimError as e:
            c.status, c.reason = "failed", str(e)
        except Exception as e:  # a failing candidate never stops the study
            c.status, c.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            c.info.setdefault("traceback", traceback.format_exc(limit=3))
        prog("candidates", 1, n_total)

    for r in recipes:
        c = Candidate(id=f"{config.engine}/{r.spec}", recipe=r.spec, engine=config.engine)

        def build_recipe(r=r, c=c):
            out = r.apply(ctx())
            c.info = out.info
            path = cand_dir / f"{config.engine}-{r.spec.replace(':', '_').replace('=', '-').replace(',', '_').replace('.', 'p')}{engine.suffix}"
            return engine, engine.convert(out.model, path)

        build_and_score(c, build_recipe)

    # Engine x precision: the mobile engines convert the original model themselves (with their own rewrites).
    for eng_name, precision in plan:

        c = Candidate(id=f"{eng_name}/{precision}", recipe=precision, engine=eng_name)

        def build_engine(eng_name=eng_name, precision=precision, c=c):
            eng = get_engine(eng_name)
            path = cand_dir / f"{eng_name}-{precision}{eng.suffix}"
            # calibrating precisions get every calibration feed; the others one, so converters take their example
            # shapes from the user's data (ncnn's pnnx traces at that shape) instead of a made-up 32x32 input
            calib_list = list(calib_feeds()) if eng.needs_calibration(precision) else list(itertools.islice(calib_feeds(), 1))
            kw = {}
            if eng.searches(precision):  # a search scored on the calibration samples with the task's metric
                score = ctx().cache["score_runner"]
                kw = {"score": lambda p: score(eng.load(p, config.threads), f"search {eng_name}/{precision}"),
                      "budget": budget}
            out = eng.convert(original, path, precision=precision, calib_feeds=calib_list, **kw)
            meta = read_meta(out, eng_name)
            c.info.update({k: meta[k] for k in ("note", "int8_weights", "int8_layers", "calibration", "search",
                                                "bf16_layers", "codebook") if k in meta})
            return eng, out

        build_and_score(c, build_engine)

    # Benchmark. Screen: every candidate that built, own processes, rotating order. Confirm: the baseline, the exact
    # fp32 rewrite and the fastest few, head to head with more rounds. Then the confirm set under the other thread
    # policy, to show how the ranking changes on a busy (or idle) CPU.
    feeds = task.bench_feeds(ev)
    other = "shared" if config.cpu == "dedicated" else "dedicated"
    built = [c for c in cands if c.status != "failed"]
    bench_key = key_of(common, [keys[c.id] for c in built], config.rounds, config.cpu, config.confirm_top,
                       mach.get("cpu"), mach.get("flags"))
    hit = cache.get("bench", bench_key)
    bench_info: dict = {"policy": config.cpu}
    phases, telemetry = {}, {}
    if hit is not None:
        try:
            phases = {k: [BenchResult(**r) for r in v] for k, v in hit[0]["phases"].items()}
            telemetry = dict(hit[0]["telemetry"])
            bench_info.update(cached=True, measured_at=hit[0]["measured_at"])
        except Exception:  # unreadable: measure again
            cache.drop("bench", bench_key)
            phases, telemetry, hit = {}, {}, None

    def run_phase(name: str, subset: list[Candidate], rounds: int, policy: str) -> list[BenchResult]:
        if name not in phases:
            specs = [BenchSpec(id=c.id, engine=c.engine, artifact=str(workdir / c.artifact)) for c in subset]
            res, tel = bench_rounds(specs, feeds, config.threads, rounds=rounds, policy=policy,
                                    progress=lambda r, n: prog(f"benchmark ({name})", r, n))
            phases[name], telemetry[name] = res, tel
        return phases[name]

    by_id = {c.id: c for c in cands}
    for r in run_phase("screen", built, config.rounds, config.cpu):
        _apply_bench(by_id[r.id], r)
    timed = [c for c in cands if c.status == "ok" and c.speedup is not None and c is not base]
    top = confirm_candidates(timed, config.confirm_top)
    simple = next((c for c in timed if c.recipe == "fp32" and c.engine == config.engine), None)
    confirm = [base] + [c for c in cands if c in top or c is simple]
    if base.status != "failed" and len(confirm) > 1 and config.confirm_top > 0:
        for c in confirm:
            c.info["screen"] = {"speedup": c.speedup, "range": c.speedup_range}
        for r in run_phase("confirm", confirm, max(2 * config.rounds, 7), config.cpu):
            _apply_bench(by_id[r.id], r)
            by_id[r.id].info["confirmed"] = True
        for r in run_phase("other_policy", confirm, config.rounds, other):
            if r.ok:
                by_id[r.id].info[f"speedup_{other}"] = {"speedup": r.speedup(), "range": r.speedup_range(),
                                                        "ratios": [round(x, 4) for x in r.ratios]}
    # a noisy measurement of the phases that select is not replayed: the next run measures again (the other policy's
    # phase only informs the report)
    noisy_now = any(isinstance(telemetry.get(p), dict) and telemetry[p].get("noisy") for p in ("screen", "confirm"))
    if hit is None and not noisy_now:
        cache.put("bench", bench_key, {"phases": {k: [r.__dict__ for r in v] for k, v in phases.items()},
                                       "telemetry": telemetry, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    pool = [c for c in cands if c.info.get("confirmed")] or [c for c in cands]
    selected, selection = select(pool, base, config.objective)
    # The same choice under the other policy, from its own ratios.
    alt = [Candidate(id=c.id, recipe=c.recipe, engine=c.engine, status=c.status, fidelity=c.fidelity,
                     size_bytes=c.size_bytes, speedup=c.info[f"speedup_{other}"]["speedup"],
                     ratios=c.info[f"speedup_{other}"]["ratios"]) for c in pool if f"speedup_{other}" in c.info]
    if alt:
        alt_base = next((c for c in alt if c.id == base.id), None)
        if alt_base is not None:
            alt_pick, _ = select(alt, alt_base, config.objective)
            selection[f"if_{other}"] = alt_pick.id if alt_pick else None
    screen_tel = telemetry.get("screen", {}) if isinstance(telemetry.get("screen"), dict) else {}
    noisy = any(isinstance(t, dict) and t.get("noisy") for t in telemetry.values())
    bench_info.update(noisy=noisy, noise_reasons=sorted({f"{p}: {r}" for p, t in telemetry.items() if isinstance(t, dict)
                                                         for r in t.get("noise_reasons", [])}),
                      confirm=[c.id for c in confirm], confirm_rounds=max(2 * config.rounds, 7), other_policy=other)
    shape = [int(s) for s in next(iter(feeds.values())).shape]
    profiles = _attach_roofline(cands, workdir, config.model, {k: tuple(v.shape) for k, v in feeds.items()}, config.threads, prog)
    provenance = {"command": command if command is not None else list(sys.argv), "versions": vers,
                  "model_sha256": model_hash, "cache": {"enabled": cache.enabled, "hits": cache.hits, "misses": cache.misses}}
    return StudyResult(
        config=config, metric_name=task.metric_name, higher_is_better=task.higher_is_better, budget=budget,
        baseline=base.id, selected=selected.id if selected else None, candidates=cands,
        machine=mach, bench_input_shape=shape, telemetry=screen_tel, selection=selection, bench=bench_info,
        data={"calib": len(calib), "eval": len(ev), "source": config.data or "bundled", "sha256": data_hash},
        provenance=provenance, task=task, workdir=workdir, seconds=time.time() - t_start, profiles=profiles,
    )
