"""`local`: this machine, as today. Timing is `edgeslim.bench.bench_rounds` itself; outputs run through the same
worker a remote device runs (with this Python), so `local` checks the device path end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..cache import cache_dir
from ..policy import ThreadPolicy
from .base import Device, DeviceError, _last_line, copy_tree_atomic, register_device

__all__ = ["LocalDevice"]


@register_device("local")
class LocalDevice(Device):
    kind = "local"

    def __init__(self, spec: str = "local", *, workdir: str | Path | None = None) -> None:
        super().__init__("local")
        self.workdir = Path(workdir) if workdir else cache_dir() / "devices" / "local"
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _exec(self, argv, what, timeout, input=None):
        try:
            r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, cwd=self.workdir)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"local: {what} did not finish within {timeout:.0f} s.") from None
        if r.returncode:
            err = DeviceError(f"local: {what} failed (exit code {r.returncode}: "
                              f"{_last_line(r.stderr.decode(errors='replace')) or 'no message'}).")
            err.exit_code = r.returncode
            raise err
        return r.stdout.decode(errors="replace")

    def _popen(self, argv, stderr):
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=self.workdir)

    def _put_tree(self, files, rel):
        copy_tree_atomic(files, self.workdir / rel)

    def _get(self, rel):
        return (self.workdir / rel).read_bytes()

    def python(self) -> str:
        return sys.executable

    def prepare(self, engines: list[str], **options) -> dict:
        """Nothing to install: the engines must import here (as edgeslim already requires)."""
        from ..engines import get_engine

        missing = [e for e in engines if not get_engine(e).available()]
        if missing:
            raise DeviceError(f"local: engines {missing} are not installed. Run: pip install 'edgeslim[engines]'.")
        return {"cached": True, "python": sys.executable, "packages": sorted({get_engine(e).package for e in engines})}

    def describe(self) -> dict:
        from ..bench import machine_info

        d = super().describe()
        d.update({k: v for k, v in machine_info(1).items() if k in ("cpu", "flags")})
        return d

    def bench_rounds(self, specs, feeds, threads, rounds=7, *, policy=ThreadPolicy.DEDICATED, progress=None, **kw):
        """Today's timing, unchanged (deploy folders given as specs are timed by their model file)."""
        import json

        from ..bench import BenchSpec, bench_rounds
        from ..engines import get_engine

        own = []
        for s in specs:
            if Path(s.artifact).is_dir():  # a deploy folder: its engine's main model file
                d = json.loads((Path(s.artifact) / "deploy.json").read_text(encoding="utf-8"))
                main = d["model_files"][get_engine(d["engine"]).main_role]
                s = BenchSpec(id=s.id, engine=d["engine"], artifact=str(Path(s.artifact) / main))
            own.append(s)
        res, tel = bench_rounds(own, feeds, threads, rounds, policy=policy, progress=progress, **kw)
        return res, {**tel, "device": self.describe()}
