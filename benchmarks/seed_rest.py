"""The smaller parts in one run: Reformer's LSH attention, Objectron, the host roofline, and bf16 AMP training.

Each part is its own script (`seed_reformer.py`, `seed_objectron.py`, `seed_roofline.py`, `seed_amp.py`, each with
its method in its docstring). This one runs them one after another, each in a fresh process (so one part's threads,
allocator and peak memory do not touch the next), collects their RESULT lines, and writes them together to
benchmarks/results/seed_rest.json. A part that fails is recorded with its reason and the others still run.

    python benchmarks/seed_rest.py [--quick] [--only reformer,amp]

Ends with
``RESULT reformer_16k_fits= reformer_mem_ratio_4k= reformer_bpc= full_bpc= objectron_ok= roofline_err= amp_speedup= isa=``.
Targets: reformer_16k_fits=true, reformer_mem_ratio_4k <= 0.25, reformer_bpc <= full_bpc + 0.1, objectron_ok=true,
roofline_err <= 2.0, amp_speedup >= 1.3 where isa has bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("reformer", "objectron", "roofline", "amp")
KEYS = ("reformer_16k_fits", "reformer_mem_ratio_4k", "reformer_bpc", "full_bpc", "objectron_ok", "roofline_err",
        "amp_speedup", "isa")


def parse_result(text: str) -> dict[str, str]:
    """The key=value pairs of the last line starting with RESULT."""
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {}
    return dict(tok.split("=", 1) for tok in lines[-1].split()[1:] if "=" in tok)


def run_part(name: str, quick: bool, timeout_s: float) -> dict:
    cmd = [sys.executable, str(HERE / f"seed_{name}.py")] + (["--quick"] if quick else [])
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s", "wall_s": round(time.time() - t0)}
    out = {"wall_s": round(time.time() - t0), "result": parse_result(p.stdout), "rc": p.returncode}
    if p.returncode != 0 or not out["result"]:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        out.update(status="failed", reason=f"exit {p.returncode}: " + " | ".join(tail))
    else:
        out["status"] = "ok"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each part's smoke settings")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per part")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    runs = {}
    load = {"start": os.getloadavg()}
    for name in parts:
        print(f"[seed_rest] {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_part(name, args.quick, args.timeout)
        print(f"[seed_rest] {name}: {runs[name]['status']} in {runs[name]['wall_s']} s "
              f"{runs[name].get('reason', '')}", file=sys.stderr, flush=True)
    load["end"] = os.getloadavg()
    merged = {}
    for r in runs.values():
        merged.update(r.get("result", {}))
    summary = {k: merged.get(k, "n/a") for k in KEYS}
    out = {"quick": args.quick, "loadavg": load, "parts": runs, "summary": summary}
    if not args.quick:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "seed_rest.json").write_text(json.dumps(out, indent=1))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
