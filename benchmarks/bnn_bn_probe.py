"""Why a binary network's test accuracy is erratic: batch-norm statistics at inference, on a validation split.

Trains the XNOR MnistBNN of `bnn_mnist.py` (12 + 12 epochs, shifts, same widths) on 7,000 of its 8,000 training
images and holds out the other 1,000 for validation; the test split is never read. After every epoch it prints the
training loss and the eval-mode validation accuracy; at the end it compares, on validation:

- eval mode with the running statistics training left (what inference uses),
- train mode, each batch normalised with its own statistics (what training saw),
- statistics recalibrated on the training images (`recalibrate_bn`), no further training,
- recalibrated, then a fine-tune of 2 epochs with the statistics frozen (`FitConfig(freeze_bn=True)`) at lr 2e-4 and
  at lr 5e-4: how `bnn_mnist.py --finetune` was chosen.

    python benchmarks/bnn_bn_probe.py      # about 6 min on 2 cores

Ends with ``RESULT eval=<x> batch_stats=<x> recalibrated=<x> finetune_2e-4=<x> finetune_5e-4=<x>``.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bnn_mnist import default_data  # noqa: E402

from edgeslim.research.train.bnn import MnistBNN, set_binarization  # noqa: E402
from edgeslim.research.train.data import load_mnist, split  # noqa: E402
from edgeslim.research.train.loop import FitConfig, evaluate, fit, random_shift, recalibrate_bn  # noqa: E402


def main() -> None:
    torch.set_num_threads(THREADS)
    imgs, labels = load_mnist(default_data())
    pool, _test = split(len(imgs), test_fraction=0.2, seed=0)  # the same split as bnn_mnist.py; test is not used
    va, tr = pool[:1000], pool[1000:8000]
    x = torch.from_numpy((imgs.astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    y = torch.from_numpy(labels)
    aug = random_shift(2)
    torch.manual_seed(0)
    m = MnistBNN("xnor", widths=(32, 64, 64, 128, 128), downsample="proj")

    def progress(tag):
        return lambda e, loss: print(f"{tag} epoch {e:2d}  train loss {loss:.3f}  "
                                     f"val (eval mode) {evaluate(m, x[va], y[va]):.4f}", flush=True)

    print(f"XNOR MnistBNN, train {len(tr)}, validation {len(va)}, {THREADS} threads", flush=True)
    set_binarization(m, activations=True, weights=False)
    fit(m, x[tr], y[tr], FitConfig(epochs=12, lr=2e-3, batch_size=64, seed=0), progress=progress("step 1"),
        augment=aug)
    set_binarization(m, activations=True, weights=True)
    fit(m, x[tr], y[tr], FitConfig(epochs=12, lr=1e-3, batch_size=64, seed=1), progress=progress("step 2"),
        augment=aug)

    res = {"eval": evaluate(m, x[va], y[va])}
    m.train()
    with torch.no_grad():
        res["batch_stats"] = float((m(x[va]).argmax(1) == y[va]).float().mean())
    m.eval()
    res["recalibrated"] = evaluate(recalibrate_bn(copy.deepcopy(m), x[tr]), x[va], y[va])
    for lr in (2e-4, 5e-4):
        m2 = recalibrate_bn(copy.deepcopy(m), x[tr])
        fit(m2, x[tr], y[tr], FitConfig(epochs=2, lr=lr, batch_size=64, seed=2, freeze_bn=True), augment=aug)
        res[f"finetune_{lr:.0e}".replace("e-0", "e-")] = evaluate(m2, x[va], y[va])
    print("\nvalidation accuracy (1,000 held-out training images):")
    for k, v in res.items():
        print(f"  {k:<14} {v:.4f}")
    print("\nRESULT " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
