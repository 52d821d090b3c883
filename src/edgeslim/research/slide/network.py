"""The SLIDE network: sparse input -> dense hidden (ReLU) -> huge output layer sampled by LSH.

Chen et al., "SLIDE: In Defense of Smart Algorithms over Hardware Acceleration for Large-Scale
Deep Learning Systems", MLSys 2020. Per sample, the hidden activation is hashed into ``L`` tables
built over the output layer's weight rows; the union of the hit buckets (capped at ``max_active``
by hit count) plus the sample's true labels is the active set. Forward, softmax, backward and the
Adam update touch only the active neurons (and the input rows of the features present).

Optimizer: lazy Adam. Rows not touched in a step keep their weights and moments unchanged
(as TF LazyAdam / torch SparseAdam); bias correction uses the global step.

>>> from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc
>>> tr, te = make_synthetic_xmc(SyntheticConfig(n_train=256, n_test=64, n_features=300, n_labels=500))
>>> net = SlideNetwork(n_features=300, n_labels=500, config=SlideConfig(hidden=16, backend="numpy"))
>>> loss, n_active = net.step(tr, np.arange(32))
>>> net.step_
1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InvalidParameterError
from .data import XMCData
from .hashing import HashConfig, LSHTables, get_backend

__all__ = ["SlideConfig", "SlideNetwork", "init_params", "dense_scores", "precision_at_k", "topk_labels",
           "warmup"]


@dataclass(frozen=True, kw_only=True)
class SlideConfig:
    """Training hyper-parameters of `SlideNetwork`.

    ``max_active`` caps the LSH part of a sample's active set (true labels come on top); 0 turns the LSH off (no
    hashing, no candidates: the negatives are the shared uniform ones only, a sampled softmax on the same kernels).
    ``n_random`` (default 0, the paper's SLIDE): each batch draws that many uniform negatives, shared by its samples;
    each sample adds those outside its active set, weighted to stand for the unsampled labels in the softmax
    normaliser (see `_reference.batch_grads`). They push down labels the LSH never retrieves (without them, such
    labels drift up as the hidden layer moves), and being shared they cost one Adam update each per batch.
    ``n_chunks``: HOGWILD chunks per batch (0: one per numba thread).
    ``center_queries`` (SimHash only): hash ``h - mean(h)`` instead of ``h``, the mean a running average of recent
    batches' hidden vectors. ReLU hidden vectors share one dominant direction, so uncentred they hash to a few
    buckets whose labels are not the sample's best; ``h . w = (h - mu) . w + mu . w``, the second term a per-label
    constant, so centring keeps the ranking information and removes what all queries share.
    """

    hidden: int = 128
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_active: int = 2048
    n_random: int = 0
    hash: HashConfig = field(default_factory=HashConfig)
    backend: str = "auto"
    n_chunks: int = 0
    center_queries: bool = False
    seed: int = 0

    def validate(self) -> "SlideConfig":
        if self.hidden < 1 or self.max_active < 0 or self.lr <= 0 or self.n_chunks < 0 or self.n_random < 0:
            raise InvalidParameterError(
                f"SlideConfig: need hidden >= 1, max_active >= 0, lr > 0, n_chunks, n_random >= 0; got {self}."
            )
        if self.max_active == 0 and self.n_random == 0:
            raise InvalidParameterError(
                "SlideConfig: max_active=0 (no LSH candidates) needs n_random > 0, or every sample's softmax runs over "
                f"its own labels only; got {self}.")
        if self.center_queries and self.hash.family != "simhash":
            raise InvalidParameterError(
                f"SlideConfig: center_queries applies to SimHash only (DWTA codes are rank-based); got family "
                f"{self.hash.family!r}. Drop center_queries or use family='simhash'.")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise InvalidParameterError(f"SlideConfig: need 0 <= beta1, beta2 < 1 and eps > 0; got {self}.")
        self.hash.validate()
        return self


def init_params(n_features: int, n_labels: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights shared by SLIDE and the PyTorch baselines, so every method starts equal.

    Inputs are L2-normalised, so ``W1 ~ N(0, 1)`` gives unit-variance pre-activations; the output
    layer starts small (``N(0, 1 / hidden)`` scaled by 0.1) so initial logits are near zero.
    """
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((n_features, hidden), dtype=np.float32),
        "b1": np.zeros(hidden, np.float32),
        "W2": (rng.standard_normal((n_labels, hidden), dtype=np.float32) * np.float32(0.1 / np.sqrt(hidden))),
        "b2": np.zeros(n_labels, np.float32),
    }


class SlideNetwork:
    """Sparse-input MLP with an LSH-sampled output layer, trained one batch at a time by `step`."""

    def __init__(self, *, n_features: int, n_labels: int, config: SlideConfig | None = None,
                 params: dict[str, np.ndarray] | None = None) -> None:
        self.config = (config or SlideConfig()).validate()
        c = self.config
        self.n_features, self.n_labels = int(n_features), int(n_labels)
        self._k = get_backend(c.backend)
        p = params if params is not None else init_params(n_features, n_labels, c.hidden, c.seed)
        f32 = lambda a: np.ascontiguousarray(a, np.float32).copy()  # noqa: E731
        self.W1, self.b1 = f32(p["W1"]), f32(p["b1"]).reshape(1, -1)
        self.W2, self.b2 = f32(p["W2"]), f32(p["b2"]).reshape(-1, 1)
        if self.W1.shape != (n_features, c.hidden) or self.W2.shape != (n_labels, c.hidden):
            raise InvalidParameterError(
                f"params have W1 {self.W1.shape}, W2 {self.W2.shape}; expected "
                f"({n_features}, {c.hidden}) and ({n_labels}, {c.hidden})."
            )
        z = np.zeros_like
        self._state = {
            name: (z(w), z(w), z(w), np.zeros(w.shape[0], np.uint8))
            for name, w in (("W1", self.W1), ("b1", self.b1), ("W2", self.W2), ("b2", self.b2))
        }
        self.tables = LSHTables(c.hash, dim=c.hidden, backend=c.backend)
        self.tables.rebuild(self.W2)
        self.center_ = np.zeros(c.hidden, np.float32)  # running mean of hidden vectors (center_queries)
        self.qshift_ = np.zeros(c.hash.L * c.hash.K, np.float64)  # center_ @ proj: what SimHash subtracts
        self._centered = False
        self.step_ = 0
        self._next_rebuild = c.hash.rebuild_every
        self._period = float(c.hash.rebuild_every)

    # -- training ---------------------------------------------------------------------------
    def _chunks(self) -> int:
        if self.config.n_chunks:
            return self.config.n_chunks
        try:
            import numba

            return int(numba.get_num_threads())
        except ImportError:
            return 1

    def step(self, data: XMCData, rows: np.ndarray) -> tuple[float, int]:
        """One lazy-Adam step on the samples ``rows`` of ``data``; returns (mean loss, active ids summed)."""
        c = self.config
        rows = np.ascontiguousarray(rows, np.int64)
        if c.center_queries and not self._centered:
            self._update_center(data, rows)
        G1, Gb1, G2, Gb2 = (self._state[n][2] for n in ("W1", "b1", "W2", "b2"))
        t1, t2 = self._state["W1"][3], self._state["W2"][3]
        loss, n_act = self._k.batch_grads(
            data.x_indptr, data.x_idx, data.x_val, rows, data.y_indptr, data.y_idx,
            self.W1, self.b1[0], self.W2, self.b2[:, 0], G1, Gb1[0], G2, Gb2[:, 0], t1, t2,
            *self.tables.hash_args, self.qshift_, self.tables.buckets_, self.tables.fill_, c.max_active,
            c.n_random, c.seed * 1_000_003 + self.step_, self._chunks(),
        )
        self.step_ += 1
        # the output bias moves with its row; the hidden bias is dense
        self._state["b2"][3][:] = t2
        self._state["b1"][3][:] = 1
        for name, w in (("W2", self.W2), ("b2", self.b2), ("W1", self.W1), ("b1", self.b1)):
            M, V, G, t = self._state[name]
            self._k.adam_rows(w, M, V, G, t, c.lr, c.beta1, c.beta2, c.eps, self.step_)
        if self.step_ >= self._next_rebuild:
            self.tables.rebuild(self.W2)
            if c.center_queries:
                self._update_center(data, rows)
            self._period = min(self._period * c.hash.rebuild_growth, float(c.hash.rebuild_max))
            self._next_rebuild = self.step_ + max(1, int(round(self._period)))
        return float(loss) / max(1, rows.shape[0]), int(n_act)

    def _update_center(self, data: XMCData, rows: np.ndarray, weight: float = 0.3) -> None:
        """Move the query centre towards this batch's mean hidden vector (run at each table rebuild)."""
        m = self.hidden(data, rows).mean(axis=0)
        self.center_ = m if not self._centered else (1 - weight) * self.center_ + weight * m
        self.center_ = self.center_.astype(np.float32)
        self._centered = True
        self.qshift_ = self.center_.astype(np.float64) @ self.tables.proj_.astype(np.float64)  # SimHash (validated)

    # -- inference --------------------------------------------------------------------------
    def params(self) -> dict[str, np.ndarray]:
        return {"W1": self.W1, "b1": self.b1[0], "W2": self.W2, "b2": self.b2[:, 0]}

    def hidden(self, data: XMCData, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, np.int64)
        return self._k.hidden_forward(data.x_indptr, data.x_idx, data.x_val, rows, self.W1, self.b1[0])

    def active_sets(self, data: XMCData, rows: np.ndarray, *, with_labels: bool) -> list[np.ndarray]:
        """The active output neurons of each sample (true labels first when ``with_labels``)."""
        rows = np.ascontiguousarray(rows, np.int64)
        indptr, ids = self._k.query_active(
            data.x_indptr, data.x_idx, data.x_val, rows, data.y_indptr, data.y_idx, bool(with_labels),
            self.W1, self.b1[0], *self.tables.hash_args, self.qshift_, self.tables.buckets_, self.tables.fill_,
            self.config.max_active, self.n_labels,
        )
        return [ids[indptr[i]:indptr[i + 1]] for i in range(rows.shape[0])]

    def active_logits(self, h: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Logits of the ``active`` neurons only: ``W2[active] @ h + b2[active]``."""
        return self.W2[active] @ h + self.b2[active, 0]

    def predict_topk(self, data: XMCData, rows: np.ndarray, k: int = 5, *, exact: bool = True) -> np.ndarray:
        """Top-``k`` labels per sample: over all labels (``exact``) or over the LSH active set only."""
        if exact:
            return topk_labels(self.params(), data, rows, k, hidden_fn=self.hidden)
        H = self.hidden(data, rows)
        out = np.full((len(rows), k), -1, np.int64)
        for i, act in enumerate(self.active_sets(data, rows, with_labels=False)):
            if act.size:
                z = self.active_logits(H[i], act)
                top = act[np.argsort(-z, kind="stable")[:k]]
                out[i, : top.size] = top
        return out


    def topk_recall(self, data: XMCData, rows: np.ndarray, k: int = 5) -> float:
        """LSH recall of the true top-``k`` logits: mean share of each sample's exact top-``k``
        output neurons that its label-free active set contains."""
        top = self.predict_topk(data, rows, k, exact=True)
        acts = self.active_sets(data, rows, with_labels=False)
        return float(np.mean([np.isin(t, a).mean() for t, a in zip(top, acts)])) if len(acts) else 0.0


def dense_scores(params: dict[str, np.ndarray], H: np.ndarray) -> np.ndarray:
    """Full output logits ``H @ W2.T + b2`` (the dense reference the sparse forward must match)."""
    return H @ params["W2"].T + params["b2"]


def topk_labels(params, data: XMCData, rows: np.ndarray, k: int, *, hidden_fn=None,
                chunk: int = 512) -> np.ndarray:
    """Exact top-``k`` over all labels, in chunks to bound memory."""
    rows = np.asarray(rows, np.int64)
    if hidden_fn is None:
        ref = get_backend("auto")
        hidden_fn = lambda d, r: ref.hidden_forward(  # noqa: E731
            d.x_indptr, d.x_idx, d.x_val, np.ascontiguousarray(r, np.int64),
            np.ascontiguousarray(params["W1"], np.float32), np.ascontiguousarray(params["b1"], np.float32))
    kern = get_backend("auto")
    out = np.empty((rows.shape[0], k), np.int64)
    for lo in range(0, rows.shape[0], chunk):
        r = rows[lo:lo + chunk]
        out[lo:lo + chunk] = kern.topk_rows(dense_scores(params, hidden_fn(data, r)), k)
    return out


def precision_at_k(topk: np.ndarray, data: XMCData, rows: np.ndarray, k: int) -> float:
    """Mean over samples of |top-k predictions ∩ true labels| / k."""
    hits = 0
    for i, r in enumerate(np.asarray(rows, np.int64)):
        hits += np.isin(topk[i, :k], data.labels(int(r))).sum()
    return float(hits) / (k * max(1, len(rows)))


def warmup(backend: str = "auto") -> None:
    """Compile (or load from cache) every kernel on a tiny problem, for both hash families, so
    JIT compilation never lands inside a timed training run."""
    from .data import SyntheticConfig, make_synthetic_xmc

    tr, _ = make_synthetic_xmc(SyntheticConfig(n_train=64, n_test=1, n_features=50, n_labels=40))
    for family in ("simhash", "dwta"):
        cfg = SlideConfig(hidden=8, max_active=8, backend=backend,
                          hash=HashConfig(family=family, K=2, L=2, bucket_size=4, bin_size=2))
        net = SlideNetwork(n_features=50, n_labels=40, config=cfg)
        net.step(tr, np.arange(32))
        net.topk_recall(tr, np.arange(4))
