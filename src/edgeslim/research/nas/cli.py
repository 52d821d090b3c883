"""`edgeslim nas search ...`: hardware-aware architecture search (CARS) on Ray. Thin wrapper over
`edgeslim.research.nas.run.run_nas`; mounted by the main CLI as ``edgeslim nas``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ...errors import InvalidParameterError

__all__ = ["app"]

app = typer.Typer(help="Hardware-aware architecture search (CARS) that scales out on Ray.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Hardware-aware architecture search: CARS continuous evolution on a weight-sharing supernet (Yang et al.,
    CVPR 2020), selected on accuracy, measured latency and size; evaluation and timing run as Ray tasks."""


@app.command()
def search(
    task: str = typer.Option("classify", help="task of the searched models (classify)"),
    data: Path = typer.Option(..., help="MNIST IDX folder, or one sub-folder of images per class"),
    engine: str = typer.Option("ort", help="engine the subnets are timed on"),
    budget_minutes: float = typer.Option(30.0, help="wall-clock budget: the CARS run gets 35 percent of it, the random "
                                                    "ablation as many generations, then fine-tuning and timing"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder (front/*.onnx, results.json, front.png)"),
    ray_address: Optional[str] = typer.Option(None, help="'auto' or HOST:PORT of a running Ray cluster; "
                                                          "default: a local instance with --workers CPUs"),
    workers: int = typer.Option(2, help="CPUs of the local Ray instance"),
    threads: int = typer.Option(1, help="engine threads when timing"),
    batch: int = typer.Option(1, help="batch size when timing"),
    population: int = typer.Option(8),
    offspring: int = typer.Option(8),
    steps_per_generation: int = typer.Option(40, help="supernet training mini-batches per generation"),
    finetune_epochs: int = typer.Option(8, help="epochs each front member trains on its own before scoring"),
    max_front: int = typer.Option(6, help="front members fine-tuned and written"),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="random search at the same budget"),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="replace an existing edgeslim output folder"),
) -> None:
    """Search, fine-tune the Pareto front and write one ONNX model per member (each passable to
    `edgeslim optimize --task classify`)."""
    from rich.console import Console
    from rich.table import Table

    from ...engines import get_engine
    from ...outdir import OutputDir
    from .latency import LatencyConfig
    from .run import NasConfig, run_nas, write_outputs
    from .search import SearchConfig

    if task != "classify":
        raise InvalidParameterError(f"--task {task}: architecture search supports classify only. Pass --task classify.")
    get_engine(engine)
    OutputDir(out, force=force, inputs=(data,)).check()  # refuse a bad target before the work, not after
    console = Console(stderr=True)
    cfg = NasConfig(budget_minutes=budget_minutes, ablation=ablation, finetune_epochs=finetune_epochs,
                    max_front=max_front, ray_address=ray_address, workers=workers,
                    search=SearchConfig(population=population, offspring=offspring, generations=None, budget_s=1.0,
                                        steps_per_generation=steps_per_generation, seed=seed,
                                        latency=LatencyConfig(engine=engine, threads=threads, batch=batch)))
    res = run_nas(data, cfg, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    folder = write_outputs(res, out, force=force, inputs=(data,))
    t = Table(title=f"front ({res['engine']}, {res['threads']} thread(s), batch {res['batch']})")
    for col in ("model", "architecture", "test top-1", "latency / baseline", "p50 ms", "params"):
        t.add_column(col)
    b = res["baseline"]
    t.add_row("baseline.onnx", "hand-designed CNN", f"{b['test_acc']:.4f}", "1.000", str(b["latency_p50_ms"]),
              str(b["params"]))
    for m in res["front"]:
        t.add_row(m["name"], m["describe"], f"{m['test_acc']:.4f}", f"{m['latency_ratio']:.3f}",
                  str(m["latency_p50_ms"]), str(m["params"]))
    Console().print(t)
    hv = f"hypervolume CARS {res['hv_cars']:.5f}" + (f", random {res['hv_random']:.5f}" if res["hv_random"] is not None
                                                     else "")
    Console().print(f"{hv}; {res['minutes']:.1f} min; wrote {folder}")
