"""Do the default job's candidates predict on arm64 what they predict on this x86 host?

Every built candidate of `edgeslim optimize` (default job: the PP-OCRv4 recognizer on the bundled lines) is exported to
a deploy folder and run on qemu-aarch64 as a Cortex-A76 and as a Cortex-A53 (arm64 kernels of the same engine
packages, emulated: outputs only, never speed) on held-out lines (the eval split, never calibration). Per candidate
and CPU: CER there vs CER here, lines whose text differs, and the largest absolute difference of the raw outputs.

    sudo python benchmarks/arm_verify.py [--from OUTDIR] [--lines 8] [--cpus cortex-a76,cortex-a53] [--no-write]

--from reads an existing output folder (its candidates/ and results.json); without it the job runs first with
eval_limit=40 into a temp folder. Needs the arm64 root (`edgeslim device setup qemu-aarch64`, run here if missing).
Emulation runs the recognizer at ~5 s a line (2 threads; ~300x native): 8 lines x 20 candidates x 2 CPUs take
about 25 minutes on 2 shared cores; each 8 more lines add about as much.
Stores benchmarks/results/arm_verify.json and ends with one RESULT line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DCER_TOL = 1e-9  # a CER that moves at all counts: the lines are few, one changed character shows


def job_folder(src: str | None, tmp: Path) -> Path:
    if src:
        return Path(src)
    from edgeslim.api import optimize

    out = tmp / "job"
    t0 = time.time()
    optimize(eval_limit=40, outdir=out, progress=None)
    print(f"optimize (host, eval_limit=40): {time.time() - t0:.0f} s", flush=True)
    return out


def host_outputs(folder: Path, feeds_list: list[dict]) -> list[list[np.ndarray]]:
    from edgeslim.deploy import load

    runner = load(folder).runner
    return [[np.asarray(o) for o in runner.run(f)] for f in feeds_list]


def decode(task, batches, outs) -> tuple[list, int]:
    preds, nonfinite = [None] * sum(len(b.index) for b in batches), 0
    for b, o in zip(batches, outs):
        nonfinite += sum(int(np.size(x) - np.isfinite(x).sum()) for x in o if np.issubdtype(np.asarray(x).dtype, np.floating))
        for i, p in zip(b.index, task.decode(o)):
            preds[i] = p
    return preds, nonfinite


def verify(job: Path, n_lines: int, cpus: list[str], tmp: Path, save=None) -> dict:
    from edgeslim.deploy import export, load
    from edgeslim.devices import DeviceError, parse_device

    res = json.loads((job / "results.json").read_text())
    selected = res.get("selected")
    task = load(job).task  # the job's bound task (charset, input size), read back from its deploy.json
    from edgeslim.tasks import get_task

    _, ev = get_task(res["task"]).load(None)  # the bundled data's eval split: never used for calibration
    samples = ev[:n_lines]
    batches = list(task.batches(samples, 8))
    feeds = [b.feeds for b in batches]
    from edgeslim.zoo import model_path

    source = model_path(res["config"]["model"])
    rows, devices = [], {c: parse_device(f"qemu-aarch64:{c}") for c in cpus}
    descr = {c: d.describe() for c, d in devices.items()}
    out = {"rows": rows, "lines": len(samples), "selected": selected, "devices": descr}
    # the selection first: it is what ships, and a run cut short has verified it
    for c in sorted(res["candidates"], key=lambda c: c["id"] != selected):
        if save:
            save(out)
        row = {"id": c["id"], "engine": c["engine"], "status": c["status"], "selected": c["id"] == selected,
               "host_metric_job": c.get("metric"), "cpus": {}}
        rows.append(row)
        if not c.get("artifact") or c["status"] == "failed":
            row["skipped"] = "not built"
            continue
        folder = tmp / "deploy" / c["id"].replace("/", "_").replace(":", "_")
        try:
            export(folder, job / c["artifact"], c["engine"], c["recipe"], task, 2, "shared",
                   extra={"source_model": str(source)})
            host = host_outputs(folder, feeds)
        except Exception as e:
            row["skipped"] = f"export/host run failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        hp, _ = decode(task, batches, host)
        row["host_metric"] = task.score(hp, samples)["metric"]
        for cpu, dev in devices.items():
            t0 = time.time()
            try:
                outs = dev.run_outputs(folder, feeds, threads=2, timeout=3600)
            except DeviceError as e:
                row["cpus"][cpu] = {"error": str(e)}
                print(f"{c['id']:<28} {cpu:<11} FAILED {e}", flush=True)
                continue
            dp, nonfinite = decode(task, batches, outs)
            m = task.score(dp, samples)["metric"]
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                       for ho, do in zip(host, outs) for a, b in zip(ho, do))
            per_line = [s for s in dev.last_run["seconds"]]
            r = {"metric": m, "dcer": m - row["host_metric"], "lines_differ": sum(a != b for a, b in zip(hp, dp)),
                 "max_abs_diff": diff, "nonfinite": nonfinite, "seconds": round(time.time() - t0, 1),
                 "s_per_line": round(sum(per_line) / len(samples), 3)}
            row["cpus"][cpu] = r
            print(f"{c['id']:<28} {cpu:<11} CER {m:.4f} (host {row['host_metric']:.4f}) lines differ {r['lines_differ']:>2} "
                  f"max|d| {diff:.2e} {r['s_per_line']:.2f} s/line", flush=True)
    return out


def summary(out: dict, cpus: list[str]) -> dict:
    ran = [(r, cpu, v) for r in out["rows"] for cpu, v in r["cpus"].items() if "error" not in v]
    div = [(r, cpu) for r, cpu, v in ran if v["lines_differ"] or abs(v["dcer"]) > DCER_TOL or v["nonfinite"]]
    s = {"verified": len(ran), "diverged": len(div), "diverged_selected": sum(1 for r, _ in div if r["selected"]),
         "failed": sum(1 for r in out["rows"] for v in r["cpus"].values() if "error" in v)}
    for cpu in cpus:
        key = "max_dcer_" + cpu.split("-")[-1]
        vals = [abs(v["dcer"]) for r, c, v in ran if c == cpu]
        s[key] = round(max(vals), 4) if vals else None
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", help="an existing edgeslim output folder (candidates/ + results.json)")
    ap.add_argument("--lines", type=int, default=8)
    ap.add_argument("--cpus", default="cortex-a76,cortex-a53")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    from edgeslim.devices.qemu import setup

    t0 = time.time()
    root = setup(progress=lambda m: print("setup:", m, flush=True))
    cpus = [c.strip() for c in a.cpus.split(",") if c.strip()]
    p = ROOT / "benchmarks" / "results" / "arm_verify.json"

    def save(partial: dict) -> None:  # after every candidate: a run cut short keeps what it verified
        if not a.no_write:
            p.write_text(json.dumps({**partial, "partial": True, "summary": summary(partial, cpus)}, indent=1, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="edgeslim-arm-") as d:
        job = job_folder(a.src, Path(d))
        try:
            out = verify(job, a.lines, cpus, Path(d), save)
        except Exception:
            traceback.print_exc()
            return 1
    s = summary(out, cpus)
    out.update(summary=s, seconds=round(time.time() - t0, 1), job=str(a.src or "optimize(eval_limit=40)"),
               host={"machine": platform.machine(), "processor": platform.processor()},
               qemu_root={k: root.get(k) for k in ("seconds", "disk_bytes", "versions")},
               measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if not a.no_write:
        p.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"wrote {p.relative_to(ROOT)}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in s.items() if k != "failed") + f" failed={s['failed']} "
          f"lines={out['lines']} seconds={out['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
