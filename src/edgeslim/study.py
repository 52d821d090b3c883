"""`optimize`: Model -> Recipe -> Candidate -> Evaluate + Benchmark -> Select, as a sequence of named stages.

    prepare -> evaluate_baseline -> build -> evaluate -> screen -> confirm -> select -> estimate -> deliver

Each stage is a function with typed inputs and outputs that a test can call alone; `optimize` runs them in order.
Returns plain data; no printing (progress goes to a callback).
"""

from __future__ import annotations

import itertools
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
from .candidate import CACHED_FIELDS, Candidate, Status
from .engines import DEFAULT_ENGINE, get_engine
from .errors import DataError, EdgeslimError, InvalidParameterError
from .graph import prepare as prepare_graph
from .model import load_onnx
from .options import OPTIONS, Objective
from .policy import StrEnum, ThreadPolicy
from .recipes import RecipeContext, get_recipe
from .select import MARGIN, beats, confirm_candidates, select
from .tasks import get_task
from .tasks.base import Task, evaluate

__all__ = ["StudyConfig", "Candidate", "Status", "StudyResult", "optimize", "select", "beats", "recipe_context",
           "DEFAULT_RECIPES", "prepare", "CPU_CHOICES", "MARGIN", "confirm_candidates", "Prepared", "Measurements",
           "evaluate_baseline", "build", "evaluate_candidates", "screen", "confirm", "choose", "estimate", "deliver"]

DEFAULT_RECIPES = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8", "w4", "mixed")
CPU_CHOICES = tuple(p.value for p in ThreadPolicy)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """Everything a run depends on; `validate()` checks every value before any work starts. The options' types,
    defaults and ranges are declared once in `edgeslim.options.OPTIONS`."""

    model: str
    task: str = OPTIONS["task"].default
    data: str | None = None
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    engine: str = DEFAULT_ENGINE
    engines: tuple[str, ...] | None = None  # engines to try beside the default one; None: every installed one
    engine_precisions: tuple[str, ...] | None = None  # "mnn:int8", ...; None: each engine's default precisions
    max_drop: float | None = None  # None: the task's default budget
    objective: Objective = Objective(OPTIONS["objective"].default)
    threads: int = OPTIONS["threads"].default
    rounds: int = OPTIONS["rounds"].default
    eval_limit: int | None = None
    calib_limit: int | None = None
    model_label: str | None = None  # how results.json names the model (e.g. a zoo name)
    cpu: ThreadPolicy = ThreadPolicy(OPTIONS["cpu"].default)  # the thread-pool policy that selects
    confirm_top: int = OPTIONS["confirm_top"].default  # candidates re-measured head to head before selecting
    cache: bool = True
    cache_dir: str | None = None
    device: str = OPTIONS["device"].default  # where candidates are evaluated and timed (edgeslim.devices)
    verify_on: tuple[str, ...] = ()  # devices the selection is re-evaluated on before it ships
    verify_all: bool = False
    verify_limit: int = OPTIONS["verify_limit"].default
    # the task's own settings, as keyword arguments (e.g. the OCR pipeline's detector resize policy, or the recognizer's
    # batch that the benchmark times); API and pipelines only, part of the cache key
    task_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:  # the enums, whether given as members or as their text (checked in validate)
        for name, enum in (("objective", Objective), ("cpu", ThreadPolicy)):
            v = getattr(self, name)
            if not isinstance(v, enum) and v in {m.value for m in enum}:
                object.__setattr__(self, name, enum(v))

    def validate(self) -> None:
        for name in ("max_drop", "objective", "cpu", "threads", "rounds", "calib_limit", "eval_limit", "confirm_top",
                     "verify_limit"):
            OPTIONS[name].check(getattr(self, name))
        from .devices import parse_device

        if not parse_device(self.device).measures_speed:
            raise InvalidParameterError(f"--device {self.device}: speed is never taken from emulation. Time on the host or "
                                        "on a real device, and verify there with --verify-on.")
        for v in self.verify_on:
            parse_device(v)  # a malformed device fails here
        try:  # unknown task names (with close matches) and task options fail here
            get_task(self.task, **dict(self.task_options))
        except TypeError as e:
            raise InvalidParameterError(f"task_options {dict(self.task_options)} for task {self.task}: {e}") from None
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
        cfg = {k: (list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, StrEnum) else v))
               for k, v in self.config.__dict__.items()}
        return {
            "schema": 1,
            "model": self.config.model_label or self.config.model,
            "task": self.config.task,
            "threads": self.config.threads,
            "metric": {"name": self.metric_name, "higher_is_better": self.higher_is_better, "budget": self.budget},
            "objective": str(self.config.objective),
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
            mark = " (selected)" if c.id == self.selected else ""
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
    from .engines import ENGINES, default_engines

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
    names = default_engines() if config.engines is None else list(config.engines)
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
        cand.status, cand.reason = Status.REJECTED, f"{cand.nonfinite} NaN/Inf output values"
        return
    second = task.extra_problem(cand.metric_extra)
    if second:
        cand.status, cand.reason = Status.REJECTED, second
        return
    drop = task.drop(cand.metric, base_metric)
    name = task.metric_name
    if drop > budget:
        agree = cand.fidelity.get("exact_match", 1.0)
        collapsed = agree < 0.5 and drop > 5 * budget
        cand.status = Status.REJECTED
        cand.reason = (f"{'collapsed: ' if collapsed else ''}{name} {cand.metric:.4f} vs baseline {base_metric:.4f} "
                       f"(budget {budget}); agrees with fp32 on {agree:.0%}")


# ---- the recipe context --------------------------------------------------------------------------------------

def recipe_context(original: onnx.ModelProto, task, calib: list, budget: float, threads: int = 2,
                   progress: Progress | None = None, reference_model: Path | bytes | None = None, engine=None) -> RecipeContext:
    """The one way to build what recipes see: the prepared fp32 model, calibration feeds, and a scorer of candidate
    models on the calibration samples (metric drop and fidelity vs the original), used by `int8:calibrator=auto`
    and `mixed`. `optimize`, `edgeslim quantize` and the MNN int8 path all build it here."""
    engine = engine or get_engine(DEFAULT_ENGINE)
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

    prepared, rewrites = prepare_graph(original)
    return RecipeContext(model=prepared, original=original, calib_feeds=calib_feeds, calib_drop=calib_drop,
                         score_runner=score_runner, budget=budget, threads=threads, progress=prog, rewrites=rewrites,
                         calib_count=len(calib))


def _artifact_files(workdir: Path, artifact: str) -> list[Path]:
    """Every file of a candidate: the artifact and what lies beside it under the same stem (sidecar, .param, table)."""
    p = workdir / artifact
    stem = p.name.split(".")[0]
    return sorted(q for q in p.parent.iterdir() if q.is_file() and q.name.split(".")[0] == stem)


def _apply_bench(c: Candidate, r: BenchResult) -> None:
    if not r.ok:
        c.status, c.reason = Status.FAILED, r.reason
        return
    c.latency_ms, c.speedup, c.speedup_range, c.ratios = r.latency(), r.speedup(), r.speedup_range(), list(r.ratios)
    c.info["peak_rss_mb"] = round(r.peak_rss_mb, 1)
    c.info["bench_repeats_per_round"] = r.repeats


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
    built = [c for c in cands if c.status != Status.FAILED and c.artifact]
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


# ---- the stages ----------------------------------------------------------------------------------------------

_LOCAL = None  # run_eval's device for "this host", whatever the study's device is (see Prepared.run_eval)
_STUDY = object()  # run_eval's default: the study's device

@dataclass
class Planned:
    """One candidate to build: a recipe on the default engine, or an engine's own precision."""

    candidate: Candidate
    recipe: Any = None  # a configured Recipe, for recipe candidates
    precision: str | None = None  # for engine-precision candidates


@dataclass
class Prepared:
    """What every later stage reads: the config, the model and bound task, the data, the budget, the cache and the
    keys results are cached under, the machine, and the plan of candidates."""

    config: StudyConfig
    workdir: Path
    original: onnx.ModelProto
    task: Task
    calib: list
    eval: list
    budget: float
    cache: Cache
    common: dict
    machine: dict
    versions: dict
    model_hash: str
    data_hash: str | None
    plan: list[Planned]
    progress: Progress
    keys: dict[str, str] = field(default_factory=dict)  # candidate id -> cache key
    device: Any = None  # an edgeslim.devices.Device: where candidates are evaluated and timed
    _ctx: RecipeContext | None = None

    @property
    def cand_dir(self) -> Path:
        return self.workdir / "candidates"

    def context(self, base: Candidate) -> RecipeContext:
        """The recipe context, built once, when the first recipe or search needs it (scoring against the baseline)."""
        if self._ctx is None:
            self._ctx = recipe_context(self.original, self.task, self.calib, self.budget, self.config.threads,
                                       progress=self.progress, reference_model=self.workdir / base.artifact,
                                       engine=get_engine(self.config.engine))
        return self._ctx

    def run_eval(self, engine, model: bytes | Path, samples: list, stage: str, precision: str = "fp32",
                 device: Any = _STUDY) -> tuple[list, int]:
        """Predictions of a model file on `samples`: on the host (`device` None), or on a device (default: the
        study's) through the model's deploy folder, decoded on the host."""
        device = self.device if device is _STUDY else device
        self.progress(stage, 0, len(samples))
        if device is None or device.kind == "local":
            runner = engine.load(model, self.config.threads)
            return evaluate(runner, self.task, samples, progress=lambda n: self.progress(stage, n, len(samples)))
        import tempfile

        from .deploy import export
        from .devices import evaluate_on

        with tempfile.TemporaryDirectory(prefix="edgeslim-dev-") as d:
            folder = Path(d) / "deploy"
            export(folder, Path(model), engine.name, precision, self.task, self.config.threads, self.config.cpu,
                   extra={"source_model": self.config.model})
            out = evaluate_on(device, folder, self.task, samples, threads=self.config.threads)
        self.progress(stage, len(samples), len(samples))
        return out


def prepare(config: StudyConfig, workdir: Path, progress: Progress | None = None) -> Prepared:
    """Validate, load the model and the data, bind the task, and plan the candidates."""
    config.validate()
    prog = progress or (lambda *a: None)
    original = load_onnx(config.model)
    task = get_task(config.task, eval_limit=config.eval_limit, **dict(config.task_options)).bind(original)
    calib, ev = task.load(Path(config.data) if config.data else None)
    calib = calib[: config.calib_limit] if config.calib_limit else calib
    if not calib:
        raise DataError("the data has no calibration samples. Provide more samples.")
    budget = config.max_drop if config.max_drop is not None else task.default_budget
    (workdir / "candidates").mkdir(parents=True, exist_ok=True)
    data_src = Path(config.data) if config.data else task.default_data()
    data_hash = tree_sha256(data_src) if data_src is not None and Path(data_src).exists() else None
    model_hash, vers, mach = file_sha256(config.model), versions(), machine_info(config.threads)
    # results depend on the CPU too (MNN/ncnn pick kernels and precisions by CPU features)
    common = {"model": model_hash, "task": config.task, "data": data_hash, "calib": len(calib), "eval": len(ev),
              "calib_limit": config.calib_limit, "eval_limit": config.eval_limit, "threads": config.threads,
              "budget": budget, "versions": vers, "engine": config.engine, "cpu": [mach.get("cpu"), mach.get("flags")],
              "device": config.device, "task_options": sorted(config.task_options)}
    plan = [Planned(Candidate(id=f"{config.engine}/{r.spec}", recipe=r.spec, engine=config.engine), recipe=r)
            for r in (get_recipe(s) for s in config.recipes)]
    plan += [Planned(Candidate(id=f"{e}/{p}", recipe=p, engine=e), precision=p) for e, p in _engine_plan(config)]
    from .devices import parse_device

    device = parse_device(config.device)
    if device.kind != "local":  # its environment: the engines' wheels for its architecture, installed once
        prog(f"prepare device {device.spec}", 0, 1)
        device.prepare(sorted({config.engine} | {p.candidate.engine for p in plan}))
        mach = {**mach, "device": device.describe()}
    return Prepared(config=config, workdir=workdir, original=original, task=task, calib=calib, eval=ev, budget=budget,
                    cache=Cache(config.cache_dir, enabled=config.cache), common=common, machine=mach, versions=vers,
                    model_hash=model_hash, data_hash=data_hash, plan=plan, progress=prog, device=device)


def _restore(prep: Prepared, c: Candidate, key: str) -> tuple[bool, Any]:
    """Fill `c` from the candidate cache; returns (hit, the cached predictions)."""
    hit = prep.cache.get("candidate", key)
    if hit is None:
        return False, None
    entry, folder = hit
    try:  # an entry that cannot be read back is a miss, and is forgotten
        values = {k: entry[k] for k in CACHED_FIELDS}
        blob = prep.cache.blob(folder)
        for f in entry["files"]:
            shutil.copy2(folder / f, prep.cand_dir / f)
    except Exception:
        prep.cache.drop("candidate", key)
        return False, None
    for k, v in values.items():
        setattr(c, k, v)
    c.status = Status(c.status)
    c.cached = True
    return True, blob


def _store(prep: Prepared, c: Candidate, key: str, preds: Any = None) -> None:
    if c.status == Status.FAILED or c.artifact is None:
        return  # failures may be transient (a timeout): try again next time
    files = _artifact_files(prep.workdir, c.artifact)
    entry = {k: getattr(c, k) for k in CACHED_FIELDS}
    entry["status"] = str(c.status)
    entry["files"] = [f.name for f in files]
    prep.cache.put("candidate", key, entry, files, preds)


@dataclass
class Baseline:
    candidate: Candidate
    preds: list


def evaluate_baseline(prep: Prepared) -> Baseline:
    """The original model as given, on the default engine: its metric on the eval samples is what the budget is
    measured from, and its predictions what fidelity compares with."""
    config, engine = prep.config, get_engine(prep.config.engine)
    base = Candidate(id=f"{config.engine}/original", recipe="original", engine=config.engine)
    prep.keys[base.id] = key = key_of(prep.common, base.id)
    hit, preds = _restore(prep, base, key)
    if not hit or preds is None:
        path = prep.cand_dir / f"{config.engine}-original{engine.suffix}"
        engine.convert(prep.original, path)
        base.artifact, base.size_bytes = str(path.relative_to(prep.workdir)), path.stat().st_size
        t0 = time.time()
        try:
            preds, base.nonfinite = prep.run_eval(engine, path, prep.eval, "evaluate original")
        except Exception as e:
            raise InvalidParameterError(f"{config.model}: the model cannot run on this data ({str(e).splitlines()[0][:200]}). "
                                        "Check --task and --data match the model.") from None
        scored = prep.task.score(preds, prep.eval)
        base.metric, base.metric_extra = scored.pop("metric"), scored
        base.fidelity = {**prep.task.fidelity(preds, preds), "samples": len(prep.eval)}
        base.seconds["evaluate"] = round(time.time() - t0, 2)
        _store(prep, base, key, preds)
    problem = prep.task.baseline_problem(base.metric, len(prep.eval))
    if problem:
        raise DataError(f"{config.data or 'bundled data'}: {problem}")
    return Baseline(base, preds)


def _artifact_name(engine, spec: str) -> str:
    return spec.replace(":", "_").replace("=", "-").replace(",", "_").replace(".", "p") + engine.suffix


def _build_one(prep: Prepared, base: Baseline, p: Planned) -> tuple[Any, Path]:
    """The artifact of one planned candidate: (its engine, its path)."""
    c, eng = p.candidate, get_engine(p.candidate.engine)
    if p.recipe is not None:
        out = p.recipe.apply(prep.context(base.candidate))
        c.info = out.info
        return eng, eng.convert(out.model, prep.cand_dir / f"{c.engine}-{_artifact_name(eng, p.recipe.spec)}")
    # Engine x precision: the engine converts the original model itself (with its own rewrites). Calibrating
    # precisions get every calibration feed; the others one, so converters take their example shapes from the user's
    # data (ncnn's pnnx traces at that shape) instead of a made-up 32x32 input.
    feeds = (b.feeds for b in prep.task.batches(prep.calib, 1))
    calib = list(feeds) if eng.needs_calibration(p.precision) else list(itertools.islice(feeds, 1))
    kw: dict[str, Any] = {}
    if eng.static_shapes:
        kw["input_shapes"] = _largest_shapes(prep)
    if eng.searches(p.precision):  # a search scored on the calibration samples with the task's metric
        score = prep.context(base.candidate).score_runner
        kw = {"score": lambda a: score(eng.load(a, prep.config.threads), f"search {c.id}"), "budget": prep.budget}
    out = eng.convert(prep.original, prep.cand_dir / f"{c.engine}-{p.precision}{eng.suffix}", precision=p.precision,
                      calib_feeds=calib, **kw)
    c.info.update(eng.candidate_info(out))
    return eng, out


def _largest_shapes(prep: Prepared) -> dict[str, list[int]]:
    """Per input, the largest shape (batch 1) any calibration or evaluation sample is fed at: what an engine with
    static shapes converts at, so every sample fits."""
    out: dict[str, list[int]] = {}
    for b in prep.task.batches(prep.calib + prep.eval, 1):
        for k, v in b.feeds.items():
            shape = [1, *v.shape[1:]]
            out[k] = [max(a, b) for a, b in zip(out[k], shape)] if k in out and len(out[k]) == len(shape) else shape
    return out


def _failed(c: Candidate, e: Exception) -> None:
    """A failing candidate never stops the study: it is recorded with its reason."""
    if isinstance(e, EdgeslimError):
        c.status, c.reason = Status.FAILED, str(e)
        return
    c.status, c.reason = Status.FAILED, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    c.info.setdefault("traceback", traceback.format_exc(limit=3))


def build(prep: Prepared, base: Baseline) -> list[Candidate]:
    """Every planned candidate's artifact, or the built and evaluated candidate from the cache (`cached`). A build
    that fails fails its candidate only."""
    n_total = 1 + len(prep.plan)
    out = []
    for p in prep.plan:
        c = p.candidate
        out.append(c)
        prep.keys[c.id] = key = key_of(prep.common, c.id)
        if _restore(prep, c, key)[0]:
            prep.progress("candidates", 1, n_total)
            continue
        t0 = time.time()
        try:
            prep.progress(f"build {c.id}", 0, 1)
            eng, path = _build_one(prep, base, p)
            prep.progress(f"build {c.id}", 1, 1)
            c.seconds["build"] = round(time.time() - t0, 2)
            c.artifact, c.size_bytes = str(path.relative_to(prep.workdir)), eng.size_bytes(path)
        except Exception as e:
            _failed(c, e)
            prep.progress("candidates", 1, n_total)
    ids = {c.id for c in out}
    for c in out:  # one speed class: a candidate whose runtime compute is another's (see select.speed_twin)
        twin = c.info.get("same_compute_as_recipe")
        if twin and f"{c.engine}/{twin}" in ids:
            c.info["same_compute_as"] = f"{c.engine}/{twin}"
    return out


# The probe: a candidate is first run on the leading share of the evaluation samples; one that has collapsed there
# (under PROBE_AGREE of its outputs identical to the original's AND its metric PROBE_DROP budgets worse than the
# original's on the same samples) is rejected without running the rest. On the default model this spares the
# int8-dynamic and w4 candidates (both collapse) about 13 s of a 150-line evaluation. Only on the host: a device's
# evaluation pays a deploy folder per call.
PROBE_SHARE, PROBE_MIN, PROBE_AGREE, PROBE_DROP = 5, 24, 0.25, 10.0


def _evaluate_one(prep: Prepared, base: Baseline, c: Candidate) -> tuple[list, int, int]:
    """Predictions, non-finite count, and how many eval samples were run (all, or the probe's when it collapsed)."""
    eng, path, ev, task = get_engine(c.engine), prep.workdir / c.artifact, prep.eval, prep.task
    k = max(PROBE_MIN, len(ev) // PROBE_SHARE)
    if (prep.device is not None and prep.device.kind != "local") or k >= len(ev):
        preds, nf = prep.run_eval(eng, path, ev, f"evaluate {c.id}", precision=c.recipe)
        return preds, nf, len(ev)
    preds, nf = prep.run_eval(eng, path, ev[:k], f"evaluate {c.id}", precision=c.recipe)
    ref = base.preds[:k]
    agree = task.fidelity(preds, ref).get("exact_match", 1.0)
    drop = task.drop(task.score(preds, ev[:k], reference=ref)["metric"], task.score(ref, ev[:k], reference=ref)["metric"])
    if agree < PROBE_AGREE and drop > PROBE_DROP * prep.budget:
        return preds, nf, k
    rest, nf2 = prep.run_eval(eng, path, ev[k:], f"evaluate {c.id}", precision=c.recipe)
    return preds + rest, nf + nf2, len(ev)


def evaluate_candidates(prep: Prepared, base: Baseline, cands: list[Candidate]) -> None:
    """Evaluate each newly built candidate on the eval samples (a probe first: see PROBE_SHARE), judge it against the
    budget, cache it."""
    n_total = 1 + len(prep.plan)
    for c in cands:
        if c.cached or c.status == Status.FAILED:
            continue
        try:
            t1 = time.time()
            preds, c.nonfinite, n = _evaluate_one(prep, base, c)
            c.seconds["evaluate"] = round(time.time() - t1, 2)
            samples, ref = prep.eval[:n], base.preds[:n]
            scored = prep.task.score(preds, samples, reference=ref)
            c.metric, c.metric_extra = scored.pop("metric"), scored
            c.fidelity = {**prep.task.fidelity(preds, ref), "samples": n}  # n: what a fidelity gap is judged on
            base_metric = base.candidate.metric
            if n < len(prep.eval):  # judged against the original on the same samples
                base_metric = prep.task.score(ref, samples, reference=ref)["metric"]
                c.info["evaluated_samples"] = n
            _judge(prep.task, c, base_metric, prep.budget)
            if n < len(prep.eval):
                c.status = Status.REJECTED
                c.reason = (f"collapsed on the first {n} of {len(prep.eval)} evaluation samples (the rest not run): "
                            f"{c.reason.removeprefix('collapsed: ')}")
            if c.status == Status.OK and c.info.get("note"):
                c.reason = c.info["note"]  # what the candidate really is, shown beside its figures
            _store(prep, c, prep.keys[c.id])
        except Exception as e:
            _failed(c, e)
        prep.progress("candidates", 1, n_total)


@dataclass
class Measurements:
    """The benchmark phases of one study (screen, confirm, other_policy), measured now or replayed from the cache."""

    key: str
    feeds: dict[str, np.ndarray]
    phases: dict[str, list[BenchResult]] = field(default_factory=dict)
    telemetry: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    replayed: bool = False

    @classmethod
    def start(cls, prep: Prepared, built: list[Candidate]) -> Measurements:
        config = prep.config
        key = key_of(prep.common, [prep.keys[c.id] for c in built], config.rounds, str(config.cpu), config.confirm_top,
                     prep.machine.get("cpu"), prep.machine.get("flags"))
        m = cls(key=key, feeds=prep.task.bench_feeds(prep.eval), info={"policy": str(config.cpu)})
        hit = prep.cache.get("bench", key)
        if hit is not None:
            try:
                m.phases = {k: [BenchResult(**r) for r in v] for k, v in hit[0]["phases"].items()}
                m.telemetry = dict(hit[0]["telemetry"])
                m.info.update(cached=True, measured_at=hit[0]["measured_at"])
                m.replayed = True
            except Exception:  # unreadable: measure again
                prep.cache.drop("bench", key)
                m.phases, m.telemetry = {}, {}
        return m

    def run(self, prep: Prepared, name: str, subset: list[Candidate], rounds: int, policy: ThreadPolicy) -> list[BenchResult]:
        if name not in self.phases:
            specs = [BenchSpec(id=c.id, engine=c.engine, artifact=str(prep.workdir / c.artifact)) for c in subset]
            run = prep.device.bench_rounds if prep.device is not None else bench_rounds
            res, tel = run(specs, self.feeds, prep.config.threads, rounds=rounds, policy=policy,
                           progress=lambda r, n: prep.progress(f"benchmark ({name})", r, n))
            self.phases[name], self.telemetry[name] = res, tel
        return self.phases[name]

    def noisy(self, phases: tuple[str, ...] | None = None) -> bool:
        return any(isinstance(t, dict) and t.get("noisy") for p, t in self.telemetry.items() if phases is None or p in phases)

    def save(self, prep: Prepared) -> None:
        """Cache the phases for a rerun, unless measured noisy where they select (the next run measures again; the
        other policy's phase only informs the report)."""
        if not self.replayed and not self.noisy(("screen", "confirm")):
            prep.cache.put("bench", self.key, {"phases": {k: [r.__dict__ for r in v] for k, v in self.phases.items()},
                                               "telemetry": self.telemetry,
                                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _collapsed(c: Candidate) -> bool:
    return c.status == Status.REJECTED and (c.reason or "").startswith("collapsed")


def screen(prep: Prepared, cands: list[Candidate], m: Measurements) -> None:
    """Every candidate that built, each in its own process, in rotating order, the baseline first; except a collapsed
    one: its outputs are not the model's any more, so its speed would say nothing (and it is never selectable)."""
    by_id = {c.id: c for c in cands}
    for c in cands:
        if _collapsed(c):
            c.info["not_timed"] = "collapsed: its outputs are not the model's, so its speed says nothing"
    timed = [c for c in cands if c.status != Status.FAILED and not _collapsed(c)]
    for r in m.run(prep, "screen", timed, prep.config.rounds, prep.config.cpu):
        _apply_bench(by_id[r.id], r)


def confirm(prep: Prepared, cands: list[Candidate], m: Measurements) -> list[Candidate]:
    """The baseline, the default engine's exact fp32 rewrite and the fastest few (with any the screen cannot tell from
    them), head to head with more rounds; then the same set under the other thread policy, to show how the ranking
    changes on a busy (or idle) CPU. Returns the confirmed set."""
    config, base = prep.config, cands[0]
    by_id = {c.id: c for c in cands}
    timed = [c for c in cands if c.status == Status.OK and c.speedup is not None and c is not base]
    top = confirm_candidates(timed, config.confirm_top)
    simple = next((c for c in timed if c.recipe == "fp32" and c.engine == config.engine), None)
    chosen = [base] + [c for c in cands if c in top or c is simple]
    rounds = max(2 * config.rounds, 7)
    m.info.update(confirm=[c.id for c in chosen], confirm_rounds=rounds, other_policy=str(config.cpu.other))
    if base.status == Status.FAILED or len(chosen) <= 1 or config.confirm_top <= 0:
        return chosen
    for c in chosen:
        c.info["screen"] = {"speedup": c.speedup, "range": c.speedup_range}
    for r in m.run(prep, "confirm", chosen, rounds, config.cpu):
        _apply_bench(by_id[r.id], r)
        by_id[r.id].info["confirmed"] = True
    other = config.cpu.other
    for r in m.run(prep, "other_policy", chosen, config.rounds, other):
        if r.ok:
            by_id[r.id].info[f"speedup_{other}"] = {"speedup": r.speedup(), "range": r.speedup_range(),
                                                    "ratios": [round(x, 4) for x in r.ratios]}
    return chosen


def choose(prep: Prepared, cands: list[Candidate]) -> tuple[Candidate | None, dict]:
    """The selection among the confirmed candidates (all, when none was confirmed), and the choice the other thread
    policy's ratios would make."""
    config, base = prep.config, cands[0]
    pool = [c for c in cands if c.info.get("confirmed")] or list(cands)
    selected, selection = select(pool, base, config.objective)
    for c in cands:
        if c not in pool and c.status == Status.OK and c.speedup is not None:
            rng = f" [{c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}]" if c.speedup_range else ""
            selection.setdefault("lost", {})[c.id] = (f"not re-measured head to head: its screen speedup {c.speedup:.2f}x"
                                                      f"{rng} was below the confirmed candidates'")
    other = str(config.cpu.other)
    alt = [Candidate(id=c.id, recipe=c.recipe, engine=c.engine, status=c.status, fidelity=c.fidelity,
                     size_bytes=c.size_bytes, speedup=c.info[f"speedup_{other}"]["speedup"],
                     ratios=c.info[f"speedup_{other}"]["ratios"]) for c in pool if f"speedup_{other}" in c.info]
    alt_base = next((c for c in alt if c.id == base.id), None)
    if alt_base is not None:
        alt_pick, _ = select(alt, alt_base, config.objective)
        selection[f"if_{other}"] = alt_pick.id if alt_pick else None
    return selected, selection


def _verify_one(prep: Prepared, c: Candidate, device: Any, samples: list, base_ref: tuple[list, float],
                host: list) -> dict:
    """`c` re-evaluated on `device` against its own host predictions `host` on the same samples: the device's metric,
    its drop from the original's host metric, the share of samples decoded as on the host, and whether it passes."""
    eng = get_engine(c.engine)
    dev, nonfinite = prep.run_eval(eng, prep.workdir / c.artifact, samples, f"verify {c.id} on {device.spec}",
                                   precision=c.recipe, device=device)
    base_preds, base_metric = base_ref
    m_dev = prep.task.score(dev, samples, reference=base_preds)["metric"]
    m_host = prep.task.score(host, samples, reference=base_preds)["metric"]
    same = prep.task.fidelity(dev, host).get("exact_match", 0.0)
    drop, diverged = prep.task.drop(m_dev, base_metric), prep.task.drop(m_dev, m_host)
    d = device.describe()
    why = ("" if not nonfinite else f"{nonfinite} NaN/Inf outputs; ") + \
          (f"{prep.task.metric_name} {m_dev:.4f} breaks the budget ({drop:+.4f} vs the original) " if drop > prep.budget else "") + \
          (f"predictions diverge from the host's ({diverged:+.4f} {prep.task.metric_name}, {same:.0%} identical)"
           if diverged > prep.budget else "")
    return {"device": device.spec, "arch": d.get("arch") or d.get("machine"), "cpu": d.get("cpu"),
            "cpu_model": d.get("cpu_model") or getattr(device, "cpu", None), "samples": len(samples),
            "metric": round(float(m_dev), 5), "host_metric": round(float(m_host), 5), "same_as_host": round(float(same), 4),
            "nonfinite": int(nonfinite), "ok": not why, "reason": why.strip("; ")}


def verify(prep: Prepared, cands: list[Candidate], selected: Candidate | None, selection: dict,
           ) -> tuple[Candidate | None, dict]:
    """Re-evaluate the selection (every passing candidate with `verify_all`) on each `--verify-on` device, on the
    first `verify_limit` eval samples. A candidate that breaks the budget there, or whose predictions diverge from the
    host's beyond it, is rejected with that reason and the selection is made again; speed is never taken from these
    devices. Returns the (possibly new) selection."""
    from .devices import parse_device

    config = prep.config
    if not config.verify_on:
        return selected, selection
    devices = [parse_device(v) for v in config.verify_on]
    samples = prep.eval[: config.verify_limit]
    base = cands[0]
    base_preds, _ = prep.run_eval(get_engine(base.engine), prep.workdir / base.artifact, samples, "verify original (host)",
                                  device=_LOCAL)
    base_ref = (base_preds, prep.task.score(base_preds, samples)["metric"])
    done: set[str] = set()
    queue = [c for c in cands if c.status == Status.OK and c.artifact] if config.verify_all else []
    while True:
        todo = [c for c in ([selected] if selected is not None else []) + queue if c.id not in done]
        if not todo:
            break
        for c in todo:
            done.add(c.id)
            host, _ = prep.run_eval(get_engine(c.engine), prep.workdir / c.artifact, samples, f"verify {c.id} (host)",
                                    precision=c.recipe, device=_LOCAL)  # once, whatever the number of devices
            for dev in devices:
                try:
                    rec = _verify_one(prep, c, dev, samples, base_ref, host)
                except Exception as e:  # a device that fails fails this verification, with its reason
                    rec = {"device": dev.spec, "ok": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                c.info.setdefault("verified_on", []).append(rec)
                if not rec["ok"] and c.status == Status.OK:
                    c.status, c.reason = Status.REJECTED, f"on {dev.spec}: {rec['reason']}"
        if selected is not None and selected.status != Status.OK:
            selected, selection = choose(prep, cands)  # the next candidate, verified in the next pass
            continue
        break
    selection["verified_on"] = list(config.verify_on)
    return selected, selection


def estimate(prep: Prepared, cands: list[Candidate], m: Measurements) -> list[dict]:
    """Roofline estimates of every built candidate on the chip profiles (not measured; see edgeslim.profiles)."""
    shapes = {k: tuple(v.shape) for k, v in m.feeds.items()}
    return _attach_roofline(cands, prep.workdir, prep.config.model, shapes, prep.config.threads, prep.progress)


def deliver(prep: Prepared, cands: list[Candidate], m: Measurements, selected: Candidate | None, selection: dict,
            profiles: list[dict], t_start: float, command: list[str] | None) -> StudyResult:
    """The study's result: every candidate, the selection and its reasons, the conditions, the provenance."""
    config = prep.config
    tel = m.telemetry
    bench_info = dict(m.info)
    bench_info.update(noisy=m.noisy(), noise_reasons=sorted({f"{p}: {r}" for p, t in tel.items() if isinstance(t, dict)
                                                              for r in t.get("noise_reasons", [])}))
    provenance = {"command": command if command is not None else list(sys.argv), "versions": prep.versions,
                  "model_sha256": prep.model_hash,
                  "cache": {"enabled": prep.cache.enabled, "hits": prep.cache.hits, "misses": prep.cache.misses}}
    return StudyResult(
        config=config, metric_name=prep.task.metric_name, higher_is_better=prep.task.higher_is_better,
        budget=prep.budget, baseline=cands[0].id, selected=selected.id if selected else None, candidates=cands,
        machine=prep.machine, bench_input_shape=[int(s) for s in next(iter(m.feeds.values())).shape],
        telemetry=tel.get("screen", {}) if isinstance(tel.get("screen"), dict) else {}, selection=selection,
        bench=bench_info, data={"calib": len(prep.calib), "eval": len(prep.eval), "source": config.data or "bundled",
                                "sha256": prep.data_hash},
        provenance=provenance, task=prep.task, workdir=prep.workdir, seconds=time.time() - t_start, profiles=profiles,
    )


def optimize(config: StudyConfig, workdir: Path, progress: Progress | None = None, command: list[str] | None = None) -> StudyResult:
    """Build every recipe's candidate, evaluate and benchmark it beside the original, select under the budget.

    Artifacts go under `workdir/candidates/`. The caller owns `workdir` (the CLI and `edgeslim.optimize` use a temp
    folder swapped in at the end). Built and evaluated candidates are cached (see `edgeslim.cache`).
    """
    t_start = time.time()
    prep = prepare(config, workdir, progress)
    n_total = 1 + len(prep.plan)
    prep.progress("candidates", 0, n_total)
    base = evaluate_baseline(prep)
    prep.progress("candidates", 1, n_total)
    cands = [base.candidate] + build(prep, base)
    evaluate_candidates(prep, base, cands[1:])
    m = Measurements.start(prep, [c for c in cands if c.status != Status.FAILED])
    screen(prep, cands, m)
    confirm(prep, cands, m)
    m.save(prep)
    selected, selection = choose(prep, cands)
    selected, selection = verify(prep, cands, selected, selection)
    profiles = estimate(prep, cands, m)
    return deliver(prep, cands, m, selected, selection, profiles, t_start, command)
