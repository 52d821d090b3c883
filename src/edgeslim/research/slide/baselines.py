"""PyTorch CPU baselines for SLIDE's benchmark: the same network trained with a dense full softmax
or a sampled softmax (Jean et al., ACL 2015, uniform proposal).

Same architecture as `SlideNetwork`: an ``EmbeddingBag`` (sum, per-feature values) + bias + ReLU,
then a ``hidden x n_labels`` output layer; same initial weights (`init_params`); same loss
(softmax cross-entropy, target mass spread evenly over a sample's labels, batch mean); Adam with
the same hyper-parameters. Sparse-gradient tables (the input embedding everywhere, the output
layer in the sampled baseline) use ``torch.optim.SparseAdam`` (lazy Adam, the same rule SLIDE
uses); dense parameters use ``torch.optim.Adam``. torch imports lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InvalidParameterError
from .data import XMCData

__all__ = ["TorchConfig", "TorchDenseTrainer", "TorchSampledTrainer", "gather_csr"]


def gather_csr(indptr: np.ndarray, idx: np.ndarray, rows: np.ndarray, val: np.ndarray | None = None):
    """Concatenate CSR rows ``rows``: returns (flat ids, flat values or None, offsets int64[len(rows)])."""
    lo = indptr[rows]
    ln = indptr[rows + 1] - lo
    offsets = np.zeros(rows.shape[0], np.int64)
    np.cumsum(ln[:-1], out=offsets[1:])
    flat = np.repeat(lo - offsets, ln) + np.arange(int(ln.sum()), dtype=np.int64)
    return idx[flat], (val[flat] if val is not None else None), offsets, ln


@dataclass(frozen=True, kw_only=True)
class TorchConfig:
    """``n_sampled``: negatives drawn per batch by the sampled-softmax baseline (shared by the batch)."""

    hidden: int = 128
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    n_sampled: int = 2048
    threads: int = 0
    seed: int = 0

    def validate(self) -> "TorchConfig":
        if self.hidden < 1 or self.lr <= 0 or self.n_sampled < 1 or self.threads < 0:
            raise InvalidParameterError(f"TorchConfig: need hidden, n_sampled >= 1, lr > 0, threads >= 0; got {self}.")
        return self


class _TorchBase:

    def _update(self, z, sample, cols, w, ln: np.ndarray, active: int) -> float:
        """Softmax loss over the columns of `z` and one optimizer step.

        loss_i = logsumexp(z_i) - mean_{y in labels_i} z_iy (samples without labels contribute 0); `cols` are the
        label columns of `z` for the (sample, label) pairs, `w` their 1/len weights.
        """
        t = self.torch
        lse = t.logsumexp(z, dim=1)
        has = t.from_numpy((ln > 0).astype(np.float32))
        loss = ((lse * has).sum() - (z[sample, cols] * w).sum()) / z.shape[0]
        self.opt.zero_grad(set_to_none=True)
        self.opt_sparse.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.opt_sparse.step()
        self.steps_ += 1
        self.active_sum_ += active
        return float(loss.detach())
    def __init__(self, *, n_features: int, n_labels: int, config: TorchConfig, params: dict[str, np.ndarray]):
        import torch

        self.torch = torch
        self.config = config.validate()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.n_features, self.n_labels = n_features, n_labels
        self.emb = torch.nn.EmbeddingBag(n_features, config.hidden, mode="sum", sparse=True)
        with torch.no_grad():
            self.emb.weight.copy_(torch.from_numpy(np.asarray(params["W1"], np.float32)))
        self.b1 = torch.nn.Parameter(torch.from_numpy(np.array(params["b1"], np.float32)))
        self.steps_ = 0
        self.active_sum_ = 0

    def _hidden(self, data: XMCData, rows: np.ndarray):
        t = self.torch
        ids, vals, offsets, _ = gather_csr(data.x_indptr, data.x_idx, rows, data.x_val)
        h = self.emb(t.from_numpy(ids.astype(np.int64)), t.from_numpy(offsets),
                     per_sample_weights=t.from_numpy(vals))
        return t.relu(h + self.b1)

    def _labels(self, data: XMCData, rows: np.ndarray):
        """(sample index per label entry, label id, weight 1/|labels|) as torch tensors."""
        t = self.torch
        labs, _, _, ln = gather_csr(data.y_indptr, data.y_idx, rows)
        sample = np.repeat(np.arange(rows.shape[0]), ln)
        w = np.repeat(1.0 / np.maximum(ln, 1), ln).astype(np.float32)
        return t.from_numpy(sample), t.from_numpy(labs.astype(np.int64)), t.from_numpy(w), ln

    def stats(self) -> dict[str, float]:
        return {"active_fraction": self.active_sum_ / max(1, self.steps_) / self.n_labels}


class TorchDenseTrainer(_TorchBase):
    """Full softmax over all labels every step (the dense baseline)."""

    name = "dense"

    def __init__(self, *, n_features: int, n_labels: int, config: TorchConfig, params: dict[str, np.ndarray]):
        super().__init__(n_features=n_features, n_labels=n_labels, config=config, params=params)
        t = self.torch
        self.out = t.nn.Linear(config.hidden, n_labels)
        with t.no_grad():
            self.out.weight.copy_(t.from_numpy(np.asarray(params["W2"], np.float32)))
            self.out.bias.copy_(t.from_numpy(np.asarray(params["b2"], np.float32)))
        b = (config.beta1, config.beta2)
        self.opt_sparse = t.optim.SparseAdam(list(self.emb.parameters()), lr=config.lr, betas=b, eps=config.eps)
        self.opt = t.optim.Adam([self.b1, self.out.weight, self.out.bias], lr=config.lr, betas=b, eps=config.eps)

    def step(self, data: XMCData, rows: np.ndarray) -> float:
        sample, labs, w, ln = self._labels(data, rows)
        z = self.out(self._hidden(data, rows))
        return self._update(z, sample, labs, w, ln, self.n_labels)

    def params(self) -> dict[str, np.ndarray]:
        return {"W1": self.emb.weight.detach().numpy(), "b1": self.b1.detach().numpy(),
                "W2": self.out.weight.detach().numpy(), "b2": self.out.bias.detach().numpy()}


class TorchSampledTrainer(_TorchBase):
    """Sampled softmax: the batch's labels plus ``n_sampled`` uniform negatives shared by the batch."""

    name = "sampled"

    def __init__(self, *, n_features: int, n_labels: int, config: TorchConfig, params: dict[str, np.ndarray]):
        super().__init__(n_features=n_features, n_labels=n_labels, config=config, params=params)
        t = self.torch
        self.W2 = t.nn.Embedding(n_labels, config.hidden, sparse=True)
        self.b2 = t.nn.Embedding(n_labels, 1, sparse=True)
        with t.no_grad():
            self.W2.weight.copy_(t.from_numpy(np.asarray(params["W2"], np.float32)))
            self.b2.weight.copy_(t.from_numpy(np.asarray(params["b2"], np.float32)).reshape(-1, 1))
        b = (config.beta1, config.beta2)
        sparse = list(self.emb.parameters()) + list(self.W2.parameters()) + list(self.b2.parameters())
        self.opt_sparse = t.optim.SparseAdam(sparse, lr=config.lr, betas=b, eps=config.eps)
        self.opt = t.optim.Adam([self.b1], lr=config.lr, betas=b, eps=config.eps)
        self.rng = np.random.default_rng(config.seed)

    def step(self, data: XMCData, rows: np.ndarray) -> float:
        t = self.torch
        sample, labs, w, ln = self._labels(data, rows)
        neg = self.rng.integers(0, self.n_labels, size=self.config.n_sampled)
        cand = np.unique(np.concatenate([labs.numpy(), neg]))
        pos = t.from_numpy(np.searchsorted(cand, labs.numpy()))
        ct = t.from_numpy(cand)
        h = self._hidden(data, rows)
        z = h @ self.W2(ct).T + self.b2(ct).T
        return self._update(z, sample, pos, w, ln, cand.shape[0])

    def params(self) -> dict[str, np.ndarray]:
        return {"W1": self.emb.weight.detach().numpy(), "b1": self.b1.detach().numpy(),
                "W2": self.W2.weight.detach().numpy(), "b2": self.b2.weight.detach().numpy()[:, 0]}
