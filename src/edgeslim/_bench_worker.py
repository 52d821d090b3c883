"""One benchmark candidate in a fresh interpreter: `python -m edgeslim._bench_worker FD`.

Started by `edgeslim.bench.bench_rounds` with `subprocess`, never with `multiprocessing`'s spawn, which re-imports the
caller's `__main__` (a user script without an `if __name__ == "__main__":` guard would run again in every worker).
FD is the child end of a `multiprocessing.Pipe()` (a socketpair on Unix) passed with `pass_fds`.

Protocol, parent -> worker: ("load", {engine, artifact, threads, policy, feeds}), then ("run", n) per round, then None.
Worker -> parent: ("ready", {"pid", "peak_rss_mb"}) after one untimed run; ("times", (times_ms, peak_rss_mb)) per
("run", n), which first runs once untimed (the first run after idling pays cold caches and parked threads);
("error", "Type: first line") on any failure. The worker exits on None or when the parent's end closes (EOF), so it
never outlives a parent that died.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.connection import Connection


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB.

    Not `ru_maxrss`: Linux keeps the largest RSS across fork+exec, so a worker started by a 600 MB parent reports
    600 MB. VmHWM belongs to the address space that exec creates. Where /proc is missing, the current RSS.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def serve(conn: Connection) -> None:
    try:
        kind, cfg = conn.recv()
        if kind != "load":
            raise RuntimeError(f"expected a load message first, got {kind!r}")
        from .engines.base import thread_policy

        # Before any engine import: OpenMP runtimes read their wait policy once, when they load.
        os.environ.setdefault("OMP_WAIT_POLICY", thread_policy(cfg["policy"])["OMP_WAIT_POLICY"])
        from pathlib import Path

        import numpy as np

        from .engines import get_engine

        with np.load(cfg["feeds"]) as z:
            feeds = {k: z[k] for k in z.files}
        runner = get_engine(cfg["engine"]).load(Path(cfg["artifact"]), int(cfg["threads"]), cfg["policy"])
        runner.run(feeds)
        conn.send(("ready", {"pid": os.getpid(), "peak_rss_mb": peak_rss_mb()}))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            _, n = msg
            runner.run(feeds)  # untimed: the first run after idling pays cold caches and parked threads
            times = []
            for _ in range(int(n)):
                t0 = time.perf_counter()
                runner.run(feeds)
                times.append((time.perf_counter() - t0) * 1e3)
            conn.send(("times", (times, peak_rss_mb())))
    except EOFError:  # the parent closed its end or died
        return
    except Exception as e:  # reported to the parent as this candidate's failure
        try:
            conn.send(("error", _describe(e)))
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        sys.stderr.write("usage: python -m edgeslim._bench_worker FD (started by edgeslim.bench.bench_rounds)\n")
        return 2
    conn = Connection(int(argv[0]))
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
