"""Latency measurement that survives a shared, noisy machine.

Each candidate runs in its own worker process (engines with spinning thread pools slow whichever engine runs
next inside one process). Workers are fresh interpreters (`python -m edgeslim._bench_worker`), not
multiprocessing's spawn, which re-runs the caller's script in every child when it lacks a `__main__` guard.
Workers take turns in rounds, the order rotated each round (A B C, B C A, C A B ...); a round gives each candidate
a median over an automatic repeat count, and a ratio to the baseline of the same round. Absolute times on a
shared machine drift 2x within minutes; ratios of the same round do not. The conditions are recorded beside the
figures: the thread policy (`dedicated`: pools spin between runs; `shared`: they sleep), the load average before
and after, the CPU time other processes took, CPU load, frequency and temperature sampled with psutil, and
whether (and why) the run looks noisy."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import numpy as np

from .engines._subprocess import last_line
from .errors import InvalidParameterError
from .policy import ThreadPolicy

__all__ = ["BenchSpec", "BenchResult", "bench_rounds", "bench_one", "machine_info", "Telemetry", "noise_reasons",
           "worker_env", "random_feeds", "bench_target", "BenchTarget", "busy_warning"]


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
    peak_rss_mb: float = 0.0  # the worker's own peak (VmHWM), not the caller's
    repeats: int = 0
    policy: str = ThreadPolicy.DEDICATED  # thread policy the candidate ran under (edgeslim.policy)

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


class Telemetry:
    """Background sampler of CPU %, frequency (MHz) and temperature (C, where the OS exposes it).

    The figures come from `edgeslim.monitor.Sampler` (the sampling code `edgeslim monitor` shows), without the
    per-process scan, which would itself load the machine every `interval` s while candidates are timed. `reader`
    replaces the psutil reading (see `edgeslim.monitor.read`)."""

    def __init__(self, interval: float = 0.25, reader: Callable | None = None) -> None:
        self.interval = interval
        self.reader = reader
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _loop(self, sampler) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(sampler.sample())

    def __enter__(self) -> "Telemetry":
        from .monitor import Sampler  # imported and primed here, not in the thread, so no import runs while timing

        sampler = Sampler(self.reader, top=0)
        sampler.prime()
        self._t = threading.Thread(target=self._loop, args=(sampler,), daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._t:
            self._t.join()

    def summary(self) -> dict:
        """{"samples": n, "cpu_percent" | "freq_mhz" | "temp_c": {"mean", "max"}, or None where no sample has it}."""
        from .monitor import summarize

        return summarize(self.samples)


# Other processes may take this much CPU time (in cores) while we time before a run is flagged as noisy.
LOAD_ALLOWANCE = 0.5
# A candidate whose middle half of per-round ratios spans more than this fraction of its median is flagged too.
RATIO_SPREAD = 0.15
# Worker processes per candidate over a timing, one after another, each for an equal share of the rounds (bench_rounds).
PROCESSES = 2


@dataclass
class _Worker:
    spec: BenchSpec
    proc: subprocess.Popen
    conn: Connection
    stderr_path: str


def worker_env(policy: str | ThreadPolicy) -> dict[str, str]:
    """The environment variables a benchmark worker gets for `policy` (on top of the caller's environment)."""
    return ThreadPolicy.of(policy).env()


def _start_worker(spec: BenchSpec, index: int, cfg: dict, env: dict, folder: str) -> _Worker:
    ours, theirs = mp.Pipe()  # duplex: a socketpair on Unix, inherited by the child through pass_fds
    err_path = os.path.join(folder, f"worker{index}.stderr")
    try:
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edgeslim._bench_worker", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, cwd=folder)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # only the child holds that end now: its death reads as EOF here
    w = _Worker(spec, proc, ours, err_path)
    _send(w, ("load", {**cfg, "engine": spec.engine, "artifact": str(Path(spec.artifact).resolve())}))
    return w


def _send(w: _Worker, msg) -> None:
    try:
        w.conn.send(msg)
    except OSError:  # the worker died; the next _recv says how
        pass


def _recv(w: _Worker, timeout: float):
    try:
        if w.conn.poll(timeout):
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    try:
        code = w.proc.wait(2.0)  # closed its end: give it a moment to exit
    except subprocess.TimeoutExpired:
        w.proc.kill()
        w.proc.wait()
        return ("error", f"no answer within {timeout:.0f} s (hung); killed")
    if code < 0 and -code in signal.valid_signals():
        how = f"killed by {signal.Signals(-code).name}"
    else:
        how = f"exit code {code}"
    tail = _stderr_tail(w.stderr_path)
    return ("error", f"process died ({how})" + (f": {tail}" if tail else ""))


def _stderr_tail(path: str, nbytes: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - nbytes))
            return last_line(f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def _stop_workers(workers: list[_Worker], graceful: bool) -> None:
    """Ask each worker to exit (when `graceful`), then kill and reap whatever is left: none outlives the call."""
    try:
        if graceful:
            for w in workers:
                _send(w, None)
            deadline = time.monotonic() + 5.0
            for w in workers:
                try:
                    w.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
        for w in workers:
            try:
                w.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
            w.conn.close()


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_seconds(workers: list[_Worker]) -> tuple[float, float] | None:
    """(CPU seconds all cores spent busy, CPU seconds of this process, its reaped children and its live workers)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest time is inside user already
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    me = psutil.Process().cpu_times()
    own = me.user + me.system + me.children_user + me.children_system
    for w in workers:
        if w.proc.poll() is None:
            try:
                c = psutil.Process(w.proc.pid).cpu_times()
                own += c.user + c.system
            except psutil.Error:
                pass
    return busy, own


def _check_args(specs: list[BenchSpec], threads: int, rounds: int) -> None:
    if not specs:
        raise InvalidParameterError("bench_rounds got no specs. Pass at least one BenchSpec (the first is the "
                                    "baseline).")
    ids = [s.id for s in specs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InvalidParameterError(f"bench_rounds got duplicate spec ids {dup}. Give every BenchSpec its own id.")
    if int(threads) < 1 or int(rounds) < 1:
        raise InvalidParameterError(f"bench_rounds needs threads >= 1 and rounds >= 1, got threads={threads}, "
                                    f"rounds={rounds}.")


def noise_reasons(results: list[BenchResult], threads: int, loadavg: tuple[float | None, float | None],
                  other_cores: float | None) -> list[str]:
    """Why a run's figures may not hold (empty when they should); `results[0]` is the baseline."""
    # The 1-min load average is recorded, not judged: right after edgeslim's own evaluation it still counts that
    # work (it decays over minutes), which flagged quiet machines as busy. Other processes' CPU time while timing is
    # the direct measure; the spread of the middle half of the rounds (not min..max: one outlier round among five is
    # normal) says whether the ratios hold.
    reasons = []
    if other_cores is not None and other_cores > LOAD_ALLOWANCE:
        reasons.append(f"other processes kept {other_cores:.2f} cores busy while timing")
    for r in results[1:]:
        if r.ok and len(r.ratios) >= 2:
            q1, q3, mid = (float(np.quantile(r.ratios, q)) for q in (0.25, 0.75, 0.5))
            if mid > 0 and (q3 - q1) / mid > RATIO_SPREAD:
                reasons.append(f"{r.id}: the middle half of its per-round ratios spans {q1:.3f}..{q3:.3f} "
                               f"({(q3 - q1) / mid:.0%} of the median)")
    return reasons


def _start_all(specs: list[BenchSpec], cfg: dict, env: dict, folder: str, results: dict[str, BenchResult],
               start_timeout: float, by_id: dict[str, _Worker]) -> None:
    """Start every worker at once (into `by_id`, so the caller stops whatever started if this raises), then wait for
    each to load; a worker that fails fails its own result only."""
    for i, s in enumerate(specs):
        by_id[s.id] = _start_worker(s, i, cfg, env, folder)
    for s in specs:
        msg = _recv(by_id[s.id], start_timeout)
        if msg[0] != "ready":
            _fail(results[s.id], msg)
        else:
            results[s.id].peak_rss_mb = float(msg[1]["peak_rss_mb"])


def _fail(res: BenchResult, msg) -> None:
    res.ok, res.reason = False, f"benchmark worker: {msg[1]}"


def _repeat_counts(specs: list[BenchSpec], by_id: dict[str, _Worker], results: dict[str, BenchResult],
                   target_round_s: float, min_repeats: int, max_repeats: int, timeout: float) -> dict[str, int]:
    """Runs per round for each live candidate: enough for about `target_round_s` seconds."""
    reps = {}
    for s in [s for s in specs if results[s.id].ok]:
        _send(by_id[s.id], ("run", 2))
        msg = _recv(by_id[s.id], timeout)
        if msg[0] != "times":
            _fail(results[s.id], msg)
            continue
        t = max(min(msg[1][0]), 1e-3)
        reps[s.id] = int(min(max_repeats, max(min_repeats, math.ceil(target_round_s * 1e3 / t))))
    return reps


PARK_WINDOW_S = 0.02


def _wait_parked(w: _Worker | None, max_s: float) -> None:
    """Until worker `w`'s process used no CPU over a `PARK_WINDOW_S` window (its thread pool stopped spinning after
    its run), at most `max_s` seconds; `max_s` when its CPU time cannot be read. Measured after a run of the default
    model under the dedicated policy, in 20 ms windows: ncnn (GOMP_SPINCOUNT 3M) spins about 80 ms, onnxruntime
    about 40 ms, OpenVINO and MNN 0-20 ms; a fixed pause long enough for the slowest wastes the rest."""
    import psutil

    deadline = time.monotonic() + max_s
    try:
        proc = psutil.Process(w.proc.pid) if w is not None and w.proc.poll() is None else None
        last = sum(proc.cpu_times()[:2]) if proc is not None else None
    except psutil.Error:
        proc, last = None, None
    if proc is None or last is None:
        time.sleep(max_s if w is not None else 0.0)
        return
    while time.monotonic() + PARK_WINDOW_S <= deadline:
        time.sleep(PARK_WINDOW_S)
        try:
            now = sum(proc.cpu_times()[:2])
        except psutil.Error:
            return
        if now <= last:
            return
        last = now
    time.sleep(max(0.0, deadline - time.monotonic()))


def _one_round(r: int, live: list[BenchSpec], by_id: dict[str, _Worker], results: dict[str, BenchResult],
               reps: dict[str, int], baseline: str, pause_s: float, timeout: float) -> list[str]:
    """Round `r`: each live candidate in the order rotated by `r`; appends times and the per-round ratio to the
    baseline. Returns the order."""
    k = r % len(live) if live else 0
    order = [s for s in live[k:] + live[:k] if results[s.id].ok]
    med = {}
    prev = by_id[order[-1].id] if order else None  # the last worker of the previous round ran just before
    for s in order:
        w, res = by_id[s.id], results[s.id]
        # let the previous worker's thread pool park: onnxruntime and OpenMP spin for a while after a run, and a
        # spinning idle pool steals a core from the worker being timed
        _wait_parked(prev, pause_s)
        prev = w
        _send(w, ("run", reps[s.id]))
        msg = _recv(w, timeout)
        if msg[0] != "times":
            _fail(res, msg)
            continue
        times, rss = msg[1]
        res.times_ms += times
        res.peak_rss_mb = max(res.peak_rss_mb, float(rss))
        res.repeats = reps[s.id]
        med[s.id] = float(np.median(times))
        res.round_medians_ms.append(med[s.id])
    if baseline in med:
        for sid, m in med.items():
            results[sid].ratios.append(med[baseline] / m)
    return [s.id for s in order]


def _worker_env(policy: ThreadPolicy) -> dict[str, str]:
    env = dict(os.environ, **policy.env())
    # the worker imports this very edgeslim, however the caller found it
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p)
    return env


def bench_rounds(specs: list[BenchSpec], feeds: dict[str, np.ndarray], threads: int, rounds: int = 7, *,
                 policy: str | ThreadPolicy = ThreadPolicy.DEDICATED, progress: Callable[[int, int], None] | None = None,
                 target_round_s: float = 0.5, min_repeats: int = 3, max_repeats: int = 200,
                 start_timeout: float = 120.0, round_timeout: float = 600.0, pause_s: float = 0.25,
                 processes: int = PROCESSES) -> tuple[list[BenchResult], dict]:
    """Time every spec in its own worker process, in rounds; specs[0] is the baseline of the ratios.

    The rounds are split among `processes` generations of workers: after each share of the rounds every worker is
    stopped and a fresh one loads the same model. A process keeps its state for life (where its memory landed, which
    kernels its compilation picked), so two processes timing the same file can differ by more than either's range of
    rounds (`benchmarks/process_spread.py` times one file in two processes to check); with one process per candidate
    such a gap would hide inside a narrow range and decide a selection. `generations` in the returned conditions says
    which rounds each generation ran and in which processes.

    Round r times the candidates in their order rotated by r, so none is always first (or always right after the
    baseline). A worker that fails to load, errors or hangs (killed after `start_timeout` / `round_timeout` s) fails
    its own candidate only. Before each candidate runs, the worker that ran before it is given up to `pause_s` to
    park its thread pool (until its process uses no CPU for `PARK_WINDOW_S`). Every worker is gone when this returns
    or raises (KeyboardInterrupt, SystemExit). Returns one result per spec and the conditions: CPU telemetry,
    `policy`, `loadavg_before`/`loadavg_after`, `other_load_cores`, `orders` (ids per round), `noisy` and
    `noise_reasons`.

    >>> res, tel = bench_rounds([BenchSpec(id="fp32", engine="ort", artifact="m.onnx"),
    ...                          BenchSpec(id="int8", engine="ort", artifact="m.int8.onnx")],
    ...                         {"x": x}, threads=2, rounds=5, policy="shared")  # doctest: +SKIP
    >>> res[1].speedup(), tel["noisy"]  # doctest: +SKIP
    """
    policy = ThreadPolicy.of(policy)
    _check_args(specs, threads, rounds)
    results = {s.id: BenchResult(s.id, ok=True, policy=policy.value) for s in specs}
    by_id: dict[str, _Worker] = {}
    orders: list[list[str]] = []
    generations: list[dict] = []
    tel = Telemetry()
    loadavg_before, loadavg_after, other_cores = _loadavg(), None, None
    with tempfile.TemporaryDirectory(prefix="edgeslim-bench-") as d:
        graceful = False
        try:
            feeds_file = os.path.join(d, "feeds.npz")
            np.savez(feeds_file, **feeds)
            cfg = {"threads": int(threads), "policy": policy.value, "feeds": feeds_file}
            _start_all(specs, cfg, _worker_env(policy), d, results, start_timeout, by_id)
            reps = _repeat_counts(specs, by_id, results, target_round_s, min_repeats, max_repeats, start_timeout)
            n_gen = max(1, min(int(processes), rounds))
            bounds = [round(rounds * g / n_gen) for g in range(n_gen + 1)]
            other_s, wall_s = 0.0, 0.0
            for g in range(n_gen):
                if g:  # a fresh process per candidate for the next share of the rounds
                    _stop_workers(list(by_id.values()), True)
                    by_id.clear()
                    _start_all([s for s in specs if results[s.id].ok], cfg, _worker_env(policy), d, results,
                               start_timeout, by_id)
                generations.append({"rounds": [bounds[g], bounds[g + 1]],
                                    "pids": {k: w.proc.pid for k, w in by_id.items()}})
                live = [s for s in specs if results[s.id].ok]
                workers = list(by_id.values())
                cpu0, t0 = _cpu_seconds(workers), time.monotonic()
                with tel:
                    for r in range(bounds[g], bounds[g + 1]):
                        orders.append(_one_round(r, live, by_id, results, reps, specs[0].id, pause_s, round_timeout))
                        if progress:
                            progress(r + 1, rounds)
                cpu1, wall = _cpu_seconds(workers), time.monotonic() - t0
                if cpu0 and cpu1 and wall > 0:
                    other_s += max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]))
                    wall_s += wall
            if wall_s > 0:
                other_cores = round(other_s / wall_s, 2)
            loadavg_after = _loadavg()
            graceful = True
        finally:
            _stop_workers(list(by_id.values()), graceful)
    out = [results[s.id] for s in specs]
    reasons = noise_reasons(out, threads, (loadavg_before, loadavg_after), other_cores)
    telemetry = {**tel.summary(), "policy": policy.value, "threads": int(threads), "worker_env": policy.env(),
                 "loadavg_before": loadavg_before, "loadavg_after": loadavg_after, "other_load_cores": other_cores,
                 "orders": orders, "generations": generations, "noisy": bool(reasons), "noise_reasons": reasons}
    return out, telemetry


def bench_one(engine: str, artifact: str, feeds: dict[str, np.ndarray], threads: int, rounds: int = 5,
              progress: Callable[[int, int], None] | None = None, policy: str | ThreadPolicy = ThreadPolicy.DEDICATED,
              ) -> tuple[BenchResult, dict]:
    """Time one model alone: `bench_rounds` with a single spec."""
    res, tel = bench_rounds([BenchSpec(id="model", engine=engine, artifact=artifact)], feeds, threads, rounds,
                            policy=policy, progress=progress)
    return res[0], tel


def random_feeds(specs: list, shape: tuple[int, ...] | None, where: str) -> dict[str, np.ndarray]:
    """Seeded inputs for timing a model whose inputs are `specs` (`edgeslim.model.TensorSpec`s): floats uniform in
    [-1, 1], integers zero. `shape` fixes the first input's dims; a dynamic dim other than the batch that decides the
    latency and is not given is an `InvalidParameterError` naming `where` with an example --shape."""
    from .model import resolve_shape

    feeds = {}
    rng = np.random.default_rng(0)
    for i, s in enumerate(specs):
        dyn = [k for k, d in enumerate(s.shape) if not (isinstance(d, int) and d > 0)]
        if (shape is None or i > 0) and any(k > 0 for k in dyn):
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if k == 0 else "N") for k, d in enumerate(s.shape))
            raise InvalidParameterError(f"{where}: input {s.name!r} {list(s.shape)} has dynamic dims {[k for k in dyn if k > 0]} "
                                        f"that decide the latency. Pass --shape with real sizes, e.g. {example}.")
        dims = resolve_shape(s, shape if i == 0 else None)
        dt = np.dtype(s.dtype) if s.dtype not in ("?", None) else np.dtype(np.float32)
        feeds[s.name] = rng.uniform(-1, 1, dims).astype(dt) if dt.kind == "f" else np.zeros(dims, dt)
    return feeds


@dataclass
class BenchTarget:
    """What `edgeslim bench` times: the engine, its model file, threads, policy and the inputs."""

    engine: str
    artifact: Path
    threads: int
    policy: ThreadPolicy
    feeds: dict[str, np.ndarray]
    original: Path | None = None  # an output folder's original model, timed beside it (on the default engine)


def _original_of(folder: Path) -> Path | None:
    """The model an output folder was optimized from: its baseline candidate's file if the folder kept candidates/,
    else the model path results.json records, if it still exists."""
    import json

    try:
        d = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = next((c for c in d.get("candidates", []) if c.get("id") == d.get("baseline")), None)
    for p in ([folder / base["artifact"]] if base and base.get("artifact") else []) + [Path(str((d.get("config") or {}).get("model")))]:
        if p.suffix == ".onnx" and p.is_file():
            return p
    return None


def bench_target(model: str, engine: str | None, threads: int | None, policy: str | None,
                 shape: tuple[int, ...] | None) -> BenchTarget:
    """Resolve what to time: an output folder (its deploy.json names the engine, threads, policy and the input shape
    it was measured at) or a model file / zoo name (timed on the default engine). The inputs are checked by one
    untimed run here, so a shape the model rejects fails with one line, not in a worker."""
    from .engines import DEFAULT_ENGINE, get_engine
    from .model import TensorSpec, input_specs, load_onnx, run_all_tensors
    from .zoo import model_path

    p, m = Path(model), None
    if p.is_dir():
        from .deploy import load as load_deployed

        d = load_deployed(p)
        dep, engine, artifact = d.spec, d.engine, d.model_path
        rt = dep.get("runtime", {})
        threads = threads if threads is not None else int(rt.get("threads", 2))
        policy = policy or rt.get("thread_policy", {}).get("policy", ThreadPolicy.DEDICATED.value)
        specs = [TensorSpec(i["name"], i.get("dtype") or "float32",
                            tuple(x if isinstance(x, int) else None for x in (i.get("shape") or [None, None, None, None])))
                 for i in dep["inputs"]]
        default = dep.get("info", {}).get("bench_input_shape")
        shape = shape if shape is not None or not default else tuple(default)
    else:
        artifact = model_path(model)
        m = load_onnx(artifact)
        specs = input_specs(m)
        if engine not in (None, DEFAULT_ENGINE):
            raise InvalidParameterError(f"--engine {engine}: a model file is timed on {DEFAULT_ENGINE}; convert it with "
                                        "`edgeslim convert` or optimize it, then pass the output folder.")
        engine = DEFAULT_ENGINE
    threads = threads if threads is not None else 2
    pol = ThreadPolicy.of(policy or ThreadPolicy.DEDICATED.value, "--cpu")
    if threads < 1:
        raise InvalidParameterError(f"--threads {threads} is not valid: give 1 or more.")
    feeds = random_feeds(specs, shape, model)
    if m is not None:
        run_all_tensors(m, feeds, [])
    else:
        get_engine(engine).load(artifact, threads).run(feeds)
    return BenchTarget(engine, Path(artifact), threads, pol, feeds, _original_of(p) if p.is_dir() else None)


def busy_warning(tel: dict) -> str | None:
    """One line when the machine was busy while timing (other processes' CPU time, or a load average above half the
    cores before the run), else None."""
    reasons = []
    if tel.get("other_load_cores") is not None and tel["other_load_cores"] > LOAD_ALLOWANCE:
        reasons.append(f"other processes kept {tel['other_load_cores']:.2f} cores busy")
    cores = os.cpu_count() or 1
    if tel.get("loadavg_before") is not None and tel["loadavg_before"] > cores / 2:
        reasons.append(f"load average {tel['loadavg_before']} on {cores} cores before timing")
    if not reasons:
        return None
    return "the machine was busy (" + "; ".join(reasons) + "): absolute times are inflated; the ratio to the original, " \
           "timed in the same rounds, holds better"


def _cpu_flags() -> tuple[str, list[str]]:
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
    return cpu, flags


def machine_info(threads: int) -> dict:
    """The machine a figure was measured on: CPU model and vector flags, cores, Python, and the version of every
    installed engine's package under the package's name (e.g. `onnxruntime`)."""
    from .engines import engine_versions

    cpu, flags = _cpu_flags()
    return {"cpu": cpu, "flags": flags, "threads": threads, "cores": os.cpu_count(), "python": platform.python_version(),
            **engine_versions(), "platform": platform.platform()}


def as_dict(r: BenchResult) -> dict:
    return asdict(r)
