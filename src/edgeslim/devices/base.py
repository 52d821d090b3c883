"""The device interface: where a candidate's deploy folder is run (outputs) and timed (rounds), and its shared logic.

A device subclass says how to run a command there (`_exec`, `_popen`), how to put a folder there (`_put_tree`) and
how to read a file back (`_get`); everything above that (shipping the worker and the engine templates, the deploy
folder, the feeds, the timing rounds) is written once here. Paths on the device are relative to its edgeslim folder
(`workdir`), which every command runs in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bench import BenchResult, BenchSpec, noise_reasons
from ..errors import EdgeslimError, InvalidParameterError
from ..policy import ThreadPolicy
from ..registry import Registry

__all__ = ["Device", "DeviceError", "DEVICES", "register_device", "evaluate_on", "worker_files"]

DEVICES: Registry[type["Device"]] = Registry("device")
register_device = DEVICES.register
INDEX = "__index__"  # as in _remote_worker.py
RESULT = "EDGESLIM-RESULT "


class DeviceError(EdgeslimError, RuntimeError):
    """The device could not be reached, lost its connection, refused its host key, or died while running."""


def worker_files() -> dict[str, Path]:
    """What is shipped to a device beside a deploy folder: the worker and every engine's predict.py template."""
    here = Path(__file__).resolve().parent
    files = {"_remote_worker.py": here / "_remote_worker.py"}
    for t in sorted((here.parent / "engines" / "templates").glob("*.py")):
        if t.name != "__init__.py":
            files[f"templates/{t.name}"] = t
    return files


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with f.open("rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
    return h.hexdigest()[:20]


def write_feeds(path: Path, feeds_list: list[dict[str, np.ndarray]]) -> None:
    arrays = {f"f{i}_{j}": np.ascontiguousarray(a) for i, feeds in enumerate(feeds_list) for j, a in enumerate(feeds.values())}
    arrays[INDEX] = np.array(json.dumps({"batches": [list(f) for f in feeds_list]}))
    np.savez(path, **arrays)


def read_outputs(data: bytes) -> list[list[np.ndarray]]:
    with np.load(io.BytesIO(data)) as z:
        counts = json.loads(str(z[INDEX]))["counts"]
        return [[z[f"o{i}_{j}"] for j in range(n)] for i, n in enumerate(counts)]


def tar_bytes(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, src in files.items():
            tar.add(str(src), arcname=name, recursive=False)
    return buf.getvalue()


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class _Channel:
    """One timing worker on the device: JSON lines over the pipes of the process that reaches it (ssh, chroot)."""

    def __init__(self, proc: subprocess.Popen, err_path: str) -> None:
        self.proc, self.err_path, self.buf = proc, err_path, b""

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # it died: the next recv says how
            pass

    def recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                return {"error": f"no answer within {timeout:.0f} s (hung); killed"}
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return self._died()
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {"error": f"unreadable answer {line[:100]!r}"}

    def _died(self) -> dict:
        try:
            code = self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        try:
            tail = _last_line(Path(self.err_path).read_text(errors="replace"))
        except OSError:
            tail = ""
        return {"error": f"worker died (exit code {code})" + (f": {tail}" if tail else ""), "died": True}

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # EOF: the worker exits
        except OSError:
            pass
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class _Timed:
    spec: BenchSpec
    chan: _Channel
    result: BenchResult
    cpu0: float | None = None
    cpu1: float | None = None


class Device:
    """Base of every device. Subclasses set `kind`, implement the transport (`_exec`, `_popen`, `_put_tree`, `_get`)
    and `python`, and may refuse timing (`measures_speed = False`)."""

    kind = "?"
    measures_speed = True
    arch: str | None = None  # known without asking (qemu-aarch64); else describe() says

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._tool_rel: str | None = None
        self._described: dict | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    # ---- transport: what a subclass provides ---------------------------------------------------------------
    def _exec(self, argv: list[str], what: str, timeout: float, input: bytes | None = None) -> str:
        """Run argv in the device's workdir; its stdout. A failure is a DeviceError naming `what`."""
        raise NotImplementedError

    def _popen(self, argv: list[str], stderr) -> subprocess.Popen:
        """Start argv in the device's workdir with stdin and stdout as pipes to this process."""
        raise NotImplementedError

    def _put_tree(self, files: dict[str, Path], rel: str) -> None:
        """Make folder `rel` on the device hold exactly `files` (name in the folder -> local file), atomically."""
        raise NotImplementedError

    def _get(self, rel: str) -> bytes:
        raise NotImplementedError

    def _remove(self, rel: str) -> None:
        try:
            self._exec(["rm", "-rf", rel], f"removing {rel}", 60)
        except DeviceError:
            pass  # leftovers in the device's scratch folder are not worth failing a run

    def python(self) -> str:
        """The interpreter the worker runs with (the prepared venv's)."""
        raise NotImplementedError

    # ---- shared logic --------------------------------------------------------------------------------------
    def _tool(self) -> str:
        """Ship the worker and the templates once per content (a changed template is a new folder)."""
        if self._tool_rel is None:
            files = worker_files()
            h = hashlib.sha256(b"".join(n.encode() + p.read_bytes() for n, p in files.items())).hexdigest()[:16]
            rel = f"tool-{h}"
            if not self._has(f"{rel}/_remote_worker.py"):
                self._put_tree(files, rel)
            self._tool_rel = rel
        return self._tool_rel

    def _has(self, rel: str) -> bool:
        try:
            self._exec(["test", "-e", rel], f"looking for {rel}", 60)
            return True
        except DeviceError as e:
            if getattr(e, "exit_code", None) == 1:
                return False
            raise

    def _stage(self, folder: Path) -> str:
        """A deploy folder on the device, shipped once per content."""
        folder = Path(folder)
        if not (folder / "deploy.json").is_file():
            raise InvalidParameterError(f"{folder}: no deploy.json. Pass a folder made by edgeslim.deploy.export.")
        rel = f"deploy/{_tree_hash(folder)}"
        if not self._has(f"{rel}/deploy.json"):
            self._put_tree({str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}, rel)
        return rel

    def _worker(self, args: list[str], what: str, timeout: float) -> dict:
        out = self._exec([self.python(), f"{self._tool()}/_remote_worker.py", *args], what, timeout)
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith(RESULT)), None)
        if line is None:
            raise DeviceError(f"{self.spec}: {what} gave no result ({_last_line(out) or 'no output'}). Check the device's "
                              "Python with `edgeslim device info`.")
        return json.loads(line[len(RESULT):])

    def describe(self) -> dict:
        """name, kind, architecture, CPU model and flags, Python, the engines' package versions there."""
        if self._described is None:
            d = self._worker(["describe"], "describing the device", 120)
            self._described = {"name": self.spec, "kind": self.kind, "measures_speed": self.measures_speed, **d}
        return dict(self._described)

    def prepare(self, engines: list[str], **options) -> dict:
        raise NotImplementedError

    def run_outputs(self, deploy_folder: str | os.PathLike, feeds_list: list[dict[str, np.ndarray]], *,
                    threads: int | None = None, timeout: float = 1800.0) -> list[list[np.ndarray]]:
        """Run every feed dict of `feeds_list` through the deploy folder on the device; their outputs in order."""
        rel = self._stage(Path(deploy_folder))
        io_rel = f"io/{uuid.uuid4().hex[:12]}"
        with tempfile.TemporaryDirectory(prefix="edgeslim-dev-") as d:
            feeds = Path(d) / "feeds.npz"
            write_feeds(feeds, feeds_list)
            self._put_tree({"feeds.npz": feeds}, io_rel)
        try:
            args = ["outputs", rel, f"{io_rel}/feeds.npz", f"{io_rel}/out.npz"] + ([str(threads)] if threads else [])
            self.last_run = self._worker(args, f"running {Path(deploy_folder).name}", timeout)
            return read_outputs(self._get(f"{io_rel}/out.npz"))
        finally:
            self._remove(io_rel)

    # ---- timing ----------------------------------------------------------------------------------------------
    def _deploy_folder_of(self, spec: BenchSpec, tmp: Path, threads: int, policy: ThreadPolicy) -> Path:
        """A BenchSpec's artifact as a deploy folder: itself when it is one, else exported with the raw task (timing
        needs no pre/post-processing)."""
        p = Path(spec.artifact)
        if p.is_dir():
            return p
        from ..deploy import export
        from ..engines.base import meta_path
        from ..tasks import get_task

        task = get_task("raw")
        names: list[str] = []
        if p.suffix == ".onnx":
            from ..model import input_specs, load_onnx

            names = [s.name for s in input_specs(load_onnx(p))]
        elif meta_path(p).is_file():
            names = [i["name"] for i in json.loads(meta_path(p).read_text()).get("inputs", [])]
        task.input_names = names
        precision = json.loads(meta_path(p).read_text()).get("precision", "fp32") if meta_path(p).is_file() else "fp32"
        out = tmp / spec.id.replace("/", "_")
        export(out, p, spec.engine, precision, task, threads, policy.value)
        return out

    def bench_rounds(self, specs: list[BenchSpec], feeds: dict[str, np.ndarray], threads: int, rounds: int = 7, *,
                     policy: str | ThreadPolicy = ThreadPolicy.DEDICATED, progress: Callable[[int, int], None] | None = None,
                     target_round_s: float = 0.5, min_repeats: int = 3, max_repeats: int = 200,
                     start_timeout: float = 300.0, round_timeout: float = 600.0, pause_s: float = 0.25,
                     ) -> tuple[list[BenchResult], dict]:
        """`edgeslim.bench.bench_rounds` run on the device: one worker per spec there, rounds in rotated order, ratios to
        specs[0] of the same round. A spec's artifact may be a deploy folder or a candidate's model file. A worker that
        fails fails its own result; a device that cannot be reached raises DeviceError."""
        from ..bench import _check_args

        if not self.measures_speed:
            raise EdgeslimError(f"{self.spec}: speed is never taken from emulation. Time on the host or on a real device "
                                "(ssh://HOST); use this device for verifying outputs only.")
        policy = ThreadPolicy.of(policy)
        _check_args(specs, threads, rounds)
        timed: list[_Timed] = []
        with tempfile.TemporaryDirectory(prefix="edgeslim-devbench-") as d:
            tmp = Path(d)
            io_rel = f"io/{uuid.uuid4().hex[:12]}"
            write_feeds(tmp / "feeds.npz", [feeds])
            self._put_tree({"feeds.npz": tmp / "feeds.npz"}, io_rel)
            try:
                load = {"op": "load", "feeds": f"{io_rel}/feeds.npz", "threads": int(threads),
                        "thread_policy": policy.to_dict(), "env": policy.env()}
                for i, s in enumerate(specs):
                    res = BenchResult(s.id, ok=True, policy=policy.value)
                    rel = self._stage(self._deploy_folder_of(s, tmp, threads, policy))
                    err = open(tmp / f"worker{i}.stderr", "wb")
                    proc = self._popen([self.python(), f"{self._tool()}/_remote_worker.py", "serve"], err)
                    err.close()
                    t = _Timed(s, _Channel(proc, str(tmp / f"worker{i}.stderr")), res)
                    timed.append(t)
                    t.chan.send({**load, "deploy": rel})
                before = self._snapshot()
                for t in timed:
                    self._answer(t, t.chan.recv(start_timeout), "ready")
                reps = self._repeat_counts(timed, target_round_s, min_repeats, max_repeats, start_timeout)
                live = [t for t in timed if t.result.ok]
                for t in live:
                    t.cpu0 = t.cpu1
                before, t0 = self._snapshot(), time.monotonic()
                orders = []
                for r in range(rounds):
                    orders.append(self._one_round(r, live, reps, specs[0].id, pause_s, round_timeout))
                    if progress:
                        progress(r + 1, rounds)
                wall, after = time.monotonic() - t0, self._snapshot()
            finally:
                for t in timed:
                    t.chan.close()
                self._remove(io_rel)
        out = [t.result for t in timed]
        other = None
        if before and after and wall > 0:
            own = sum((t.cpu1 or 0) - (t.cpu0 or 0) for t in live if t.cpu0 is not None)
            other = round(max(0.0, (after["busy_s"] - before["busy_s"]) - own) / wall, 2)
        reasons = noise_reasons(out, threads, ((before or {}).get("load1"), (after or {}).get("load1")), other)
        tel = {"device": self.describe(), "policy": policy.value, "threads": int(threads), "worker_env": policy.env(),
               "loadavg_before": (before or {}).get("load1"), "loadavg_after": (after or {}).get("load1"),
               "other_load_cores": other, "orders": orders, "noisy": bool(reasons), "noise_reasons": reasons}
        return out, tel

    def _answer(self, t: _Timed, msg: dict, want: str) -> bool:
        if msg.get("ok") == want:
            t.result.peak_rss_mb = max(t.result.peak_rss_mb, float(msg.get("peak_rss_mb", 0.0)))
            t.cpu1 = msg.get("cpu_s")
            return True
        if msg.get("died"):
            self._check_alive(msg["error"])  # a lost device is everyone's failure: DeviceError
        t.result.ok, t.result.reason = False, f"benchmark worker on {self.spec}: {msg.get('error')}"
        return False

    def _check_alive(self, why: str) -> None:
        """Raise DeviceError when the device itself is gone (not just one worker)."""
        try:
            self._exec(["true"], "checking the device is still reachable", 20)
        except DeviceError as e:
            raise DeviceError(f"{self.spec}: lost the device while timing ({why}; {e}). Check it is up and reachable, "
                              "then run again.") from None

    def _repeat_counts(self, timed: list[_Timed], target_round_s: float, lo: int, hi: int, timeout: float) -> dict:
        import math

        reps = {}
        for t in [t for t in timed if t.result.ok]:
            t.chan.send({"op": "run", "n": 2})
            msg = t.chan.recv(timeout)
            if self._answer(t, msg, "times"):
                reps[t.spec.id] = int(min(hi, max(lo, math.ceil(target_round_s * 1e3 / max(min(msg["times_ms"]), 1e-3)))))
        return reps

    def _one_round(self, r: int, live: list[_Timed], reps: dict, baseline: str, pause_s: float, timeout: float) -> list[str]:
        k = r % len(live) if live else 0
        order = [t for t in live[k:] + live[:k] if t.result.ok]
        med = {}
        for t in order:
            time.sleep(pause_s)  # let the previous worker's pool park (see edgeslim.bench)
            t.chan.send({"op": "run", "n": reps[t.spec.id]})
            msg = t.chan.recv(timeout)
            if not self._answer(t, msg, "times"):
                continue
            t.result.times_ms += msg["times_ms"]
            t.result.repeats = reps[t.spec.id]
            med[t.spec.id] = float(np.median(msg["times_ms"]))
            t.result.round_medians_ms.append(med[t.spec.id])
        if baseline in med:
            for t in live:
                if t.spec.id in med:
                    t.result.ratios.append(med[baseline] / med[t.spec.id])
        return [t.spec.id for t in order]

    def _snapshot(self) -> dict | None:
        """Load average and busy CPU seconds of the whole device (from /proc), for the noise check."""
        try:
            text = self._exec(["cat", "/proc/loadavg", "/proc/stat"], "reading the device's load", 30)
        except DeviceError:
            return None
        lines = text.splitlines()
        try:
            cpu = [int(x) for x in next(ln for ln in lines if ln.startswith("cpu ")).split()[1:]]
            busy = sum(cpu[:8]) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # all but idle and iowait; guest is in user
            return {"load1": float(lines[0].split()[0]), "busy_s": busy / os.sysconf("SC_CLK_TCK")}
        except (StopIteration, ValueError, IndexError):
            return None


def evaluate_on(device: Device, folder: str | os.PathLike, task: Any, samples: list, batch_size: int = 8,
                threads: int | None = None) -> tuple[list, int]:
    """`edgeslim.tasks.base.evaluate` with the model run on `device`: the host makes the batches, the device runs the
    deploy folder on them (one round trip for all), the host decodes. Returns (predictions in sample order, how many
    non-finite output values were seen)."""
    batches = list(task.batches(samples, batch_size))
    outs = device.run_outputs(folder, [b.feeds for b in batches], threads=threads)
    preds: list[Any] = [None] * len(samples)
    nonfinite = 0
    for b, o in zip(batches, outs):
        nonfinite += sum(int(np.size(x) - np.isfinite(x).sum()) for x in o if np.issubdtype(np.asarray(x).dtype, np.floating))
        for i, p in zip(b.index, task.decode(o)):
            preds[i] = p
    return preds, nonfinite


def copy_tree_atomic(files: dict[str, Path], dest: Path) -> None:
    """For devices whose files are reachable on the host (local, a chroot): copy into a temp folder, then rename."""
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    for name, src in files.items():
        (part / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, part / name)
    shutil.rmtree(dest, ignore_errors=True)
    part.rename(dest)
