"""`edgeslim monitor`: what the device does while a model runs on it — CPU load per core, frequency, temperature,
memory, network rates and the busiest processes — as a live panel, JSON lines, or a plot over a command's run.

Three layers, so the benchmark's telemetry (`edgeslim.bench.Telemetry`) and this command share one implementation:
`read(ps)` turns psutil's readings at one instant into a plain `Reading` (the only code that touches psutil; tests
pass recorded readings through a stand-in object), `sample(cur, prev)` turns two readings into one plain dict of
rates and percentages (pure), and `Sampler` keeps the previous reading between calls. `summarize` reduces samples
to mean/max figures.

Rates come from differences of cumulative counters between two readings (CPU times per core and per process, bytes
through the network), not from `psutil.cpu_percent(None)` / `Process.cpu_percent(None)`: those keep the previous
reading as hidden state inside psutil, shared by every caller in the process, so two samplers (a benchmark's
telemetry thread and anything else) would shorten each other's intervals, and a recorded reading could not be
replayed.
"""

from __future__ import annotations

import io
import json
import math
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import typer

from .errors import InvalidParameterError

__all__ = ["Reading", "read", "sample", "Sampler", "summarize", "watch", "plot_samples", "render_panel", "run_during",
           "TELEMETRY_KEYS", "command"]

# The figures `edgeslim.bench.Telemetry.summary()` reports (results.json `telemetry` reads these keys).
TELEMETRY_KEYS = ("cpu_percent", "freq_mhz", "temp_c")

_PROC_ATTRS = ["pid", "name", "create_time", "cpu_times", "memory_info"]


@dataclass(frozen=True)
class Reading:
    """psutil's cumulative counters and gauges at one instant, as plain data.

    `cpu` holds (busy seconds, total seconds) per core; `procs` maps (pid, create time) to (name, CPU seconds,
    RSS bytes) and is None when processes were not read; `temps_c` is empty where the OS exposes no sensors."""

    t: float  # monotonic seconds
    wall: float  # seconds since the epoch
    cpu: tuple[tuple[float, float], ...]
    freq_mhz: Optional[tuple[float, ...]] = None
    temps_c: dict[str, float] = field(default_factory=dict)
    mem: Optional[tuple[int, int, float]] = None  # used bytes, total bytes, percent
    net: Optional[tuple[int, int]] = None  # bytes received, bytes sent
    procs: Optional[dict[tuple[int, float], tuple[str, float, int]]] = None


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) seconds of one psutil `scputimes`, counted as psutil's own cpu_percent counts them: guest time
    is already inside user time on Linux, and iowait is idle time."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def _freqs(ps: Any) -> Optional[tuple[float, ...]]:
    try:
        f = ps.cpu_freq(percpu=True)
        if not f:
            one = ps.cpu_freq()
            f = [one] if one else []
    except Exception:  # absent in some VMs and containers (FileNotFoundError, NotImplementedError, ...)
        return None
    cur = tuple(float(x.current) for x in f if x is not None and x.current)
    return cur or None


def _temps(ps: Any) -> dict[str, float]:
    if not hasattr(ps, "sensors_temperatures"):  # macOS and Windows psutil have none
        return {}
    try:
        groups = ps.sensors_temperatures() or {}
    except Exception:
        return {}
    out: dict[str, float] = {}
    for name, entries in groups.items():
        for i, e in enumerate(entries):
            if not e.current:  # 0 (or None) is an unconnected sensor, not a reading
                continue
            key = f"{name}:{e.label or i}"
            out[key if key not in out else f"{key}#{i}"] = float(e.current)
    return out


def _procs(ps: Any) -> dict[tuple[int, float], tuple[str, float, int]]:
    out = {}
    for p in ps.process_iter(_PROC_ATTRS):
        info = p.info
        ct, mi = info.get("cpu_times"), info.get("memory_info")
        if ct is None:  # access denied, or it exited while being read
            continue
        out[(int(info["pid"]), float(info.get("create_time") or 0.0))] = (
            str(info.get("name") or "?"), float(ct.user + ct.system), int(mi.rss) if mi is not None else 0)
    return out


def read(ps: Any = None, *, processes: bool = False, now: Optional[float] = None,
         wall: Optional[float] = None) -> Reading:
    """Read the counters and gauges from `ps`: the psutil module (the default) or any object answering the same
    calls (`cpu_times`, `cpu_freq`, `sensors_temperatures`, `virtual_memory`, `net_io_counters`, `process_iter`).

    >>> r = read(processes=True)
    >>> len(r.cpu) >= 1
    True
    """
    if ps is None:
        import psutil as ps
    t = time.monotonic() if now is None else now
    w = time.time() if wall is None else wall
    cpu = tuple(_busy_total(c) for c in ps.cpu_times(percpu=True))
    vm = ps.virtual_memory()
    try:
        n = ps.net_io_counters()
        net = (int(n.bytes_recv), int(n.bytes_sent)) if n is not None else None
    except Exception:  # no network interfaces readable (some sandboxes)
        net = None
    return Reading(t=t, wall=w, cpu=cpu, freq_mhz=_freqs(ps), temps_c=_temps(ps),
                   mem=(int(vm.used), int(vm.total), float(vm.percent)), net=net,
                   procs=_procs(ps) if processes else None)


def _percent(busy0: float, total0: float, busy1: float, total1: float) -> float:
    dt = total1 - total0
    if dt <= 0:  # no tick elapsed between the readings
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * (busy1 - busy0) / dt)), 1)


def _rate(a: Optional[int], b: Optional[int], dt: float) -> Optional[float]:
    if a is None or b is None or dt <= 0 or b < a:  # b < a: the counter was reset (interface went down and up)
        return None
    return round((b - a) / dt, 1)


def _top(cur: Reading, prev: Reading, k: int) -> list[dict]:
    if k <= 0 or cur.procs is None:
        return []
    dt = cur.t - prev.t
    before = prev.procs or {}
    rows = []
    for key, (name, cpu_s, rss) in cur.procs.items():
        # A process absent from the previous reading started within the interval: all its CPU time falls inside it.
        # Keyed by (pid, create time), so a reused pid counts as a new process.
        used = cpu_s - before[key][1] if key in before else cpu_s
        pct = round(max(0.0, 100.0 * used / dt), 1) if dt > 0 else 0.0
        rows.append({"pid": key[0], "name": name, "cpu_percent": pct, "rss_bytes": rss})
    rows.sort(key=lambda r: (-r["cpu_percent"], -r["rss_bytes"], r["pid"]))
    return rows[:k]


def sample(cur: Reading, prev: Reading, *, top: int = 5, t0: Optional[float] = None) -> dict:
    """One sample over the interval from `prev` to `cur`, as plain JSON-ready data.

    Keys: `t` (seconds since `t0`, default `prev.t`), `time` (epoch seconds), `interval_s`, `cpu_percent` (all cores)
    and `cpu_percent_per_core`, `freq_mhz` (mean over cores) and `freq_mhz_per_core`, `temp_c` (hottest sensor) and
    `temps_c`, `mem_used_bytes`, `mem_total_bytes`, `mem_percent`, `net_rx_bytes_s`, `net_tx_bytes_s`, and `top`:
    the `top` busiest processes (pid, name, cpu_percent of one core, rss_bytes). A figure the OS does not expose is
    None (per-core CPU too, when the number of cores changed between the readings).
    """
    dt = cur.t - prev.t
    busy0, total0 = (sum(x) for x in zip(*prev.cpu)) if prev.cpu else (0.0, 0.0)
    busy1, total1 = (sum(x) for x in zip(*cur.cpu)) if cur.cpu else (0.0, 0.0)
    per_core = ([_percent(*a, *b) for a, b in zip(prev.cpu, cur.cpu)] if len(prev.cpu) == len(cur.cpu) else None)
    f = cur.freq_mhz
    mem = cur.mem or (None, None, None)
    rx0, tx0 = prev.net or (None, None)
    rx1, tx1 = cur.net or (None, None)
    return {
        "t": round(cur.t - (prev.t if t0 is None else t0), 3),
        "time": round(cur.wall, 3),
        "interval_s": round(dt, 3),
        "cpu_percent": _percent(busy0, total0, busy1, total1),
        "cpu_percent_per_core": per_core,
        "freq_mhz": round(sum(f) / len(f), 1) if f else None,
        "freq_mhz_per_core": [round(x, 1) for x in f] if f else None,
        "temp_c": round(max(cur.temps_c.values()), 1) if cur.temps_c else None,
        "temps_c": {k: round(v, 1) for k, v in cur.temps_c.items()},
        "mem_used_bytes": mem[0], "mem_total_bytes": mem[1], "mem_percent": mem[2],
        "net_rx_bytes_s": _rate(rx0, rx1, dt), "net_tx_bytes_s": _rate(tx0, tx1, dt),
        "top": _top(cur, prev, top),
    }


class Sampler:
    """Samples over successive intervals: each `sample()` covers the time since the previous one.

    `reader` returns a `Reading` (default: `read` on psutil, with processes when `top` > 0). The first `sample()`
    without a `prime()` before it reads twice, `prime_s` apart, so every sample has rates.

    >>> s = Sampler(top=3)
    >>> s.sample()["cpu_percent"] >= 0
    True
    """

    def __init__(self, reader: Optional[Callable[[], Reading]] = None, *, top: int = 5, prime_s: float = 0.1) -> None:
        self.reader = reader
        self.top = top
        self.prime_s = prime_s
        self.t0_: Optional[float] = None
        self._prev: Optional[Reading] = None

    def _read(self) -> Reading:
        return self.reader() if self.reader is not None else read(processes=self.top > 0)

    def prime(self) -> None:
        """Take the reading the next sample's rates start from (and the time `t` counts from, the first time)."""
        self._prev = self._read()
        if self.t0_ is None:
            self.t0_ = self._prev.t

    def sample(self) -> dict:
        if self._prev is None:
            self.prime()
            time.sleep(self.prime_s)
        cur = self._read()
        out = sample(cur, self._prev, top=self.top, t0=self.t0_)
        self._prev = cur
        return out


def _stats(values: Iterable[Optional[float]]) -> Optional[dict]:
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    return {"mean": round(sum(v) / len(v), 1), "max": round(max(v), 1)} if v else None


def summarize(samples: list[dict], keys: Iterable[str] = TELEMETRY_KEYS) -> dict:
    """`samples` (their count) and, per key, {"mean", "max"} over the samples that have it (None when none has)."""
    out: dict[str, Any] = {"samples": len(samples)}
    for k in keys:
        out[k] = _stats(s.get(k) for s in samples)
    return out


# ---- rendering (the command's edge) ------------------------------------------------------------------------------

def _bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _na(v: Any, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def render_panel(s: dict):
    """The rich renderable of one sample: system figures, load per core, and the busiest processes."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    info.add_row("CPU", f"{s['cpu_percent']:.1f} %")
    info.add_row("frequency", _na(s["freq_mhz"], "{:.0f} MHz"))
    info.add_row("temperature", _na(s["temp_c"], "{:.1f} °C"))
    mem = (f"{_bytes(s['mem_used_bytes'])} / {_bytes(s['mem_total_bytes'])} ({s['mem_percent']:.1f} %)"
           if s["mem_total_bytes"] else "n/a")
    info.add_row("memory", mem)
    net = "n/a" if s["net_rx_bytes_s"] is None else \
        f"rx {_bytes(s['net_rx_bytes_s'])}/s  tx {_bytes(s['net_tx_bytes_s'])}/s"
    info.add_row("network", net)

    cores = Table(box=None, show_header=True, padding=(0, 1))
    cores.add_column("core", justify="right")
    cores.add_column("load", width=30)
    cores.add_column("%", justify="right")
    cores.add_column("MHz", justify="right")
    freq = s.get("freq_mhz_per_core") or []
    for i, pct in enumerate(s.get("cpu_percent_per_core") or []):
        mhz = f"{freq[i]:.0f}" if i < len(freq) else "n/a"
        cores.add_row(str(i), ProgressBar(total=100, completed=pct, width=30), f"{pct:.1f}", mhz)

    parts = [info, cores]
    if s["top"]:
        procs = Table(box=None, padding=(0, 1), title="top processes by CPU", title_justify="left")
        for name, j in (("pid", "right"), ("name", "left"), ("cpu %", "right"), ("rss", "right")):
            procs.add_column(name, justify=j)
        for p in s["top"]:
            procs.add_row(str(p["pid"]), p["name"], f"{p['cpu_percent']:.1f}", _bytes(p["rss_bytes"]))
        parts.append(procs)
    return Panel(Group(*parts), title=f"edgeslim monitor  t={s['t']:.1f} s", title_align="left")


def plot_samples(samples: list[dict], title: str = "") -> bytes:
    """PNG bytes of CPU % per core, frequency, memory and temperature over time (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    t = [s["t"] for s in samples]
    fig = Figure(figsize=(9, 9), layout="constrained")
    ax = fig.subplots(4, 1, sharex=True)
    ncores = max((len(s.get("cpu_percent_per_core") or []) for s in samples), default=0)
    for i in range(ncores):
        ys = [(s["cpu_percent_per_core"][i] if s.get("cpu_percent_per_core") and i < len(s["cpu_percent_per_core"])
               else math.nan) for s in samples]
        ax[0].plot(t, ys, lw=0.9, alpha=0.7, label=f"core {i}" if ncores <= 16 else None)
    ax[0].plot(t, [s["cpu_percent"] for s in samples], color="black", lw=1.5, ls="--", label="all")
    ax[0].set_ylabel("CPU %")
    ax[0].set_ylim(0, 105)
    ax[0].legend(loc="upper right", fontsize="x-small", ncol=min(6, ncores + 1))
    panels = [(ax[1], "freq_mhz", "frequency MHz", 1.0), (ax[2], "mem_used_bytes", "memory used GiB", 2.0 ** -30),
              (ax[3], "temp_c", "temperature °C", 1.0)]
    for a, key, label, scale in panels:
        ys = [s[key] * scale if s.get(key) is not None else math.nan for s in samples]
        a.set_ylabel(label)
        if all(math.isnan(y) for y in ys):
            a.text(0.5, 0.5, "n/a (not exposed by this system)", transform=a.transAxes, ha="center", va="center")
            a.set_yticks([])
        else:
            a.plot(t, ys, marker=".", lw=1.2)
    total = next((s["mem_total_bytes"] for s in samples if s.get("mem_total_bytes")), None)
    if total:
        ax[2].set_title(f"of {total / 2 ** 30:.1f} GiB", fontsize="small", loc="right")
    ax[3].set_xlabel("seconds")
    for a in ax:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def watch(interval: float = 1.0, seconds: Optional[float] = None, *,
          sampler: Optional[Sampler] = None) -> Iterator[dict]:
    """Samples at t = 0, interval, 2 * interval, ... up to `seconds` included (forever when None).

    The schedule is absolute, so a slow sample delays the next one without shifting the rest.

    >>> [round(s["t"]) for s in watch(0.5, 1.0, sampler=Sampler(top=0))]  # doctest: +SKIP
    [0, 0, 1]
    """
    s = sampler or Sampler()
    first = s.sample()
    start = time.monotonic()
    yield first
    k = 1
    while seconds is None or k * interval <= seconds + 1e-9:
        time.sleep(max(0.0, start + k * interval - time.monotonic()))
        yield s.sample()
        k += 1


# ---- running a command under the monitor -------------------------------------------------------------------------

def run_during(argv: list[str], *, interval: float = 1.0, sampler: Optional[Sampler] = None,
               on_sample: Optional[Callable[[dict], None]] = None) -> tuple[int, list[dict]]:
    """Run `argv` (no shell) and sample every `interval` s until it exits, plus once when it exits.

    Returns (its return code, the samples); a command killed by signal N returns 128 + N, as shells report it. The
    child is terminated (then killed) if this call is interrupted.
    """
    s = sampler or Sampler()
    s.prime()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv)
    except FileNotFoundError:
        raise InvalidParameterError(f"--during: {argv[0]!r}: no such executable. Pass a command on PATH or a path "
                                    "to an executable file.") from None
    except PermissionError:
        raise InvalidParameterError(f"--during: {argv[0]!r} is not executable. Check the path and its "
                                    "permissions.") from None
    samples: list[dict] = []
    try:
        k = 1
        while True:
            try:
                proc.wait(max(0.0, start + k * interval - time.monotonic()))
                done = True
            except subprocess.TimeoutExpired:
                done = False
            samples.append(s.sample())
            if on_sample:
                on_sample(samples[-1])
            if done:
                break
            k += 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rc = proc.returncode
    return (128 - rc if rc < 0 else rc), samples


def _outputs(out: Path) -> tuple[Path, Path]:
    suffix = out.suffix.lower()
    if suffix == ".json":
        return out.with_suffix(".png"), out
    if suffix == ".png":
        return out, out.with_suffix(".json")
    raise InvalidParameterError(f"--out {out}: name the plot .png (its samples go to the .json beside it), e.g. "
                                "--out run.png.")


def _write_outputs(png: Path, js: Path, data: dict, title: str, force: bool) -> None:
    from .outdir import atomic_write_file, check_output_file

    image = plot_samples(data["samples"], title)  # both made in memory first: a failure leaves no half pair
    text = json.dumps(data, indent=1)
    check_output_file(png, force=force, option="--out")  # refused before either file is written
    atomic_write_file(js, lambda tmp: Path(tmp).write_text(text), option="--out", force=force)
    try:
        atomic_write_file(png, lambda tmp: Path(tmp).write_bytes(image), option="--out", force=force)
    except BaseException:
        js.unlink(missing_ok=True)
        raise


def _echo_json(s: dict) -> None:
    typer.echo(json.dumps(s, separators=(",", ":")))  # typer.echo flushes each line


def _reader_gone() -> None:
    """The reader of the JSON lines closed the pipe (`edgeslim monitor --json | head`): stop quietly, and keep the
    interpreter's final flush of stdout from failing on it too."""
    import os
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def command(
    interval: float = typer.Option(1.0, "--interval", help="Seconds between samples."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this many seconds [default: until Ctrl-C]."),
    top: int = typer.Option(5, "--top", min=0, help="Show this many processes, busiest first (0: none)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per sample per line instead of the panel."),
    during: Optional[str] = typer.Option(None, "--during", help="Run this command (no shell) and sample over its run; "
                                  "write a plot and the samples, exit with its code."),
    out: Path = typer.Option(Path("monitor.png"), "--out", help="With --during: the plot (.png); the samples go to the .json beside it."),
    force: bool = typer.Option(False, "--force", help="With --during: replace existing --out files."),
) -> None:
    """Live CPU load per core, frequency, temperature, memory, network rates and top processes while models run."""
    if not (math.isfinite(interval) and interval > 0):
        raise InvalidParameterError(f"--interval {interval}: give a number of seconds > 0, e.g. 0.5.")
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise InvalidParameterError(f"--seconds {seconds}: give a number of seconds >= 0, e.g. 10.")
    sampler = Sampler(top=top)
    if during is not None:
        if seconds is not None:
            raise InvalidParameterError("--seconds does not apply with --during: sampling lasts as long as the command. "
                                        "Drop one of them.")
        try:
            argv = shlex.split(during)
        except ValueError as e:
            raise InvalidParameterError(f"--during {during!r}: cannot split it ({e}). Check the quotes.") from None
        if not argv:
            raise InvalidParameterError("--during is empty. Pass the command to run, e.g. --during \"python infer.py\".")
        from .outdir import check_output_file

        png, js = _outputs(out)
        for p in (js, png):  # before the command runs
            check_output_file(p, force=force, option="--out")
        rc, samples = run_during(argv, interval=interval, sampler=sampler, on_sample=_echo_json if as_json else None)
        keys = TELEMETRY_KEYS + ("mem_percent", "net_rx_bytes_s", "net_tx_bytes_s")
        summary = summarize(samples, keys)
        title = shlex.join(argv)
        _write_outputs(png, js, {"command": argv, "returncode": rc, "interval_s": interval, "summary": summary,
                                 "samples": samples}, title if len(title) <= 100 else title[:97] + "...", force)
        fmt = {k: "n/a" if summary[k] is None else f"mean {summary[k]['mean']} max {summary[k]['max']}"
               for k in TELEMETRY_KEYS}
        typer.echo(f"{png}, {js}: {len(samples)} samples; exit code {rc}; CPU % {fmt['cpu_percent']}; MHz "
                   f"{fmt['freq_mhz']}; °C {fmt['temp_c']}", err=True)
        raise typer.Exit(rc)

    # Ctrl-C is the ordinary way to stop the panel: it ends the loop, not the program with an error.
    try:
        samples = watch(interval, seconds, sampler=sampler)
        if as_json:
            for s in samples:
                _echo_json(s)
            return
        from rich.live import Live

        with Live(render_panel(next(samples)), auto_refresh=False) as live:
            for s in samples:
                live.update(render_panel(s), refresh=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _reader_gone()
