"""BNN on MNIST: accuracy of fp32, XNOR-style and ReActNet-style models of the same shape, and
end-to-end latency of the bit-packed model (numba kernels) vs the fp32 model on onnxruntime.

Data: the MNIST test set (10,000 images, IDX) read from ``--data`` (default ../shared/data
relative to the repository root), split deterministically 80/20 into train/test (seed 0). The test split scored
every recipe change while the recipe was developed, so it is a development split; the last ``--holdout`` (1,000)
images of the train split are a final held-out split: no model trains on them (train uses the first
``--train-size`` of the rest) and no recipe change was judged on them. Both accuracies are printed.
The binary models use the two-step recipe (binary activations + real weights, then binary
weights), then ``--finetune`` epochs with batch-norm statistics recalibrated on the training images and frozen (a
binary network flips the signs of whole regions when inference normalises with running statistics a little off the
batch statistics training saw); the fp32 model trains for twice ``--epochs``. All three train on the same random shifts of
up to ``--shift`` pixels; ReActNet's downsampling shortcuts are real 1x1 convs + BN (``--downsample proj``) or
parameter-free average pooling with channel duplication (``pool``).

    python benchmarks/bnn_mnist.py [--epochs 2] [--train-size 7000] [--holdout 1000] [--rounds 30]

Latency: the fp32 model on onnxruntime with 2 threads and its pool spinning off, 2 threads spinning on, and 1
thread, all timed in the same interleaved rounds as the packed models; the baseline of the ratios is the fastest
of the three (lowest median), as a user would pick it.

Ends with ``RESULT fp32_acc=<x> xnor_acc=<x> reactnet_acc=<x> fp32_holdout_acc=<x> xnor_holdout_acc=<x>
reactnet_holdout_acc=<x> packed_vs_fp32_latency=<x> fp32_setting=<s>``; ``*_acc`` on the development split,
``*_holdout_acc`` on the final held-out split; ``packed_vs_fp32_latency`` is the packed XNOR model's batch-1
latency divided by the fastest fp32 setting's on onnxruntime (median of per-round ratios; below 1 means the packed
model is faster).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("NUMBA_NUM_THREADS", str(THREADS))
# On a shared machine a spinning or barrier-bound pool waits milliseconds for a descheduled
# worker: idle OpenMP threads (torch's and numba's) sleep instead of spinning, and numba uses
# its workqueue pool. Recorded in the output; override from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from edgeslim.research.train.bnn import MnistBNN, export_packed  # noqa: E402
from edgeslim.research.train.data import load_mnist, split  # noqa: E402
from edgeslim.research.train.loop import FitConfig, evaluate, fit, random_shift, two_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    for p in (Path("/work/shared/data"), ROOT.parent / "shared" / "data"):
        if (p / "mnist").is_dir():
            return p
    return ROOT.parent / "shared" / "data"


def code_version() -> str:
    """Hash of the code that trains and defines the models (a cached model of older code is not reused)."""
    import hashlib

    import edgeslim.research.train.bnn as bnn
    import edgeslim.research.train.loop as loop

    h = hashlib.sha256(Path(bnn.__file__).read_bytes() + Path(loop.__file__).read_bytes() + Path(__file__).read_bytes())
    return h.hexdigest()[:10]


def ort_session(model: torch.nn.Module, batch: int, threads: int = THREADS, spinning: bool = False) -> ort.InferenceSession:
    f = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(batch, 1, 28, 28),), f, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--epochs", type=int, default=2, help="epochs per step (fp32 trains 2x this)")
    ap.add_argument("--distill", action="store_true",
                    help="binary models learn from the fp32 model's softmax (ReActNet's distributional loss)")
    ap.add_argument("--train-size", type=int, default=7000)
    ap.add_argument("--holdout", type=int, default=1000, help="last images of the train split kept as the final held-out split")
    ap.add_argument("--widths", default="16,32,32,64,64")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--shift", type=int, default=2, help="random shift augmentation, pixels (0: none)")
    ap.add_argument("--downsample", choices=["pool", "proj"], default="proj", help="ReActNet's downsampling shortcut")
    ap.add_argument("--finetune", type=int, default=2,
                    help="epochs of a last stage with batch-norm statistics recalibrated and frozen, lr 2e-4 (0: none)")
    ap.add_argument("--seed", type=int, default=0, help="weight initialisation and batch order of all three models")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder (outside the repo) to save trained weights in and reuse on the next run")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(THREADS)
    widths = tuple(int(v) for v in args.widths.split(","))

    imgs, labels = load_mnist(args.data)
    tr, te = split(len(imgs), test_fraction=0.2, seed=0)
    if args.holdout >= len(tr):
        raise SystemExit(f"--holdout {args.holdout} leaves no training images of {len(tr)}")
    tr, ho = tr[: len(tr) - args.holdout], tr[len(tr) - args.holdout:]
    tr = tr[: args.train_size]
    x = torch.from_numpy((imgs.astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    y = torch.from_numpy(labels)
    print(f"MNIST t10k from {args.data}: train {len(tr)}, test (development) {len(te)}, final held-out {len(ho)}; widths {widths}; "
          f"{args.epochs}+{args.epochs} epochs (fp32: {2 * args.epochs}); threads {THREADS}; numba "
          f"{numba.config.THREADING_LAYER} layer; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")

    s0 = 3 * args.seed  # --seed 0 reproduces the stored runs
    cfg1 = FitConfig(epochs=args.epochs, lr=2e-3, batch_size=64, seed=s0)
    cfg2 = FitConfig(epochs=args.epochs, lr=1e-3, batch_size=64, seed=s0 + 1)
    cfg3 = (FitConfig(epochs=args.finetune, lr=2e-4, batch_size=64, seed=s0 + 2, freeze_bn=True)
            if args.finetune else None)
    models, acc, train_s = {}, {}, {}
    aug = random_shift(args.shift) if args.shift else None
    for kind in ("fp32", "xnor", "reactnet"):
        torch.manual_seed(args.seed)
        m = MnistBNN(kind, widths=widths, downsample=args.downsample)
        t = time.perf_counter()
        tag = (f"{kind}-w{'-'.join(map(str, widths))}-e{args.epochs}-n{len(tr)}-d{int(args.distill)}-"
               f"s{args.shift}-{args.downsample}-f{args.finetune}-seed{args.seed}-"
               f"{code_version()}.pt")  # keyed by the training code too, not by shape only
        if args.cache is not None and (args.cache / tag).is_file():
            m.load_state_dict(torch.load(args.cache / tag))
            m.eval()
        elif kind == "fp32":
            fit(m, x[tr], y[tr], FitConfig(epochs=2 * args.epochs, lr=2e-3, batch_size=64, seed=s0), augment=aug)
        else:
            two_step(m, x[tr], y[tr], cfg1, cfg2, teacher=models["fp32"] if args.distill else None, augment=aug,
                     finetune=cfg3)
        train_s[kind] = time.perf_counter() - t
        if args.cache is not None and not (args.cache / tag).is_file():
            args.cache.mkdir(parents=True, exist_ok=True)
            torch.save(m.state_dict(), args.cache / tag)
        acc[kind] = evaluate(m, x[te], y[te])
        acc[kind + "-holdout"] = evaluate(m, x[ho], y[ho])
        models[kind] = m
        print(f"  {kind:<9} trained (or loaded from --cache) in {train_s[kind]:6.1f} s: test top-1 {acc[kind]:.4f}, "
              f"held-out top-1 {acc[kind + '-holdout']:.4f}")

    packed = {k: export_packed(models[k]) for k in ("xnor", "reactnet")}
    xt = x[te].numpy()
    agree = {}
    for k, p in packed.items():
        with torch.no_grad():
            lt = models[k](x[te]).numpy()
        lp = p.run(xt)
        agree[k] = float((lt.argmax(1) == lp.argmax(1)).mean())
        acc[k + "-packed"] = float((lp.argmax(1) == y[te].numpy()).mean())

    fp32_bytes = sum(p.numel() * 4 for p in models["fp32"].parameters())
    print("\n| model | test top-1 | held-out top-1 | packed run top-1 | packed == torch predictions | weight bytes |")
    print("|---|---|---|---|---|---|")
    print(f"| fp32 | {acc['fp32']:.4f} | {acc['fp32-holdout']:.4f} | - | - | {fp32_bytes} |")
    for k in ("xnor", "reactnet"):
        print(f"| {k} | {acc[k]:.4f} | {acc[k + '-holdout']:.4f} | {acc[k + '-packed']:.4f} | {agree[k]:.4f} | "
              f"{packed[k].weight_bytes()} |")

    print(f"load average before timing: {os.getloadavg()[0]:.1f}")
    # latency, batch 1 and 64, interleaved rounds
    lat_ratio, fp32_setting = None, None
    fp32_settings = {"fp32 ORT 2 threads, spinning off": (THREADS, False), "fp32 ORT 2 threads, spinning on": (THREADS, True),
                     "fp32 ORT 1 thread": (1, False)}
    for batch in (1, 64):
        xb = xt[:batch]
        sessions = {k: ort_session(models["fp32"], batch, t, sp) for k, (t, sp) in fp32_settings.items()}
        cands = {k: (lambda s=s, xb=xb: s.run(None, {"x": xb})) for k, s in sessions.items()}
        cands.update({
            "xnor packed (numba)": lambda xb=xb: packed["xnor"].run(xb),
            "reactnet packed (numba)": lambda xb=xb: packed["reactnet"].run(xb),
        })
        inner = 20 if batch == 1 else 3
        for fn in cands.values():
            for _ in range(5):
                fn()
        times = {k: [] for k in cands}
        order = list(cands)
        for r in range(args.rounds):
            for k in order[r % len(order):] + order[: r % len(order)]:
                t = time.perf_counter()
                for _ in range(inner):
                    cands[k]()
                times[k].append((time.perf_counter() - t) / inner)
        best = min(fp32_settings, key=lambda k: statistics.median(times[k]))
        print(f"\nlatency, batch {batch} ({args.rounds} rounds x {inner} runs; packed models {THREADS} threads); "
              f"baseline: the fastest fp32 setting, {best}")
        print(f"  {'model':<34}{'median ms':>10}{'vs fastest fp32 (median, range)':>34}")
        for k in cands:
            r = [a / b for a, b in zip(times[k], times[best])]
            print(f"  {k:<34}{statistics.median(times[k]) * 1e3:>10.3f}{statistics.median(r):>16.2f}x  "
                  f"[{min(r):.2f}, {max(r):.2f}]")
            if batch == 1 and k == "xnor packed (numba)":
                lat_ratio, fp32_setting = statistics.median(r), best

    print(f"\ntraining: seed {args.seed}, {args.epochs}+{args.epochs} epochs, then {args.finetune} with batch-norm "
          "statistics frozen, "
          f"distill={args.distill}, shift={args.shift}, downsample={args.downsample}, train {len(tr)}, test {len(te)}, "
          f"held-out {len(ho)}")
    print(f"\nRESULT fp32_acc={acc['fp32']:.4f} xnor_acc={acc['xnor']:.4f} reactnet_acc={acc['reactnet']:.4f} "
          f"fp32_holdout_acc={acc['fp32-holdout']:.4f} xnor_holdout_acc={acc['xnor-holdout']:.4f} "
          f"reactnet_holdout_acc={acc['reactnet-holdout']:.4f} packed_vs_fp32_latency={lat_ratio:.2f} "
          f"fp32_setting={fp32_setting.replace(' ', '_').replace(',', '')}")


if __name__ == "__main__":
    main()
