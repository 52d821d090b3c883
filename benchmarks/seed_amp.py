"""bf16 AMP training step vs fp32 on this CPU: the figures of ``benchmarks/amp_step.py`` as one flat dict.

``run(quick=False)`` returns ``amp_speedup`` (fp32 step / edgeslim AMP step for the matmul-dominated MLP, median of
per-round ratios), ``isa`` (this CPU's bf16 ISA: "amx_bf16", "avx512_bf16", or "avx512"/"avx2" where bf16 is
emulated), per-model speedups, step times and verdicts (``mlp``, ``minilm``, ``conv``), the final losses of fp32
and AMP training runs, the AVX2-capped proxy figure and the conditions (threads, OMP_WAIT_POLICY, flags, load).

    python benchmarks/seed_amp.py [--quick]

Prints ``RESULT k=v ...``; without ``--quick`` also writes ``benchmarks/results/seed_amp.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_JSON = HERE / "results" / "seed_amp.json"


def _bench():
    """benchmarks/amp_step.py as a module (the benchmarks folder is not a package)."""
    name = "edgeslim_bench_amp_step"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "amp_step.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def run(quick: bool = False) -> dict:
    """Measure; ``quick``: 3 rounds, a 20-step mlp loss run, no minilm loss run, 2 emulated rounds (about 1 minute)."""
    b = _bench()
    if quick:
        res = b.measure(rounds=3, loss_steps={"mlp": 20}, emulated_rounds=2)
    else:
        res = b.measure(rounds=9, loss_steps={"mlp": 100, "minilm": 50}, emulated_rounds=3)
    out = b.summary(res)
    out["quick"] = quick
    out["conditions"] = res["conditions"]
    out["rounds"] = res["rounds"]
    out["loss_steps"] = res["loss_steps"]
    return out


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    r = run(quick=args.quick)
    print(_bench().result_line(r))
    if not args.quick:
        _write_json(r, RESULT_JSON)
        print(f"wrote {RESULT_JSON}")


if __name__ == "__main__":
    main()
