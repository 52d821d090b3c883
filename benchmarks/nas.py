"""Hardware-aware architecture search on MNIST: CARS vs random search at the same budget, on a 2-worker local Ray
instance; the fine-tuned front against the hand-designed fp32 CNN of ``benchmarks/bnn_mnist.py``.

Data: MNIST t10k (10,000 IDX digits) from ``--data`` (default ../shared/data/mnist), split 80/20 train/test with
seed 0 (the test split of bnn_mnist.py); the 8,000 train images are split 7,000 supernet / 1,000 validation (seed 1).
The search selects on validation accuracy; only the final front and the baseline are scored on test. Latency: each
subnet exported to ONNX and timed on onnxruntime in its own worker process (``edgeslim.bench.bench_rounds``),
interleaved with the baseline in the same rounds, 1 thread, batch 1.

    python benchmarks/nas.py [--budget-minutes 20] [--workers 2] [--out /tmp/edgeslim-nas-bench]

Ends with ``RESULT front= best_acc= fastest_at_98= baseline_acc= baseline_ms_ratio= hv_cars= hv_random=
ray_workers= minutes=``; ``fastest_at_98`` and ``baseline_ms_ratio`` are latency / baseline latency (median of
per-round ratios) of the fastest front member with test top-1 >= 0.98 and >= the baseline's; ``minutes`` is the
whole run's wall time. The baseline trains as many epochs as each front member is fine-tuned (``--baseline-epochs``
to change it). Writes ``benchmarks/results/<store>.json`` and ``<store>_front.png`` (``--store``, default ``nas``); with ``--optimize-check`` also
hands the fastest member to ``edgeslim.optimize --task classify`` on 300 test digits written as PNG files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def default_data() -> Path:
    for p in (ROOT.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist")):
        if p.is_dir():
            return p
    return ROOT.parent / "shared" / "data" / "mnist"


def _fmt(v) -> str:
    return "none" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def optimize_check(res: dict, out: Path, data: Path, n: int = 300) -> dict:
    """Write n test digits as class-folder PNGs and run ``edgeslim.optimize`` on the fastest front member."""
    import cv2

    from edgeslim.api import optimize
    from edgeslim.research.train.data import load_mnist, split

    images, labels = load_mnist(data)
    _, te = split(len(images), test_fraction=0.2, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="edgeslim-nas-digits-"))
    try:
        for i in te[:n]:
            d = folder / str(labels[i])
            d.mkdir(exist_ok=True)
            cv2.imwrite(str(d / f"{i:05d}.png"), images[i])
        fastest = min(res["front"], key=lambda m: m["latency_ratio"])
        r = optimize(out / fastest["name"], data=folder, task="classify", recipes="fp32,int8", threads=1, rounds=3,
                     engines="")
        cands = [{k: row[k] for k in ("id", "status", "metric", "speedup", "reason")} for row in r.table()]
        return {"member": fastest["name"], "images": n, "selected": r.study.selected, "candidates": cands}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--steps-per-generation", type=int, default=40)
    ap.add_argument("--warmup-steps", type=int, default=60)
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--baseline-epochs", type=int, default=None,
                    help="epochs for the hand-designed baseline (default: --finetune-epochs, the members' budget)")
    ap.add_argument("--store", default="nas", help="stored as benchmarks/results/<store>.json and <store>_front.png")
    ap.add_argument("--max-front", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeslim-nas-bench")
    ap.add_argument("--optimize-check", action="store_true")
    args = ap.parse_args()

    from edgeslim.research.nas.latency import LatencyConfig
    from edgeslim.research.nas.run import NasConfig, plot_front, run_nas, write_outputs
    from edgeslim.research.nas.search import SearchConfig

    t0 = time.monotonic()
    cfg = NasConfig(budget_minutes=args.budget_minutes, finetune_epochs=args.finetune_epochs, max_front=args.max_front,
                    baseline_epochs=args.finetune_epochs if args.baseline_epochs is None else args.baseline_epochs,
                    workers=args.workers,
                    search=SearchConfig(population=args.population, offspring=args.offspring, generations=None,
                                        budget_s=1.0, warmup_steps=args.warmup_steps,
                                        steps_per_generation=args.steps_per_generation, seed=args.seed,
                                        latency=LatencyConfig(engine="ort", threads=1, batch=1)))
    print(f"data {args.data}; budget {args.budget_minutes} min; Ray workers {args.workers}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    res = run_nas(args.data, cfg, progress=lambda m: print(f"  [{(time.monotonic() - t0) / 60:5.1f} min] {m}", flush=True))
    write_outputs(res, args.out, force=True)
    body = json.loads((args.out / "results.json").read_text())
    if args.optimize_check:
        print("optimize check: edgeslim.optimize on the fastest front member", flush=True)
        body["optimize_check"] = optimize_check(body, args.out, args.data)
    body["minutes"] = round((time.monotonic() - t0) / 60.0, 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.store}.json").write_text(json.dumps(body, indent=1))
    plot_front(body, RESULTS / f"{args.store}_front.png")

    b = body["baseline"]
    print(f"\nsplit: {body['split']}; sizes {body['sizes']}")
    print(f"CARS: {body['cars']['generations']} generations, {len(body['cars']['history'])} logged, "
          f"{body['cars']['seconds']} s; random: {body['random']['generations'] if body['random'] else '-'} generations")
    print(f"final timing ({body['engine']}, {body['threads']} thread, batch {body['batch']}, "
          f"{cfg.final_rounds} rounds): noisy={body['final_timing']['noisy']} {body['final_timing']['noise_reasons']}")
    print("\n| model | architecture | params | test top-1 | latency / baseline | p50 ms |")
    print("|---|---|---|---|---|---|")
    print(f"| baseline CNN | 3x3 convs 16-32-32-64-64 | {b['params']} | {b['test_acc']:.4f} | 1.000 | "
          f"{b['latency_p50_ms']} |")
    for m in sorted(body["front"], key=lambda m: m["latency_ratio"] if m["latency_ratio"] is not None else 9):
        print(f"| {m['name']} | {m['describe']} | {m['params']} | {m['test_acc']:.4f} | {_fmt(m['latency_ratio'])} | "
              f"{m['latency_p50_ms']} |")
    if "optimize_check" in body:
        print(f"\noptimize check: {json.dumps(body['optimize_check'])}")
    print(f"\nRESULT front={len(body['front'])} best_acc={_fmt(body['best_acc'])} "
          f"fastest_at_98={_fmt(body['fastest_at_98'])} baseline_acc={_fmt(b['test_acc'])} "
          f"baseline_ms_ratio={_fmt(body['baseline_ms_ratio'])} hv_cars={_fmt(body['hv_cars'])} "
          f"hv_random={_fmt(body['hv_random'])} ray_workers={body['ray']['workers']} minutes={body['minutes']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
