"""`edgeslim profiles [NAME]`: the chip profiles behind the report's roofline estimates; rendering only."""

from __future__ import annotations

import json
from typing import Optional

import typer

from . import PRECISIONS, Profile, list_profiles, load_profile


def _g(v: float | None, scale: float = 1e9) -> str:
    return "-" if v is None else f"{v / scale:,.1f}"


def _console():
    from rich.console import Console

    return Console(width=200)


def _listing(threads: int) -> None:
    from rich.table import Table

    from .host import host_profile

    names = list_profiles(include_host=False)
    t = Table(title="chip profiles (peak G ops/s per precision; a multiply-add = 2 ops)", title_justify="left")
    t.add_column("name", no_wrap=True, min_width=max(len(n) for n in names + ["host"]))
    t.add_column("kind", no_wrap=True)
    t.add_column("cores", overflow="fold", max_width=44)
    for p in PRECISIONS:
        t.add_column(p, justify="right", no_wrap=True)
    t.add_column("GB/s", justify="right", no_wrap=True)
    t.add_column("sources", justify="right", no_wrap=True)
    host = host_profile(threads=threads, measure=False)
    profiles: list[Profile | None] = [host] + [load_profile(n) for n in names]
    for prof in profiles:
        if prof is None:
            t.add_row("host", "cpu", f"not measured yet: run `edgeslim profiles host` ({threads} threads)", *["-"] * 5, "-")
            continue
        n_src = "measured" if prof.measured else str(len(prof.sources))
        t.add_row(prof.name, prof.kind, prof.cores or "-", *[_g(prof.peak(p)) for p in PRECISIONS], _g(prof.bandwidth), n_src)
    _console().print(t)
    typer.echo("- = not published (estimates at that precision say n/a). `edgeslim profiles NAME` shows a profile's "
               "sources and how derived values were computed.")


def _detail(prof: Profile) -> None:
    from rich.table import Table

    con = _console()
    t = Table(title=f"{prof.name}: {prof.title}", title_justify="left", show_header=False)
    t.add_column("field", no_wrap=True)
    t.add_column("value", overflow="fold")
    t.add_row("kind", prof.kind)
    t.add_row("cores", prof.cores or "-")
    t.add_row("clock", "-" if prof.clock_ghz is None else f"{prof.clock_ghz} GHz")
    for p in PRECISIONS:
        note = f"  (runs as {prof.runs_as[p]}: {prof.runs_as_why.get(p, '')})" if p in prof.runs_as else ""
        t.add_row(f"peak {p}", ("-" if prof.peak(p) is None else f"{_g(prof.peak(p))} G ops/s") + note)
    t.add_row("memory bandwidth", "-" if prof.bandwidth is None else f"{_g(prof.bandwidth)} GB/s")
    if prof.measured:
        t.add_row("cache bandwidth", f"{_g(prof.cache_bandwidth_bytes_per_s)} GB/s (tensors up to "
                  f"{(prof.cache_bytes or 0) / 2**20:.0f} MiB)")
        t.add_row("launch cost", f"{(prof.node_overhead_s or 0) * 1e6:.2f} us per node, {(prof.run_overhead_s or 0) * 1e6:.1f} us per run")
        for k, pts in sorted(prof.kernel_ceilings.items()):
            t.add_row(f"ceiling {k}", ", ".join(f"{_g(ops)} @ {m / 1e6:.1f}M MACs" for m, ops in pts) + " G ops/s")
        m = prof.measurement
        t.add_row("measured", f"{m.get('measured_at')}, {m.get('threads')} threads, policy {m.get('policy')}, onnxruntime "
                  f"{m.get('onnxruntime')}, load {m.get('loadavg')}, flags {' '.join(m.get('flags') or [])}")
    if prof.notes:
        t.add_row("notes", prof.notes)
    con.print(t)
    if prof.derived:
        d = Table(title="derived values", title_justify="left")
        d.add_column("field", no_wrap=True)
        d.add_column("how", overflow="fold")
        for k, v in prof.derived.items():
            d.add_row(k, v)
        con.print(d)
    s = Table(title="sources", title_justify="left")
    s.add_column("url", overflow="fold", max_width=70)
    s.add_column("gives", overflow="fold")
    s.add_column("for", overflow="fold", max_width=40)
    for src in prof.sources:
        s.add_row(src.get("url", ""), src.get("gives", ""), ", ".join(src.get("values", [])) or "context")
    con.print(s)


def command(
    name: Optional[str] = typer.Argument(None, help="A profile to show with its sources (e.g. hisilicon-kirin-990-5g, host)."),
    threads: int = typer.Option(2, "--threads", min=1, max=1024, help="Threads the host profile is measured with."),
    refresh: bool = typer.Option(False, "--refresh", help="Measure the host again instead of reading the cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile(s) as JSON."),
) -> None:
    """Chip profiles for the report's roofline estimates: peak ops/s per precision, memory bandwidth, sources.

    Without NAME, list every profile; `host` is measured on this machine (onnxruntime microbenchmarks, cached per CPU).
    """
    if name is None:
        if as_json:
            from .host import host_profile

            host = host_profile(threads=threads, measure=False)
            out = ([host.to_dict()] if host else []) + [load_profile(n).to_dict() for n in list_profiles(include_host=False)]
            typer.echo(json.dumps(out, indent=1))
            return
        _listing(threads)
        return
    if name == "host":
        from .host import host_profile

        prof = host_profile(threads=threads, refresh=refresh)
    else:
        prof = load_profile(name, threads=threads)
    if as_json:
        typer.echo(json.dumps(prof.to_dict(), indent=1))
    else:
        _detail(prof)
