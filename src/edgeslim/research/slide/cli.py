"""`edgeslim slide ...`: train an extreme classifier with SLIDE (and optionally the PyTorch baselines).

Thin wrapper over `edgeslim.research.slide.train`; mount with ``app.add_typer(slide.cli.app, name="slide")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ...errors import EdgeslimError, InvalidParameterError

__all__ = ["app"]

app = typer.Typer(help="SLIDE: LSH-sampled sparse training of extreme classifiers on CPU.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """SLIDE: LSH-sampled sparse training of extreme classifiers on CPU (Chen et al., MLSys 2020)."""


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="training file in the XMC sparse text format"),
    test: Optional[Path] = typer.Option(None, help="test file (XMC format); required with --data"),
    synthetic_labels: int = typer.Option(200_000, help="without --data: labels of the synthetic task"),
    synthetic_train: int = typer.Option(50_000, help="without --data: training samples"),
    synthetic_features: int = typer.Option(50_000, help="without --data: feature vocabulary"),
    baselines: bool = typer.Option(False, "--baselines", help="also train dense and sampled-softmax PyTorch, interleaved "
                                   "(and, with --n-random, SLIDE with the LSH off)"),
    epochs: float = typer.Option(5.0, help="stop after this many epochs"),
    time_budget: float = typer.Option(120.0, help="stop after this many training seconds (per method)"),
    eval_every: float = typer.Option(10.0, help="P@1/P@5 checkpoint every this many training seconds"),
    eval_samples: int = typer.Option(2000, help="test samples per checkpoint"),
    hidden: int = typer.Option(128),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(1e-2),
    family: str = typer.Option("simhash", help="hash family: simhash or dwta"),
    k: int = typer.Option(10, "-K", help="hashes per table key"),
    l: int = typer.Option(16, "-L", help="number of hash tables"),
    bucket_size: int = typer.Option(64),
    max_active: int = typer.Option(1024, help="cap on LSH-chosen output neurons per sample"),
    n_random: int = typer.Option(0, help="uniform negatives drawn per batch, shared by its samples (0: paper's SLIDE)"),
    center: bool = typer.Option(False, help="hash centred hidden vectors (h - running mean), SimHash only"),
    threads: int = typer.Option(2, help="threads for numba and torch"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("edgeslim-out/slide"), help="folder for history.json and p1_vs_time.png"),
) -> None:
    """Train with SLIDE, printing P@1/P@5 checkpoints; write history.json and a P@1-vs-time plot."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    try:
        import numba

        from .data import SyntheticConfig, load_xmc, make_synthetic_xmc
        from .hashing import HashConfig
        from .network import init_params, warmup
        from .train import FitConfig, FitRun, fit_interleaved, make_trainer, plot_p1_vs_time, time_to_reach

        numba.set_num_threads(threads)
        warmup()  # keep JIT compilation out of the timed training
        if data is not None:
            if test is None:
                raise InvalidParameterError("--data needs --test (an XMC file to evaluate P@k on).")
            tr_data, te_data = load_xmc(data), load_xmc(test)
        else:
            tr_data, te_data = make_synthetic_xmc(SyntheticConfig(
                n_train=synthetic_train, n_test=max(eval_samples, 1), n_features=synthetic_features,
                n_labels=synthetic_labels, seed=seed))
        params = init_params(tr_data.n_features, tr_data.n_labels, hidden, seed)
        common = dict(n_features=tr_data.n_features, n_labels=tr_data.n_labels, hidden=hidden, lr=lr,
                      params=params, threads=threads, seed=seed)
        methods = {"slide": make_trainer("slide", max_active=max_active, n_random=n_random, center_queries=center,
                                         hash=HashConfig(
            family=family, K=k, L=l, bucket_size=bucket_size, seed=seed), **common)}
        if baselines:
            methods["dense"] = make_trainer("dense", **common)
            methods["sampled"] = make_trainer("sampled", n_sampled=max_active, **common)
            if n_random:  # SLIDE's own kernels with the LSH off: what the hash tables add
                methods["uniform"] = make_trainer("uniform", n_random=n_random, **common)
        fc = FitConfig(batch_size=batch_size, max_epochs=epochs, time_budget_s=time_budget,
                       eval_every_s=eval_every, eval_samples=eval_samples, seed=seed)

        def show(name):
            return lambda c: console.print(
                f"[bold]{name:8s}[/] {c.train_s:7.1f}s epoch {c.epoch:5.2f} {c.samples_per_s:7.0f} samples/s "
                f"loss {c.loss:7.3f}  P@1 {c.p1:.4f}  P@5 {c.p5:.4f}")

        runs = {n: FitRun(t, tr_data, te_data, fc, progress=show(n)) for n, t in methods.items()}
        results = fit_interleaved(runs)
    except EdgeslimError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    target = results["dense"].final.p1 - 0.01 if "dense" in results else None
    table = Table(title="SLIDE training")
    for col in ("method", "train s", "samples/s", "P@1", "P@5", "active fraction", "time to dense P@1 - 1pt"):
        table.add_column(col)
    for n, r in results.items():
        ttr = time_to_reach(r.history, target) if target is not None else None
        table.add_row(n, f"{r.final.train_s:.1f}", f"{r.final.samples_per_s:.0f}", f"{r.final.p1:.4f}",
                      f"{r.final.p5:.4f}", f"{r.stats['active_fraction']:.5f}",
                      "-" if ttr is None else f"{ttr:.1f}s")
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps({n: r.to_dict() for n, r in results.items()}, indent=1))
    plot_p1_vs_time(results, out / "p1_vs_time.png", target_p1=target, threads=threads)
    console.print(f"wrote {out / 'history.json'} and {out / 'p1_vs_time.png'}")
