"""The Python API of the main job, and the one place options are resolved (CLI flags, a config file, keywords).

>>> import edgeslim                                                            # doctest: +SKIP
>>> res = edgeslim.optimize("model.onnx", data="inputs.npz", task="raw", recipes="fp32,int8")
>>> res.selected.id, res.table()[0]
>>> res.save("edgeslim-out")          # results.json, report, deploy.json and the model files
>>> edgeslim.load("edgeslim-out").predict(...)

Benchmark workers are started as `python -m` subprocesses, never by re-importing the caller, so the API works in a
notebook and in a script without an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidParameterError
from .options import DEFAULT_EVAL_LIMIT, check_key, resolve_options
from .options import OPTIONS as _SCHEMA

__all__ = ["OPTIONS", "optimize", "Result", "load_config", "resolve_options", "study_config", "save_outputs",
           "DEFAULT_EVAL_LIMIT"]

OPTIONS = {k: o.default for k, o in _SCHEMA.items()}  # every option of `edgeslim optimize` with its default


def load_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (or JSON) file: keys are the option names (`max_drop` or `max-drop`)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InvalidParameterError(f"--config {p}: file not found. Pass a YAML file of options (see config.yaml in an output folder).")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InvalidParameterError(f"{p}{f':{line + 1}' if line is not None else ''}: not valid YAML. Fix the file.") from None
    if not isinstance(d, dict):
        raise InvalidParameterError(f"{p}: expected a mapping of option: value, got {type(d).__name__}. Write e.g. 'threads: 2'.")
    out = {}
    for k, v in d.items():
        key = str(k).replace("-", "_")
        check_key(key, str(p))
        out[key] = v
    return out


def _split(v: Any) -> tuple[str, ...] | None:
    if v is None:
        return None
    items = v if isinstance(v, list) else str(v).split(",")
    return tuple(str(s).strip() for s in items if str(s).strip())


def study_config(opts: dict[str, Any]):
    """The `StudyConfig` of resolved options (the default model resolved from the zoo)."""
    from .study import DEFAULT_RECIPES, StudyConfig
    from .zoo import DEFAULT_MODEL, ZOO, resolve

    from .tasks import get_task

    get_task(opts["task"])  # an unknown task name is the first thing to report
    model = opts["model"]
    label = model or DEFAULT_MODEL
    if model is None and opts["task"] != "ocr-rec":
        raise InvalidParameterError(f"the default model is a text recognizer; --task {opts['task']} needs a MODEL argument.")
    path = resolve(label) if (model is None or (model in ZOO and not Path(model).exists())) else Path(model)
    max_drop = opts["max_drop"]
    if max_drop is not None:
        max_drop = float(max_drop)
    eval_limit = opts["eval_limit"]
    if eval_limit is None and not opts["full"] and opts["data"] is None:
        eval_limit = DEFAULT_EVAL_LIMIT
    recipes = _split(opts["recipes"])
    return StudyConfig(model=str(path), model_label=label, task=opts["task"], data=opts["data"],
                       recipes=DEFAULT_RECIPES if recipes is None else recipes, engines=_split(opts["engines"]),
                       engine_precisions=_split(opts["engine_precisions"]), max_drop=max_drop,
                       objective=opts["objective"], threads=opts["threads"], rounds=opts["rounds"],
                       calib_limit=opts["calib_limit"], eval_limit=eval_limit, cpu=opts["cpu"],
                       confirm_top=opts["confirm_top"], cache=opts["cache"], device=opts["device"],
                       verify_on=_split(opts["verify_on"]) or (), verify_all=opts["verify_all"],
                       verify_limit=opts["verify_limit"])


def save_outputs(study, folder: Path, opts: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the deliverable into `folder` (which already holds `candidates/` when the study ran in it): the selected
    model's files + deploy.json, results.json, report.md/html, pareto.png, config.yaml."""
    import yaml

    from .report import write_report

    folder = Path(folder)
    if study.workdir is not None and Path(study.workdir).resolve() != folder.resolve():
        shutil.copytree(Path(study.workdir) / "candidates", folder / "candidates", dirs_exist_ok=True)
    deploy_info = None
    if study.selected:
        from . import deploy

        sel = study.candidate(study.selected)
        deploy_info = deploy.export(folder, folder / sel.artifact, sel.engine, sel.recipe, study.task,
                                    study.config.threads, study.config.cpu,
                                    extra={"source_model": study.config.model, "candidate": sel.id,
                                           "bench_input_shape": study.bench_input_shape,
                                           "speedup": sel.speedup, "speedup_range": sel.speedup_range,
                                           "metric": {study.metric_name: sel.metric}, "fidelity": sel.fidelity,
                                           **({"device": study.machine["device"]} if "device" in study.machine else {}),
                                           **({"verified_on": sel.info["verified_on"]} if sel.info.get("verified_on") else {})})
    paths = write_report(study, folder, deploy_info=deploy_info)
    if opts is not None and not opts.get("candidates", True):  # --no-candidates: only what ships, and the reports
        shutil.rmtree(folder / "candidates", ignore_errors=True)
    if opts is not None:
        cfg = {k: v for k, v in opts.items() if k not in ("force",)}
        cfg["model"] = study.config.model
        paths["config"] = folder / "config.yaml"
        paths["config"].write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return paths


@dataclass
class Result:
    """What `edgeslim.optimize` returns: the study, and where its files are."""

    study: Any
    options: dict[str, Any]
    saved_to: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def selected(self):
        """The selected `Candidate` (None when no candidate kept accuracy)."""
        return self.study.candidate(self.study.selected) if self.study.selected else None

    @property
    def candidates(self) -> list:
        return self.study.candidates

    def table(self) -> list[dict]:
        """One row per candidate: id, status, metric, fidelity, speedup (+ range), size, reason."""
        return [{"id": c.id, "status": c.status, "metric": c.metric, "exact_match": c.fidelity.get("exact_match"),
                 "p50_ms": c.latency_ms.get("p50"), "speedup": c.speedup, "speedup_range": c.speedup_range,
                 "size_bytes": c.size_bytes, "selected": c.id == self.study.selected, "reason": c.reason}
                for c in self.study.candidates]

    def to_dict(self) -> dict:
        return self.study.to_dict()

    def save(self, folder: str | Path, force: bool = False) -> Path:
        """Write the deliverable folder (atomically; refuses a folder edgeslim did not write)."""
        from .outdir import OutputDir

        with OutputDir(folder, force=force, inputs=(self.study.config.model, self.study.config.data)) as od:
            save_outputs(self.study, od.tmp, self.options)
            self.saved_to = od.commit()
        return self.saved_to

    def load(self):
        """The selected model as a `Deployed` (runs with its engine; `.predict(...)`)."""
        from . import deploy

        if self.saved_to is None:
            raise InvalidParameterError("the result is not saved yet. Call result.save(folder) first, then load().")
        return deploy.load(self.saved_to)


def optimize(model: str | Path | None = None, *, data: str | Path | None = None, task: str | None = None,
             outdir: str | Path | None = None, force: bool = False, config: str | Path | None = None,
             progress: Callable[[str, int, int], None] | None = None, **options: Any) -> Result:
    """Build, evaluate, benchmark and select, as `edgeslim optimize` does; returns a `Result`.

    `options` are the CLI's (`recipes="fp32,int8"` or a list, `threads=2`, `max_drop=0.01`, `eval_limit=50`, ...);
    `config` a YAML file of them. With `outdir` the deliverable is written there; otherwise call `.save(folder)`.
    """
    from .study import optimize as run_study

    given = dict(options, model=str(model) if model is not None else None, data=str(data) if data is not None else None,
                 task=task)
    opts = resolve_options(given, load_config(config) if config else None, where="edgeslim.optimize")
    cfg = study_config(opts)
    cfg.validate()
    if outdir is not None:  # a folder that will be refused is refused before the work, not after
        from .outdir import OutputDir

        OutputDir(outdir, force=force, inputs=(cfg.model, cfg.data)).check()
    tmp = tempfile.TemporaryDirectory(prefix="edgeslim-")
    command = ["edgeslim.optimize", repr({k: v for k, v in given.items() if v is not None})]
    study = run_study(cfg, Path(tmp.name), progress=progress, command=command)
    res = Result(study=study, options=opts, _tmp=tmp)
    if outdir is not None:
        res.save(outdir, force=force)
    return res
