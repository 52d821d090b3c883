"""Latency measurement that survives a shared, noisy machine.

Each candidate runs in its own worker process (engines with spinning thread pools slow whichever engine runs
next inside one process). Workers take turns in rounds (A B C A B C ...); a round gives each candidate a
median over an automatic repeat count, and a ratio to the baseline of the same round. Absolute times on a
shared machine drift 2x within minutes; ratios of the same round do not. While rounds run, a thread samples CPU
load, frequency and temperature with psutil (what a system-monitor applet shows), recorded beside the figures.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["BenchSpec", "BenchResult", "bench_rounds", "bench_one", "machine_info", "Telemetry"]


@dataclass(frozen=True, kw_only=True)
class BenchSpec:
    id: str
    engine: str
    artifact: str


@dataclass
class BenchResult:
    id: str
    ok: bool
    reason: str = ""
    times_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # baseline / this, per round
    peak_rss_mb: float = 0.0
    repeats: int = 0

    def latency(self) -> dict[str, float]:
        if not self.times_ms:
            return {}
        t = np.asarray(self.times_ms)
        return {"p50": round(float(np.percentile(t, 50)), 3), "p90": round(float(np.percentile(t, 90)), 3),
                "p99": round(float(np.percentile(t, 99)), 3), "mean": round(float(t.mean()), 3)}

    def speedup(self) -> float | None:
        return round(float(np.median(self.ratios)), 3) if self.ratios else None

    def speedup_range(self) -> list[float]:
        return [round(float(min(self.ratios)), 3), round(float(max(self.ratios)), 3)] if self.ratios else []


def _worker(conn, engine: str, artifact: str, threads: int, feeds_file: str) -> None:
    try:
        import resource

        from .engines import get_engine

        z = np.load(feeds_file)
        feeds = {k: z[k] for k in z.files}
        runner = get_engine(engine).load(Path(artifact), threads)
        runner.run(feeds)
        conn.send(("ready", None))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            kind, n = msg
            runner.run(feeds)  # untimed: the first run after idling pays cold caches and parked threads
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                runner.run(feeds)
                times.append((time.perf_counter() - t0) * 1e3)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            conn.send(("times", (times, rss)))
    except Exception as e:  # reported to the parent as this candidate's failure
        try:
            conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
        except Exception:
            pass


class Telemetry:
    """Background sampler of CPU %, frequency (MHz) and temperature (C, where the OS exposes it)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _loop(self) -> None:
        import psutil

        psutil.cpu_percent(None)
        while not self._stop.wait(self.interval):
            s = {"cpu_percent": psutil.cpu_percent(None)}
            try:
                f = psutil.cpu_freq()
                s["freq_mhz"] = f.current if f else None
            except Exception:
                s["freq_mhz"] = None
            try:
                temps = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
                vals = [t.current for v in temps.values() for t in v if t.current]
                s["temp_c"] = max(vals) if vals else None
            except Exception:
                s["temp_c"] = None
            self.samples.append(s)

    def __enter__(self) -> "Telemetry":
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._t:
            self._t.join()

    def summary(self) -> dict:
        out = {"samples": len(self.samples)}
        for k in ("cpu_percent", "freq_mhz", "temp_c"):
            v = [s[k] for s in self.samples if s.get(k) is not None]
            out[k] = {"mean": round(float(np.mean(v)), 1), "max": round(float(np.max(v)), 1)} if v else None
        return out


def bench_rounds(specs: list[BenchSpec], feeds: dict[str, np.ndarray], threads: int, rounds: int = 7,
                 target_round_s: float = 0.5, min_repeats: int = 3, max_repeats: int = 200,
                 start_timeout: float = 120.0, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[list[BenchResult], dict]:
    """Time every spec in its own process, alternating in rounds; specs[0] is the baseline of the ratios."""
    ctx = mp.get_context("spawn")
    results = {s.id: BenchResult(s.id, ok=True) for s in specs}
    workers: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="edgeslim-bench-") as d:
        feeds_file = os.path.join(d, "feeds.npz")
        np.savez(feeds_file, **feeds)
        for s in specs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, s.engine, s.artifact, threads, feeds_file), daemon=True)
            p.start()
            workers[s.id] = (p, parent)
        for s in specs:  # wait for each to load and run once
            p, conn = workers[s.id]
            msg = _recv(conn, p, start_timeout)
            if msg[0] != "ready":
                results[s.id].ok, results[s.id].reason = False, f"benchmark worker: {msg[1]}"
        live = [s for s in specs if results[s.id].ok]
        # repeat count per candidate: enough runs for ~target_round_s per round
        reps = {}
        for s in live:
            p, conn = workers[s.id]
            conn.send(("run", 2))
            msg = _recv(conn, p, start_timeout)
            if msg[0] != "times":
                results[s.id].ok, results[s.id].reason = False, f"benchmark worker: {msg[1]}"
                continue
            t = max(min(msg[1][0]), 1e-3)
            reps[s.id] = int(min(max_repeats, max(min_repeats, math.ceil(target_round_s * 1e3 / t))))
        live = [s for s in live if results[s.id].ok]
        with Telemetry() as tel:
            for r in range(rounds):
                med = {}
                for s in live:
                    if not results[s.id].ok:
                        continue
                    p, conn = workers[s.id]
                    # let the previous worker's thread pool park: OpenMP (ncnn) and onnxruntime spin for a while after
                    # a run, and a spinning idle pool steals a core from the worker being timed
                    time.sleep(0.25)
                    conn.send(("run", reps[s.id]))
                    msg = _recv(conn, p, 600.0)
                    if msg[0] != "times":
                        results[s.id].ok, results[s.id].reason = False, f"benchmark worker: {msg[1]}"
                        continue
                    times, rss = msg[1]
                    res = results[s.id]
                    res.times_ms += times
                    res.peak_rss_mb = max(res.peak_rss_mb, rss)
                    res.repeats = reps[s.id]
                    med[s.id] = float(np.median(times))
                    res.round_medians_ms.append(med[s.id])
                base = specs[0].id
                if base in med:
                    for sid, m in med.items():
                        results[sid].ratios.append(med[base] / m)
                if progress:
                    progress(r + 1, rounds)
        for p, conn in workers.values():
            try:
                conn.send(None)
            except Exception:
                pass
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [results[s.id] for s in specs], tel.summary()


def _recv(conn, proc, timeout: float):
    if conn.poll(timeout):
        try:
            return conn.recv()
        except EOFError:
            pass
    code = proc.exitcode
    if proc.is_alive():
        proc.kill()
        return ("error", f"no answer within {timeout:.0f} s (hung); killed")
    return ("error", f"process died (exit code {code})")


def bench_one(engine: str, artifact: str, feeds: dict[str, np.ndarray], threads: int, rounds: int = 5,
              progress=None) -> tuple[BenchResult, dict]:
    res, tel = bench_rounds([BenchSpec(id="model", engine=engine, artifact=artifact)], feeds, threads, rounds, progress=progress)
    return res[0], tel


def machine_info(threads: int) -> dict:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = sorted(f for f in have if f.startswith(("avx512", "avx2", "fma", "f16c", "amx")) or f in ("avx_vnni",))
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": cpu, "flags": flags, "threads": threads, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def as_dict(r: BenchResult) -> dict:
    return asdict(r)
