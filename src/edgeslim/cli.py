"""The `edgeslim` command: thin wrappers over library functions; rendering and file output live here."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from .errors import EdgeslimError, InvalidParameterError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hand it a model and a little data; get back a smaller, faster on-device model, measured against the original.")
_state = {"debug": bool(os.environ.get("EDGESLIM_DEBUG"))}

DEFAULT_EVAL_LIMIT = 150  # eval lines in the default (non --full) run: keeps it within 5 minutes on 2 cores


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
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


def _console():
    from rich.console import Console

    return Console(stderr=True)


class _Progress:
    """Rich progress bars, one per stage, fed by the library's (stage, advance, total) callback."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=_console(), disable=not enabled, transient=False)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.p.add_task(stage, total=total or None)
        elif advance == 0 and stage != "benchmark":  # the stage starts again (e.g. one more trial)
            self.p.reset(self.tasks[stage], total=total or None)
        tid = self.tasks[stage]
        if stage == "benchmark":
            self.p.update(tid, completed=advance, total=total)
            return
        if total:
            self.p.update(tid, total=total)
        if advance:
            self.p.advance(tid, advance)

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)


def _commit_dir(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` in one rename (the old one is moved aside first, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, no_wrap=i < len(headers) - 1, overflow="ellipsis" if i < len(headers) - 1 else "fold")
    for r in rows:
        t.add_row(*r)
    return t


@app.command()
def optimize(
    model: Optional[str] = typer.Argument(None, help="ONNX model path or zoo name (default: the PP-OCRv4 recognizer)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder (ocr-rec: images + labels.tsv; classify: a folder per class; raw: .npz)."),
    task: str = typer.Option("ocr-rec", "--task", help="ocr-rec | classify | raw"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Accuracy budget: the most the metric may worsen (task default: CER 0.005, top-1 0.01)."),
    objective: str = typer.Option("latency", "--objective", help="latency | size"),
    recipes: Optional[str] = typer.Option(None, "--recipes", help="Comma-separated recipe specs, e.g. fp32,int8:calibrator=mse,mixed."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads for evaluation and benchmarking."),
    engines: Optional[str] = typer.Option(None, "--engines", help="Engines to explore beside ort, e.g. mnn,ncnn (default: every installed one; 'ort' for none)."),
    engine_precisions: Optional[str] = typer.Option(None, "--engine-precisions", help="Exact engine:precision list, e.g. mnn:int8,ncnn:bf16."),
    rounds: int = typer.Option(5, "--rounds", help="Alternating benchmark rounds."),
    outdir: Path = typer.Option(Path("edgeslim-out"), "-o", "--outdir", help="Output folder (replaced atomically at the end)."),
    calib_limit: Optional[int] = typer.Option(None, "--calib-limit", help="Use at most this many calibration samples."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Use at most this many evaluation samples."),
    full: bool = typer.Option(False, "--full", help="Evaluate on every evaluation line (default: a subset, to finish within minutes)."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout instead of the table."),
) -> None:
    """Build smaller/faster variants, measure them against the original, select the best within the budget."""
    from .report import write_report
    from .study import DEFAULT_RECIPES, StudyConfig, optimize as run_study
    from .zoo import DEFAULT_MODEL, ZOO, resolve

    label = model or DEFAULT_MODEL
    path = resolve(label) if (model is None or (model in ZOO and not Path(model).exists())) else Path(model)
    if model is None and task != "ocr-rec":
        raise InvalidParameterError(f"the default model is a text recognizer; --task {task} needs a MODEL argument.")
    specs = tuple(s.strip() for s in recipes.split(",") if s.strip()) if recipes else DEFAULT_RECIPES
    eng_list = tuple(e.strip() for e in engines.split(",") if e.strip()) if engines is not None else None
    eng_prec = tuple(e.strip() for e in engine_precisions.split(",") if e.strip()) if engine_precisions else None
    cfg = StudyConfig(model=str(path), model_label=label, task=task, data=str(data) if data else None, recipes=specs,
                      engines=eng_list, engine_precisions=eng_prec,
                      max_drop=max_drop, objective=objective, threads=threads, rounds=rounds,
                      calib_limit=calib_limit,
                      eval_limit=eval_limit or (None if (full or data is not None) else DEFAULT_EVAL_LIMIT))
    outdir = outdir.resolve()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        with _Progress(enabled=not as_json) as prog:
            result = run_study(cfg, tmp, progress=prog)
        write_report(result, tmp)
        if result.selected:
            sel = next(c for c in result.candidates if c.id == result.selected)
            shutil.copyfile(tmp / sel.artifact, tmp / ("model" + Path(sel.artifact).suffix))
        _commit_dir(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if as_json:
        typer.echo((outdir / "results.json").read_text())
        return
    from rich.console import Console

    con = Console()
    con.print(_table(f"{label}: {result.metric_name} budget {result.budget} (baseline {result.baseline})",
                     ["candidate", "status", result.metric_name, "agree", "p50 ms", "speedup", "size"], [r[:-1] for r in result.to_rows()]))
    for c in result.candidates:
        if c.status != "ok":
            con.print(f"  {c.id} {c.status}: {c.reason}", soft_wrap=True)
    con.print(f"selected: [bold]{result.selected or 'none'}[/bold]  ->  {outdir}/  ({result.seconds:.0f} s)")


@app.command()
def inspect(
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Input shape for MACs, e.g. 1x3x48x320 (first input)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Opset, inputs/outputs with dynamic dims, op census, parameters, MACs, file size."""
    from .model import inspect_model
    from .zoo import ZOO, resolve

    path = resolve(model) if (model in ZOO and not Path(model).exists()) else Path(model)
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
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    threads: int = typer.Option(2, "--threads"),
    shape: Optional[str] = typer.Option(None, "--shape", help="Input shape, e.g. 1x3x48x320 (dynamic dims default to 1)."),
    engine: str = typer.Option("ort", "--engine"),
    rounds: int = typer.Option(5, "--rounds"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Latency p50/p90/p99 after warm-up (automatic repeats), throughput, peak RSS, CPU telemetry."""
    import numpy as np

    from .bench import bench_one, machine_info
    from .model import input_specs, load_onnx, resolve_shape, run_all_tensors
    from .zoo import ZOO, resolve

    path = resolve(model) if (model in ZOO and not Path(model).exists()) else Path(model)
    m = load_onnx(path)
    specs = input_specs(m)
    shp = _parse_shape(shape)
    feeds = {}
    rng = np.random.default_rng(0)
    for i, s in enumerate(specs):
        dims = resolve_shape(s, shp if i == 0 else None)
        dt = np.dtype(s.dtype) if s.dtype != "?" else np.dtype(np.float32)
        feeds[s.name] = rng.uniform(-1, 1, dims).astype(dt) if dt.kind == "f" else np.zeros(dims, dt)
    run_all_tensors(m, feeds, [])  # a shape the model rejects fails here with one line, not in a worker
    with _Progress(enabled=not as_json) as prog:
        res, tel = bench_one(engine, str(path), feeds, threads, rounds, progress=lambda r, n: prog("benchmark", r, n))
    if not res.ok:
        raise EdgeslimError(f"{path}: benchmark failed ({res.reason}).")
    lat = res.latency()
    out = {"model": str(path), "engine": engine, "threads": threads, "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
           "latency_ms": lat, "throughput_per_s": round(1e3 / lat["mean"] * next(iter(feeds.values())).shape[0], 2),
           "samples": len(res.times_ms), "repeats_per_round": res.repeats, "rounds": rounds,
           "peak_rss_mb": round(res.peak_rss_mb, 1), "telemetry": tel, "machine": machine_info(threads)}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console

    con = Console()
    con.print(_table(f"{path.name} on {engine}, {threads} threads, input {out['input_shapes']}", ["figure", "value"], [
        ["p50 / p90 / p99 ms", f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}"],
        ["throughput", f"{out['throughput_per_s']:.1f} /s"], ["runs", f"{out['samples']} ({rounds} rounds x {res.repeats})"],
        ["peak RSS", f"{out['peak_rss_mb']:.0f} MB"],
        *[[k, "n/a" if tel.get(k) is None else f"mean {tel[k]['mean']}, max {tel[k]['max']}"] for k in ("cpu_percent", "freq_mhz", "temp_c")],
    ]))


@app.command()
def quantize(
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    recipe: str = typer.Option(..., "--recipe", help="Recipe spec, e.g. int8, int8:calibrator=entropy, w4, bf16."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration data (as --data of optimize)."),
    task: str = typer.Option("ocr-rec", "--task"),
    out: Path = typer.Option(..., "-o", "--out", help="Output .onnx file."),
) -> None:
    """Apply one recipe by name and write the model."""
    import onnx

    from .model import load_onnx
    from .recipes import RecipeContext, get_recipe
    from .study import prepare
    from .tasks import get_task
    from .zoo import ZOO, resolve

    r = get_recipe(recipe)
    path = resolve(model) if (model in ZOO and not Path(model).exists()) else Path(model)
    original = load_onnx(path)
    prepared, rewrites = prepare(original)
    t = get_task(task).bind(original)
    calib_samples, _ = t.load(calib)

    def feeds():
        for b in t.batches(calib_samples, 1):
            yield b.feeds

    with _Progress(enabled=True) as prog:
        res = r.apply(RecipeContext(model=prepared, original=original, calib_feeds=feeds, progress=prog, cache={"rewrites": rewrites}))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    onnx.save(res.model, str(tmp))
    os.replace(tmp, out)
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
    # Sub-apps of optional parts: mounted when their module imports (their extras may be missing).
    for mod, name in (("edgeslim.slide.cli", "slide"), ("edgeslim.train.cli", "train")):
        try:
            sub = __import__(mod, fromlist=["app"]).app
        except Exception:
            continue
        app.add_typer(sub, name=name)


def main() -> None:
    _mount_commands()
    _mount_optional()
    debug = _state["debug"] or "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except EdgeslimError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
