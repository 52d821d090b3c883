"""A re-run with the cache: `edgeslim optimize` (no flags, the bundled default) twice with a fresh cache.

Prints `RESULT first_s= second_s= ratio= same_selection= cache_hits=` and writes benchmarks/results/cache_rerun.json.
The second run must reuse every built and evaluated candidate and the benchmark, and select the same candidate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    exe = str(Path(sys.executable).parent / "edgeslim")
    with tempfile.TemporaryDirectory(prefix="edgeslim-cache-bench-") as d:
        d = Path(d)
        env = dict(os.environ, EDGESLIM_CACHE=str(d / "cache"))
        runs = []
        for name in ("first", "second"):
            t0 = time.perf_counter()
            r = subprocess.run([exe, "optimize", "-o", str(d / name), "--json"], capture_output=True, text=True, env=env)
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"{name} run failed: {r.stderr.strip().splitlines()[-1:]}")
            res = json.loads(r.stdout)
            runs.append({"run": name, "seconds": round(secs, 2), "selected": res["selected"], "cache": res["cache"],
                         "bench": {k: res["bench"].get(k) for k in ("cached", "noisy", "noise_reasons")},
                         "machine": res["machine"]})
    out = {"first_s": runs[0]["seconds"], "second_s": runs[1]["seconds"],
           "ratio": round(runs[0]["seconds"] / runs[1]["seconds"], 1),
           "same_selection": runs[0]["selected"] == runs[1]["selected"], "selected": runs[0]["selected"],
           "cache_hits": runs[1]["cache"]["hits"], "runs": [{k: v for k, v in r.items() if k != "machine"} for r in runs],
           "machine": runs[0]["machine"]}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cache_rerun.json").write_text(json.dumps(out, indent=1))
    print(f"RESULT first_s={out['first_s']} second_s={out['second_s']} ratio={out['ratio']} "
          f"same_selection={out['same_selection']} cache_hits={out['cache_hits']} selected={out['selected']}")


if __name__ == "__main__":
    main()
