"""Can SimHash retrieve the top logits of a trained XMC network at all? An offline probe, no SLIDE training.

Trains the benchmark's network (`benchmarks/slide.py`'s task: 200,000 labels) with sampled softmax in PyTorch for
``--seconds``, once with the plain output layer and once with a cosine output layer (logits = 16 cos(h, w)), then, on
300 test samples:

- the cosine between each hidden vector h and the weight rows of its exact top-5 labels, against all labels
  (median, 99th, 99.9th percentile), uncentred and with h centred (h - mean of training hidden vectors);
- the share of the exact top-5 that rank within the top 64 / 1024 labels by cosine (an ideal angular retriever);
- SimHash with no bucket limit (every colliding label kept, then the 1,024 most-hit): recall@5 for several K, L;
  DWTA (bins of 8 coordinates, the library's own codes) the same way. Hashing the current weights with no bucket
  limit is the best any table rebuild schedule or re-hashing of changed rows could do.

    python benchmarks/slide_retrieval_probe.py [--seconds 40]     # about 6 min on 2 cores

Ends with ``RESULT plain_best_recall5=<x> cosine_best_recall5=<x> plain_ideal_top1024=<x>``.
"""

from __future__ import annotations

import argparse
import os

THREADS = 2
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, str(THREADS))

import numpy as np  # noqa: E402

from edgeslim.research.slide.baselines import TorchConfig, TorchSampledTrainer  # noqa: E402
from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc  # noqa: E402
from edgeslim.research.slide.network import get_backend, init_params  # noqa: E402
from edgeslim.research.slide.train import FitConfig, FitRun  # noqa: E402

GRID = [(10, 16), (10, 32), (8, 32), (6, 32), (8, 64), (12, 64)]
DWTA_GRID = [(2, 32), (3, 32), (4, 32), (3, 64)]  # bins of 8 coordinates: 3 bits per hash


class CosineSampled(TorchSampledTrainer):
    """Sampled softmax with logits ``scale * cos(h, w)`` (no bias): an output layer whose ranking is angular."""

    name = "sampled-cosine"
    scale = 16.0

    def step(self, data, rows):
        t = self.torch
        sample, labs, w, ln = self._labels(data, rows)
        neg = self.rng.integers(0, self.n_labels, size=self.config.n_sampled)
        cand = np.unique(np.concatenate([labs.numpy(), neg]))
        pos = t.from_numpy(np.searchsorted(cand, labs.numpy()))
        h = t.nn.functional.normalize(self._hidden(data, rows), dim=1)
        z = self.scale * h @ t.nn.functional.normalize(self.W2(t.from_numpy(cand)), dim=1).T
        return self._update(z, sample, pos, w, ln, cand.shape[0])

    def params(self):
        p = super().params()
        p["W2"] = p["W2"] / np.linalg.norm(p["W2"], axis=1, keepdims=True)  # same ranking as the cosine logits
        p["b2"] = np.zeros_like(p["b2"])
        return p


def recall_from_codes(cw, cq, top5, cap):
    """Recall@5 of each query's ``cap`` most-hit labels, every label colliding in any table counted (no bucket
    limit); ``cw`` [labels, L] and ``cq`` [queries, L] are bucket codes per table."""
    index = []
    for t in range(cw.shape[1]):
        order = np.argsort(cw[:, t], kind="stable")
        index.append((order, cw[order, t]))
    rec = []
    for i in range(cq.shape[0]):
        hits = np.concatenate([o[np.searchsorted(k, cq[i, t]):np.searchsorted(k, cq[i, t], side="right")]
                               for t, (o, k) in enumerate(index)])
        ids, cnt = np.unique(hits, return_counts=True)
        keep = ids[np.argsort(-cnt, kind="stable")[:cap]] if ids.size > cap else ids
        rec.append(np.isin(top5[i], keep).mean())
    return float(np.mean(rec))


def simhash_recall(Q, W, top5, K, L, cap, rng):
    """SimHash, ``L`` tables of ``K`` sign bits of random +-1 projections."""
    proj = rng.choice(np.array([-1.0, 1.0], np.float32), size=(Q.shape[1], K * L))
    weights = 1 << np.arange(K)
    codes = lambda X: (X @ proj > 0).reshape(-1, L, K) @ weights  # noqa: E731
    return recall_from_codes(codes(W), codes(Q), top5, cap)


def dwta_recall(Q, W, top5, K, L, cap):
    """DWTA codes from `edgeslim.research.slide.hashing.LSHTables` (bins of 8, densification included)."""
    from edgeslim.research.slide.hashing import HashConfig, LSHTables

    t = LSHTables(HashConfig(family="dwta", K=K, L=L, bin_size=8, range_pow=24), dim=Q.shape[1], backend="numba")
    return recall_from_codes(t.codes(W), t.codes(Q), top5, cap)


def probe(name, params, train, test, rng) -> tuple[float, float]:
    """Prints the cosine and hash figures; returns (best recall@5 of any hash, ideal angular top-1024 share, uncentred)."""
    k = get_backend("auto")
    f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
    H = k.hidden_forward(test.x_indptr, test.x_idx, test.x_val, np.arange(300), f32(params["W1"]), f32(params["b1"]))
    Htr = k.hidden_forward(train.x_indptr, train.x_idx, train.x_val, np.arange(5000), f32(params["W1"]),
                           f32(params["b1"]))
    W, b = params["W2"], params["b2"]
    top5 = np.argsort(-(H @ W.T + b), axis=1)[:, :5]
    Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    best = 0.0
    print(f"\n{name}:")
    for label, Q in (("uncentred", H), ("centred", H - Htr.mean(axis=0))):
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        C = Qn @ Wn.T
        top_cos = np.mean([C[i, top5[i]] for i in range(len(Q))], axis=0)
        pct = np.mean([np.percentile(C[i], [50, 99, 99.9]) for i in range(len(Q))], axis=0)
        rank = np.array([[(C[i] > C[i, j]).sum() for j in top5[i]] for i in range(len(Q))])
        print(f"  {label}: cosine of the exact top-5 {np.round(top_cos, 3).tolist()}; all labels median "
              f"{pct[0]:.3f}, 99th pct {pct[1]:.3f}, 99.9th pct {pct[2]:.3f}; top-5 within the top 64 / 1024 by "
              f"cosine: {(rank < 64).mean():.3f} / {(rank < 1024).mean():.3f}")
        if label == "uncentred":
            ideal = float((rank < 1024).mean())
        for K, L in GRID:
            r = simhash_recall(Q.astype(np.float32), W.astype(np.float32), top5, K, L, 1024, rng)
            best = max(best, r)
            print(f"    SimHash K={K:2d} L={L:2d}, no bucket limit, 1,024 most-hit kept: recall@5 {r:.3f}", flush=True)
        if label == "uncentred":  # DWTA is rank-based: centring does not apply
            for K, L in DWTA_GRID:
                r = dwta_recall(Q.astype(np.float32), W.astype(np.float32), top5, K, L, 1024)
                best = max(best, r)
                print(f"    DWTA (bins of 8) K={K} L={L}, no bucket limit, 1,024 most-hit kept: recall@5 {r:.3f}",
                      flush=True)
    return best, ideal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="training seconds of each network")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    syn = SyntheticConfig(n_train=100_000, n_test=5000, n_features=50_000, n_labels=200_000, seed=0)
    train, test = make_synthetic_xmc(syn)
    rng = np.random.default_rng(0)
    out = {}
    for name, cls in (("plain", TorchSampledTrainer), ("cosine", CosineSampled)):
        p = init_params(syn.n_features, syn.n_labels, 128, 0)
        tr = cls(n_features=syn.n_features, n_labels=syn.n_labels, params=p,
                 config=TorchConfig(hidden=128, lr=1e-2, threads=THREADS, n_sampled=1024))
        run = FitRun(tr, train, test, FitConfig(batch_size=128, max_epochs=100, time_budget_s=args.seconds,
                                                eval_every_s=args.seconds, eval_samples=2000))
        run.advance()
        print(f"{name} output layer: P@1 {run.result.final.p1:.4f} after {run.result.final.train_s:.0f} s "
              f"(2,000 test samples)", flush=True)
        out[name] = probe(name, tr.params(), train, test, rng)
    print(f"\nRESULT plain_best_recall5={out['plain'][0]:.3f} cosine_best_recall5={out['cosine'][0]:.3f} "
          f"plain_ideal_top1024={out['plain'][1]:.3f}")


if __name__ == "__main__":
    main()
