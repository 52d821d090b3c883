"""SLIDE vs dense full-softmax and sampled-softmax PyTorch on the same CPU cores, in one run.

    python benchmarks/slide.py            # full run (about 35 min on 2 cores)
    python benchmarks/slide.py --quick    # smoke run, under 10 min

A fourth method, ``uniform``, is SLIDE's own trainer with the LSH turned off (only the shared uniform negatives
SLIDE also draws): the ablation that shows what the hash tables add.

Same network for all (sparse input -> EmbeddingBag-like sum -> hidden 128 ReLU -> n_labels), same
initial weights, same loss, Adam with the same hyper-parameters, same threads. The three methods
train in alternating slices of a few seconds inside one process, so machine load (this machine is
shared) hits them alike. The clock counts training only; P@1/P@5 checkpoints are exact (all labels)
on the same test samples. Time to a target P@1: the training time from which a method's P@1 stays at or above
it for the rest of the run (the crossing after its last checkpoint below, interpolated), the target being the best
baseline's (sampled softmax's) final P@1.

    python benchmarks/slide.py --rescore benchmarks/results/slide.json   # recompute the summary of a stored run
    python benchmarks/slide.py --memory --labels 1000000   # SLIDE alone at 1M labels: peak memory, P@1

P@1 is evaluated on 5,000 test samples (standard error about 0.7 points) and every SLIDE checkpoint also records its
active set's recall of the exact top-5 labels (on the first 500 test samples).

Ends with: RESULT labels= speedup_vs_sampled= speedup_vs_dense= slide_p1= sampled_p1= recall5= test_n=
uniform_speedup_vs_sampled= uniform_p1=
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

THREADS = 2
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, str(THREADS))

import numpy as np  # noqa: E402

from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc  # noqa: E402
from edgeslim.research.slide.hashing import HashConfig  # noqa: E402
from edgeslim.research.slide.network import init_params, warmup  # noqa: E402
from edgeslim.research.slide.train import (  # noqa: E402
    Checkpoint, FitConfig, FitRun, fit_interleaved, make_trainer, p1_standard_error, plot_p1_vs_time, time_to_reach)

HERE = Path(__file__).resolve().parent
SLIDE_N_RANDOM = 512  # uniform negatives per batch, shared by its samples, standing in for the unsampled labels
SLIDE_CENTER = True  # SimHash on h - mean(h)


def machine() -> dict:
    cpu, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx512f", "avx2", "fma"))]
                break
    except OSError:
        pass
    import numba
    import torch

    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count(), "threads": THREADS,
            "torch": torch.__version__, "numba": numba.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under 10 minutes")
    ap.add_argument("--labels", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--rescore", type=Path, default=None, help="recompute the summary of a stored run's histories")
    ap.add_argument("--memory", action="store_true", help="SLIDE alone at --labels: peak resident memory and P@1")
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds of the --memory run")
    ap.add_argument("--n-random", type=int, default=SLIDE_N_RANDOM,
                    help="uniform negatives drawn per batch and shared by its samples (0: the paper's SLIDE)")
    ap.add_argument("--center", action=argparse.BooleanOptionalAction, default=SLIDE_CENTER,
                    help="hash centred hidden vectors (h - running mean) instead of h")
    args = ap.parse_args()
    if args.rescore is not None:
        return rescore(args.rescore)
    if args.memory:
        return memory_run(args.labels, args.budget, args.out, args.n_random, args.center)
    q = args.quick
    budget = 60.0 if q else 300.0  # training seconds for each method
    slide_budget = budget / 2 if q else budget
    sens_budget = 10.0 if q else 45.0
    slice_s = 5.0
    lr, hidden, batch = 1e-2, 128, 128
    slide_hash = dict(family="simhash", K=10, L=16, bucket_size=64, range_pow=16,
                      rebuild_every=20, rebuild_growth=1.1, rebuild_max=400)
    max_active = 1024

    import numba
    import torch

    torch.set_num_threads(THREADS)
    numba.set_num_threads(THREADS)
    warmup()  # JIT compilation must not count as training time
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    t0 = time.time()
    syn = SyntheticConfig(n_train=30_000 if q else 100_000, n_test=1000 if q else 5000, n_features=50_000,
                          n_labels=args.labels, seed=0)
    train, test = make_synthetic_xmc(syn)
    log(f"data: {syn} in {time.time() - t0:.0f}s")
    params = init_params(syn.n_features, syn.n_labels, hidden, seed=0)
    common = dict(n_features=syn.n_features, n_labels=syn.n_labels, hidden=hidden, lr=lr, params=params,
                  threads=THREADS)
    eval_every = budget / (10 if q else 20)
    ev = dict(batch_size=batch, max_epochs=100, eval_every_s=eval_every, eval_samples=syn.n_test)
    fits = {
        "dense": FitConfig(time_budget_s=budget, **ev),
        "sampled": FitConfig(time_budget_s=budget, **ev),
        "slide": FitConfig(time_budget_s=slide_budget, **ev),
        "uniform": FitConfig(time_budget_s=slide_budget, **ev),
    }
    trainers = {
        "dense": make_trainer("dense", **common),
        "sampled": make_trainer("sampled", n_sampled=max_active, **common),
        "slide": make_trainer("slide", max_active=max_active, hash=HashConfig(**slide_hash), n_random=args.n_random,
                              center_queries=args.center, **common),
        # the ablation: the same kernels and shared uniform negatives, the LSH turned off
        "uniform": make_trainer("uniform", n_random=args.n_random, **common),
    }
    runs = {}
    for name, tr in trainers.items():
        runs[name] = FitRun(tr, train, test, fits[name], progress=lambda c, n=name: log(
            f"  {n:8s} t={c.train_s:6.1f}s samples={c.samples:7d} {c.samples_per_s:6.0f}/s "
            f"loss={c.loss:.3f} P@1={c.p1:.4f} P@5={c.p5:.4f}"))
    # alternate short slices so the three see the same machine load
    res = fit_interleaved(runs, slice_s)
    dense_p1 = res["dense"].final.p1
    target = dense_p1 - 0.01
    t_to = {n: time_to_reach(r.history, target) for n, r in res.items()}
    # samples seen when the target was reached (same interpolation, on the samples axis)
    s_to = {n: time_to_reach([dataclasses.replace(c, train_s=float(c.samples)) for c in r.history], target)
            for n, r in res.items()}
    net = trainers["slide"].net
    eval_rows = np.arange(min(1000, syn.n_test))
    recall = net.topk_recall(test, eval_rows, 5)
    act_frac = res["slide"].stats["active_fraction"]

    # sensitivity (SLIDE alone, sequential, same data and start): the paper's SLIDE, each addition alone, and K, L
    sens = []
    nr = args.n_random
    variants = [(10, 16, 1024, 0, False), (10, 16, 1024, 0, True), (10, 16, 1024, nr, False), (10, 16, 1024, nr, True),
                (12, 16, 1024, nr, True), (10, 32, 1024, nr, True), (10, 16, 64, nr, True), (10, 16, 16, nr, True)]
    for K, L, cap, n_random, center in variants:
        hc = HashConfig(**{**slide_hash, "K": K, "L": L})
        tr = make_trainer("slide", max_active=cap, hash=hc, n_random=n_random, center_queries=center, **common)
        r = FitRun(tr, train, test, FitConfig(batch_size=batch, max_epochs=100, time_budget_s=sens_budget,
                                              eval_every_s=sens_budget / 2, eval_samples=syn.n_test))
        r.advance()
        row = {"K": K, "L": L, "max_active": cap, "n_random": n_random, "center": center, "train_s": round(r.result.final.train_s, 1),
               "samples_per_s": round(r.result.final.samples_per_s), "p1": round(r.result.final.p1, 4),
               "p5": round(r.result.final.p5, 4), "active_fraction": r.result.stats["active_fraction"],
               "recall_top5": round(tr.net.topk_recall(test, eval_rows, 5), 4),
               "time_to_target_s": time_to_reach(r.result.history, target)}
        sens.append(row)
        log(f"  sens K={K} L={L} max_active={cap} n_random={n_random} center={center}: {row}")
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = round(time.time() - t0)

    speedup = (t_to["dense"] / t_to["slide"]) if (t_to["dense"] and t_to["slide"]) else float("nan")
    summary = {
        "labels": syn.n_labels, "target_p1": target, "dense_final_p1": dense_p1,
        "time_to_target_s": t_to, "samples_to_target": s_to, "speedup_time_to_p1": speedup,
        "speedup_sampled_vs_dense": (t_to["dense"] / t_to["sampled"]) if t_to["sampled"] else None,
        "slide_final_p1": res["slide"].final.p1, "active_fraction": act_frac, "lsh_recall_top5": recall,
        "samples_per_s": {n: r.final.samples_per_s for n, r in res.items()},
    }
    out = {"quick": q, "machine": info, "data": syn.__dict__, "lr": lr, "batch": batch, "hidden": hidden,
           "max_active": max_active, "hash": slide_hash, "n_random": args.n_random, "center": args.center,
           "budget_s": budget, "summary": summary,
           "histories": {n: r.to_dict() for n, r in res.items()}, "sensitivity": sens}
    vs = summary["vs_sampled"] = summarize({n: r.history for n, r in res.items()}, syn.n_test)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "slide_quick" if q else "slide"
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1, default=float))
    plot_p1_vs_time(res, args.out / f"{stem}.png", target_p1=target, threads=THREADS)
    (args.out / f"{stem}.md").write_text(_markdown(out, res, stem))
    f = lambda x: "none" if x is None else f"{x:.2f}"  # noqa: E731
    print(f"dense-target (dense final - 1 point) speedup dense/SLIDE: {speedup:.2f}; active fraction {act_frac:.5f}")
    print(f"RESULT labels={syn.n_labels} speedup_vs_sampled={f(vs['speedup_vs_sampled'])} "
          f"speedup_vs_dense={f(vs['speedup_vs_dense'])} slide_p1={vs['final_p1']['slide']:.4f} "
          f"sampled_p1={vs['final_p1']['sampled']:.4f} recall5={recall:.4f} test_n={syn.n_test} "
          f"uniform_speedup_vs_sampled={f(vs['uniform_speedup_vs_sampled'])} uniform_p1={vs['final_p1']['uniform']:.4f}")


def summarize(histories: dict[str, list[Checkpoint]], test_n: int) -> dict:
    """Times to the sampled baseline's final P@1, held for the rest of the run, and the standard errors of the final
    P@1s (binomial, on `test_n` test samples)."""
    final = {n: h[-1].p1 for n, h in histories.items()}
    target = final["sampled"]
    t = {n: time_to_reach(h, target) for n, h in histories.items()}
    ratio = lambda a, b: (a / b) if (a is not None and b) else None  # noqa: E731
    return {"target_p1": target, "time_to_target_s": t, "final_p1": final,
            "final_p1_se": {n: round(p1_standard_error(p, test_n), 4) for n, p in final.items()},
            "speedup_vs_sampled": ratio(t["sampled"], t["slide"]), "speedup_vs_dense": ratio(t["dense"], t["slide"]),
            "uniform_speedup_vs_sampled": ratio(t["sampled"], t["uniform"]) if "uniform" in t else None,
            "test_n": test_n}


def rescore(path: Path) -> None:
    """Summary of a stored run under the held-crossing rule; writes <stem>_rescored.json beside it."""
    out = json.loads(path.read_text())
    fields = set(Checkpoint.__dataclass_fields__)
    hist = {n: [Checkpoint(**{k: v for k, v in c.items() if k in fields}) for c in r["history"]]
            for n, r in out["histories"].items()}
    summ = summarize(hist, out["data"]["n_test"])
    old = out["summary"]
    dense_target = old["target_p1"]  # the stored run's own target (dense final - 1 point), now held, not first crossed
    summ["dense_target"] = {"target_p1": dense_target,
                            "time_to_target_s": {n: time_to_reach(h, dense_target) for n, h in hist.items()},
                            "first_crossing_s": {n: time_to_reach(h, dense_target, sustained=False) for n, h in hist.items()}}
    summ["lsh_recall_top5"] = old["lsh_recall_top5"]
    dest = path.with_name(path.stem + "_rescored.json")
    dest.write_text(json.dumps({"source": path.name, "summary": summ}, indent=1, default=float))
    f = lambda x: "none" if x is None else f"{x:.2f}"  # noqa: E731
    print(json.dumps(summ, indent=1, default=float))
    print(f"RESULT labels={old['labels']} speedup_vs_sampled={f(summ['speedup_vs_sampled'])} "
          f"speedup_vs_dense={f(summ['speedup_vs_dense'])} slide_p1={summ['final_p1']['slide']:.4f} "
          f"sampled_p1={summ['final_p1']['sampled']:.4f} recall5={old['lsh_recall_top5']:.4f} test_n={summ['test_n']}")


def _markdown(out, res, stem) -> str:
    s, m = out["summary"], out["machine"]
    tt = s["time_to_target_s"]
    f = lambda x: "not reached" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [
        "## SLIDE: LSH-sampled sparse training vs dense and sampled-softmax PyTorch",
        "",
        f"Command: `python benchmarks/slide.py{' --quick' if out['quick'] else ''}` "
        f"(wall {m['wall_s']} s). Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads for every "
        f"method; torch {m['torch']}, numba {m['numba']}. The machine is shared with other work "
        f"(load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end), so "
        "absolute speeds are noisy; the methods ran in the same process in alternating 5 s "
        "slices, so they saw the same load.",
        "",
        f"Task: synthetic XMC (power-law labels, label-correlated sparse features), {s['labels']} labels, "
        f"{out['data']['n_features']} features, {out['data']['n_train']} train / {out['data']['n_test']} test "
        f"samples. Network: sparse input -> hidden {out['hidden']} ReLU -> {s['labels']} outputs, same "
        f"initial weights; Adam lr {out['lr']}, batch {out['batch']}. Dense: torch Adam on the output layer, "
        "SparseAdam on the input embedding. Sampled: uniform negatives, SparseAdam. SLIDE: lazy Adam on "
        f"active rows, SimHash K={out['hash']['K']} L={out['hash']['L']}, buckets of {out['hash']['bucket_size']} "
        f"(FIFO), cap {out['max_active']} LSH neurons per sample, rebuild period 20 steps growing x1.1 to 400; "
        f"{out['n_random']} uniform negatives per batch shared by its samples (logits offset so they stand for the "
        f"unsampled labels); queries {'centred (h - running mean)' if out['center'] else 'uncentred'}.",
        "",
        f"Target: dense final P@1 {s['dense_final_p1']:.4f} minus 1 point = {s['target_p1']:.4f} "
        f"(P@1/P@5 exact over all labels on {out['data']['n_test']} test samples; clock counts training only).",
        "",
        "| method | time to target P@1 (s) | samples to target | final P@1 | final P@5 | samples/s | mean active fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in res.items():
        st = s["samples_to_target"][n]
        lines.append(f"| {n} | {f(tt[n])} | {'not reached' if st is None else f'{st:.0f}'} | {r.final.p1:.4f} | {r.final.p5:.4f} | {r.final.samples_per_s:.0f} | "
                     f"{r.stats['active_fraction']:.5f} |")
    lines += [
        "",
        "Speedup in time to this dense target, dense / SLIDE: "
        + (f"**{s['speedup_time_to_p1']:.2f}x**. " if s['speedup_time_to_p1'] == s['speedup_time_to_p1'] else "not reached by SLIDE. ")
        + f"LSH recall of the true top-5 logits (label-free active set, trained SLIDE net, 1000 test samples): "
        f"{s['lsh_recall_top5']:.3f}.",
        "",
        _vs_sampled_md(s["vs_sampled"]),
        "",
        "Sensitivity (SLIDE alone, run one after another after the main run, "
        f"{out['sensitivity'][0]['train_s']:.0f} s each from the same start; time to the same dense target). The "
        "first row is the paper's SLIDE:",
        "",
        "| K | L | LSH cap | shared random negatives | centred queries | P@1 | P@5 | samples/s | active fraction | "
        "recall top-5 | time to target (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["sensitivity"]:
        lines.append(f"| {r['K']} | {r['L']} | {r.get('max_active', out['max_active'])} | {r.get('n_random', 0)} | "
                     f"{r.get('center', False)} | {r['p1']:.4f} | "
                     f"{r['p5']:.4f} | {r['samples_per_s']} | "
                     f"{r['active_fraction']:.5f} | {r['recall_top5']:.3f} | {f(r['time_to_target_s'])} |")
    lines += ["", f"Plot: `{stem}.png`. Plot data (training seconds, P@1):", ""]
    for n, r in res.items():
        pts = ", ".join(f"({c.train_s:.0f}, {c.p1:.3f})" for c in r.history)
        lines.append(f"- {n}: {pts}")
    rec = ", ".join(f"({c.train_s:.0f}, {c.recall5:.3f})" for c in res["slide"].history if c.recall5 is not None)
    lines += ["", f"SLIDE's active-set recall of the exact top-5 labels during training (seconds, recall@5): {rec}", ""]
    return "\n".join(lines)


def _vs_sampled_md(v: dict) -> str:
    f = lambda x: "not reached" if x is None else f"{x:.1f} s"  # noqa: E731
    g = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
    t, p, se = v["time_to_target_s"], v["final_p1"], v["final_p1_se"]
    return (f"Against the baseline a user would pick, sampled softmax: target = its final P@1 {v['target_p1']:.4f}, "
            f"held for the rest of the run, on {v['test_n']} test samples. Time to it: SLIDE {f(t['slide'])}, "
            f"sampled {f(t['sampled'])}, dense {f(t['dense'])}; speedup sampled/SLIDE {g(v['speedup_vs_sampled'])}, "
            f"dense/SLIDE {g(v['speedup_vs_dense'])}"
            + (f"; uniform (SLIDE's kernels, LSH off) {f(t['uniform'])}, sampled/uniform "
               f"{g(v.get('uniform_speedup_vs_sampled'))}" if "uniform" in t else "")
            + ". Final P@1 (standard error): "
            + ", ".join(f"{n} {p[n]:.4f} ({se[n]:.4f})" for n in p) + ".")


def memory_run(labels: int, budget: float, outdir: Path, n_random: int, center: bool) -> None:
    """SLIDE alone at `labels` outputs for `budget` training seconds: peak resident memory of this process (data,
    network, Adam state and hash tables all included) and the P@1 it reaches."""
    import resource

    import numba

    numba.set_num_threads(THREADS)
    warmup()
    syn = SyntheticConfig(n_train=100_000, n_test=2000, n_features=50_000, n_labels=labels, seed=0)
    train, test = make_synthetic_xmc(syn)
    hc = HashConfig(family="simhash", K=10, L=16, bucket_size=64, range_pow=16, rebuild_every=20,
                    rebuild_growth=1.1, rebuild_max=400)
    tr = make_trainer("slide", n_features=syn.n_features, n_labels=labels, hidden=128, lr=1e-2, max_active=1024,
                      hash=hc, threads=THREADS, n_random=n_random, center_queries=center)
    res = FitRun(tr, train, test, FitConfig(batch_size=128, max_epochs=100, time_budget_s=budget,
                                            eval_every_s=budget / 4, eval_samples=syn.n_test),
                 progress=lambda c: log(f"  t={c.train_s:6.1f}s samples={c.samples} P@1={c.p1:.4f} "
                                        f"recall@5={c.recall5}"))
    res.advance()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    fin = res.result.final
    out = {"labels": labels, "budget_s": budget, "peak_rss_gb": round(peak_gb, 3), "fits_8gb": peak_gb <= 8.0,
           "final": dataclasses.asdict(fin), "machine": machine(), "hash": dataclasses.asdict(hc),
           "n_random": n_random, "center": center}
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"slide_memory_{labels}.json").write_text(json.dumps(out, indent=1, default=float))
    print(f"RESULT labels={labels} peak_rss_gb={peak_gb:.2f} fits_8gb={str(peak_gb <= 8.0).lower()} "
          f"p1={fin.p1:.4f} samples={fin.samples} recall5={fin.recall5:.4f}")


if __name__ == "__main__":
    main()
