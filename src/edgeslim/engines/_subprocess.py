"""Run converters and first loads in a child process with a timeout.

Native converters (mnnconvert, pnnx) and engine loads can abort the process (std::length_error, segfault) or
hang; in a child process that becomes a `ConversionError` carrying the tool's last stderr line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .base import ConversionError

__all__ = ["ToolRun", "run_tool", "run_python", "call_function", "last_line", "describe_failure"]

# Child processes get this environment: quiet, no pip or network side effects from tool wrappers.
_CHILD_ENV = {"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class ToolRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def last_line(*texts: str) -> str:
    """The last non-empty, informative line of the given texts (stderr first), for one-line errors."""
    noise = ("The device supports:", "CollectFeatureDistribution", "ComputeFeatureRange")
    for text in texts:
        lines = [l.strip() for l in (text or "").replace("\r", "\n").splitlines()]
        lines = [l for l in lines if l and not l.startswith(noise)]
        if lines:
            return lines[-1][:300]
    return ""


def run_tool(argv: list[str], timeout: float, cwd: Path | None = None, what: str = "converter") -> ToolRun:
    """Run `argv`; never raises for a failing tool (see `ToolRun.ok`), only records it."""
    env = dict(os.environ, **_CHILD_ENV)
    try:
        p = subprocess.run(argv, cwd=str(cwd) if cwd else None, capture_output=True, text=True, timeout=timeout,
                           env=env, stdin=subprocess.DEVNULL)
        return ToolRun(argv, p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return ToolRun(argv, -9, out, err, timed_out=True)
    except OSError as e:
        return ToolRun(argv, 127, "", f"{argv[0]}: {e}")


def run_python(code: str, args: list[str], timeout: float, cwd: Path | None = None) -> ToolRun:
    return run_tool([sys.executable, "-c", code, *args], timeout, cwd)


def describe_failure(run: ToolRun, what: str, timeout: float) -> str:
    if run.timed_out:
        return f"{what} hung (no result within {timeout:.0f} s; killed)"
    if run.returncode < 0:
        how = f"signal {-run.returncode}"
    elif run.returncode == 0:
        how = "exited 0 but wrote no model"
    else:
        how = f"exit code {run.returncode}"
    line = last_line(run.stderr, run.stdout).rstrip(".!")
    return f"{what} failed ({how}): {line or 'no message'}"


_CALL = """
import json, sys
import importlib
mod, fn = sys.argv[1].split(":")
kwargs = json.loads(open(sys.argv[2]).read())
res = getattr(importlib.import_module(mod), fn)(**kwargs)
open(sys.argv[3], "w").write(json.dumps(res))
"""


def call_function(target: str, kwargs: dict, timeout: float, workdir: Path, what: str) -> dict:
    """Call `module:function(**kwargs)` (JSON in, JSON out) in a child process; a crash is a `ConversionError`."""
    workdir.mkdir(parents=True, exist_ok=True)
    args_file, out_file = workdir / f"_{os.getpid()}_args.json", workdir / f"_{os.getpid()}_out.json"
    args_file.write_text(json.dumps(kwargs))
    out_file.unlink(missing_ok=True)
    try:
        run = run_python(_CALL, [target, str(args_file), str(out_file)], timeout)
        if not run.ok or not out_file.exists():
            raise ConversionError(describe_failure(run, what, timeout) + ".")
        return json.loads(out_file.read_text())
    finally:
        args_file.unlink(missing_ok=True)
        out_file.unlink(missing_ok=True)
