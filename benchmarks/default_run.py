"""How long the README's first command takes: `edgeslim optimize` with no flags, as a new user runs it.

    python benchmarks/default_run.py [--no-write]

Runs the CLI in a subprocess with an empty cache (`EDGESLIM_CACHE` pointed at a fresh temporary folder, so no
candidate is replayed) and an output folder in a temporary directory, and records the wall time, the time at which
each stage began (the CLI's own progress lines), the selection line, the load average before and after and the CPU
flags, and the console's candidate table. Stored as benchmarks/results/default_run.json unless `--no-write`. Ends with `RESULT seconds= selected=
within_5_min=`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
STAGE = re.compile(r"^\[\s*(\d+) s\] (.+?) \((\d+)\)\s*$")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from edgeslim.bench import machine_info

    with tempfile.TemporaryDirectory(prefix="edgeslim-default-run-") as d:
        env = {**os.environ, "EDGESLIM_CACHE": str(Path(d) / "cache")}
        cli = Path(sys.executable).with_name("edgeslim")
        load0 = os.getloadavg()
        t0 = time.monotonic()
        p = subprocess.run([str(cli), "optimize", "--outdir", str(Path(d) / "out")], env=env, cwd=d,
                           capture_output=True, text=True)
        seconds = time.monotonic() - t0
        load1 = os.getloadavg()
    if p.returncode != 0:
        sys.exit(f"edgeslim optimize failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    stages = []
    for line in p.stderr.splitlines():
        m = STAGE.match(line.strip())
        if m:
            stages.append({"at_s": int(m.group(1)), "stage": m.group(2), "items": int(m.group(3))})
    # the phases a reader needs: build (until the first evaluate of a candidate), evaluate, each benchmark phase
    marks = [(s["at_s"], s["stage"]) for s in stages]
    phases: dict[str, float] = {}
    names = []
    for at, st in marks:
        ph = ("evaluate" if st.startswith("evaluate ") and not st.startswith("evaluate original") else
              st if st.startswith(("benchmark", "roofline")) else "prepare + build")
        if not names or names[-1][1] != ph:
            names.append((at, ph))
    for (at, ph), nxt in zip(names, names[1:] + [(round(seconds), "end")]):
        phases[ph] = phases.get(ph, 0) + nxt[0] - at
    selected = next((ln for ln in p.stdout.splitlines() if ln.startswith("selected:")), "")
    rec = {"command": "edgeslim optimize", "seconds": round(seconds, 1), "phases_s": phases, "stages": stages,
           "selected_line": selected, "selection": next((ln for ln in p.stdout.splitlines() if ln.startswith("selection:")), ""),
           "console": p.stdout.splitlines(), "loadavg_before": load0, "loadavg_after": load1, "machine": machine_info(2),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps({k: rec[k] for k in ("seconds", "phases_s", "selected_line", "loadavg_before", "loadavg_after")}, indent=1))
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "default_run.json").write_text(json.dumps(rec, indent=1))
    sel = selected.split()[1] if len(selected.split()) > 1 else None
    print(f"RESULT seconds={seconds:.0f} selected={sel} within_5_min={seconds <= 300}")


if __name__ == "__main__":
    main()
