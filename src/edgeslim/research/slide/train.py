"""Timed training with periodic P@1 / P@5 checkpoints, one loop for SLIDE and the baselines.

Wall-clock counts training only: the clock pauses while a checkpoint evaluates, and every method
is evaluated the same way (exact top-k over all labels from its current weights).

>>> from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc
>>> tr, te = make_synthetic_xmc(SyntheticConfig(n_train=256, n_test=64, n_features=300, n_labels=500))
>>> trainer = make_trainer("slide", n_features=300, n_labels=500, hidden=16, backend="numpy")
>>> res = fit(trainer, tr, te, FitConfig(batch_size=32, max_epochs=1, eval_every_s=1e9))
>>> res.history[-1].samples
256
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ...errors import InvalidParameterError
from ...registry import Registry
from .data import XMCData
from .hashing import HashConfig
from .network import SlideConfig, SlideNetwork, init_params, precision_at_k, topk_labels

__all__ = ["Trainer", "TRAINERS", "make_trainer", "FitConfig", "Checkpoint", "FitResult", "fit",
           "evaluate", "time_to_reach", "p1_standard_error", "SlideTrainer", "UniformTrainer", "FitRun", "fit_interleaved",
           "plot_p1_vs_time"]

TRAINERS: Registry[Callable[..., "Trainer"]] = Registry("slide trainer")


class Trainer(Protocol):
    name: str

    def step(self, data: XMCData, rows: np.ndarray) -> float: ...
    def params(self) -> dict[str, np.ndarray]: ...
    def stats(self) -> dict[str, float]: ...


class SlideTrainer:
    """`SlideNetwork` behind the `Trainer` protocol; tracks the mean active-set fraction."""

    name = "slide"

    def __init__(self, net: SlideNetwork) -> None:
        self.net = net
        self.active_sum_ = 0
        self.samples_ = 0

    def step(self, data: XMCData, rows: np.ndarray) -> float:
        loss, n_act = self.net.step(data, rows)
        self.active_sum_ += n_act
        self.samples_ += len(rows)
        return loss

    def params(self) -> dict[str, np.ndarray]:
        return self.net.params()

    def active_recall(self, data: XMCData, rows: np.ndarray, k: int = 5) -> float:
        """Share of each sample's exact top-``k`` labels that its label-free active set holds."""
        return self.net.topk_recall(data, rows, k)

    def stats(self) -> dict[str, float]:
        frac = self.active_sum_ / max(1, self.samples_) / self.net.n_labels
        return {"active_fraction": frac, "rebuilds": float(self.net.tables.n_rebuilds_)}


@TRAINERS.register("slide")
def _make_slide(*, n_features: int, n_labels: int, hidden: int = 128, lr: float = 1e-3, seed: int = 0,
                params: dict | None = None, max_active: int = 2048, hash: HashConfig | None = None,
                backend: str = "auto", n_random: int = 0, center_queries: bool = False, **_: Any) -> Trainer:
    cfg = SlideConfig(hidden=hidden, lr=lr, seed=seed, max_active=max_active, n_random=n_random,
                      center_queries=center_queries, hash=hash or HashConfig(), backend=backend)
    return SlideTrainer(SlideNetwork(n_features=n_features, n_labels=n_labels, config=cfg, params=params))


class UniformTrainer(SlideTrainer):
    """SLIDE's kernels with the LSH turned off (``max_active=0``): every sample's softmax runs over its labels and the
    batch's shared uniform negatives, weighted to stand for the rest. The ablation that tells what the LSH adds."""

    name = "uniform"
    active_recall = None  # no LSH, no active set to score


@TRAINERS.register("uniform")
def _make_uniform(*, n_features: int, n_labels: int, hidden: int = 128, lr: float = 1e-3, seed: int = 0,
                  params: dict | None = None, n_random: int = 512, backend: str = "auto", **_: Any) -> Trainer:
    cfg = SlideConfig(hidden=hidden, lr=lr, seed=seed, max_active=0, n_random=n_random, backend=backend)
    return UniformTrainer(SlideNetwork(n_features=n_features, n_labels=n_labels, config=cfg, params=params))


@TRAINERS.register("dense")
def _make_dense(*, n_features: int, n_labels: int, hidden: int = 128, lr: float = 1e-3, seed: int = 0,
                params: dict | None = None, threads: int = 0, **_: Any) -> Trainer:
    from .baselines import TorchConfig, TorchDenseTrainer

    p = params if params is not None else init_params(n_features, n_labels, hidden, seed)
    return TorchDenseTrainer(n_features=n_features, n_labels=n_labels, params=p,
                             config=TorchConfig(hidden=hidden, lr=lr, seed=seed, threads=threads))


@TRAINERS.register("sampled")
def _make_sampled(*, n_features: int, n_labels: int, hidden: int = 128, lr: float = 1e-3, seed: int = 0,
                  params: dict | None = None, threads: int = 0, n_sampled: int = 2048, **_: Any) -> Trainer:
    from .baselines import TorchConfig, TorchSampledTrainer

    p = params if params is not None else init_params(n_features, n_labels, hidden, seed)
    return TorchSampledTrainer(n_features=n_features, n_labels=n_labels, params=p,
                               config=TorchConfig(hidden=hidden, lr=lr, seed=seed, threads=threads,
                                                  n_sampled=n_sampled))


def make_trainer(method: str, **kwargs: Any) -> Trainer:
    """Build a registered trainer (``slide``, ``uniform``, ``dense``, ``sampled``) by name."""
    return TRAINERS.get(method)(**kwargs)


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Stop at whichever comes first: ``max_epochs``, ``time_budget_s`` of training time, or a
    checkpoint with P@1 >= ``stop_at_p1``. Checkpoints every ``eval_every_s`` of training time on
    the first ``eval_samples`` test samples (and always at the end). A trainer with an active set (SLIDE) also
    reports, at each checkpoint, its active set's recall of the exact top-5 labels on the first ``recall_samples``."""

    batch_size: int = 128
    max_epochs: float = 1.0
    time_budget_s: float = float("inf")
    eval_every_s: float = 10.0
    eval_samples: int = 2000
    recall_samples: int = 500
    stop_at_p1: float | None = None
    seed: int = 0

    def validate(self) -> "FitConfig":
        if self.batch_size < 1 or self.max_epochs <= 0 or self.time_budget_s <= 0 or self.eval_samples < 1:
            raise InvalidParameterError(f"FitConfig: sizes and budgets must be positive; got {self}.")
        return self


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    train_s: float
    samples: int
    epoch: float
    loss: float
    p1: float
    p5: float
    samples_per_s: float
    recall5: float | None = None  # share of the exact top-5 labels in the label-free active set (SLIDE only)


@dataclass(kw_only=True)
class FitResult:
    method: str
    history: list[Checkpoint] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> Checkpoint:
        return self.history[-1]

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"method": self.method, **asdict(c)} for c in self.history]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "history": self.to_rows(), "stats": dict(self.stats)}


def evaluate(params: dict[str, np.ndarray], data: XMCData, rows: np.ndarray) -> tuple[float, float]:
    """(P@1, P@5) of exact top-5 predictions over all labels."""
    top = topk_labels(params, data, rows, 5)
    return precision_at_k(top, data, rows, 1), precision_at_k(top, data, rows, 5)


class FitRun:
    """Resumable training run: `advance` trains for a slice of wall-clock, so a benchmark can
    alternate methods in short rounds and expose them all to the same machine load."""

    def __init__(self, trainer: Trainer, train: XMCData, test: XMCData, config: FitConfig,
                 progress: Callable[[Checkpoint], None] | None = None) -> None:
        self.trainer, self.train, self.test = trainer, train, test
        self.config = c = config.validate()
        self.progress = progress
        self._rng = np.random.default_rng(c.seed)
        self._n = train.n_samples
        self._eval_rows = np.arange(min(c.eval_samples, test.n_samples))
        self._max_samples = int(c.max_epochs * self._n)
        self.result = FitResult(method=getattr(trainer, "name", type(trainer).__name__))
        self.train_s, self.samples, self._losses = 0.0, 0, []
        self._next_eval = c.eval_every_s
        self._order, self._pos = self._rng.permutation(self._n), 0
        self.done = False
        self._checkpoint()

    def _checkpoint(self) -> Checkpoint:
        p1, p5 = evaluate(self.trainer.params(), self.test, self._eval_rows)
        recall = getattr(self.trainer, "active_recall", None)
        r5 = recall(self.test, self._eval_rows[:self.config.recall_samples], 5) if recall is not None else None
        ck = Checkpoint(train_s=self.train_s, samples=self.samples, epoch=self.samples / self._n,
                        loss=float(np.mean(self._losses[-50:])) if self._losses else float("nan"),
                        p1=p1, p5=p5, samples_per_s=self.samples / self.train_s if self.train_s > 0 else 0.0,
                        recall5=r5)
        self.result.history.append(ck)
        if self.progress is not None:
            self.progress(ck)
        return ck

    def advance(self, seconds: float = float("inf")) -> bool:
        """Train for about ``seconds`` of training time (or to the end); returns `done`."""
        c = self.config
        stop = self.train_s + seconds
        while not self.done and self.train_s < stop:
            if self.samples >= self._max_samples or self.train_s >= c.time_budget_s:
                self._finish()
                break
            if self._pos >= self._n:
                self._order, self._pos = self._rng.permutation(self._n), 0
            rows = self._order[self._pos:self._pos + min(c.batch_size, self._max_samples - self.samples)]
            self._pos += rows.shape[0]
            t0 = time.perf_counter()
            self._losses.append(self.trainer.step(self.train, rows))
            self.train_s += time.perf_counter() - t0
            self.samples += rows.shape[0]
            if self.train_s >= self._next_eval:
                self._next_eval = self.train_s + c.eval_every_s
                ck = self._checkpoint()
                if c.stop_at_p1 is not None and ck.p1 >= c.stop_at_p1:
                    self._finish()
        return self.done

    def _finish(self) -> None:
        if self.result.history[-1].samples != self.samples:
            self._checkpoint()
        self.result.stats = dict(self.trainer.stats())
        self.done = True


def fit(trainer: Trainer, train: XMCData, test: XMCData, config: FitConfig,
        progress: Callable[[Checkpoint], None] | None = None) -> FitResult:
    """Train ``trainer`` on shuffled batches of ``train``; checkpoint P@k on ``test``."""
    run = FitRun(trainer, train, test, config, progress)
    while not run.advance():
        pass
    return run.result


def fit_interleaved(runs: dict[str, FitRun], slice_s: float = 5.0) -> dict[str, FitResult]:
    """Advance several runs in alternating slices of ``slice_s`` training seconds until all are
    done, so that on a shared machine every method trains under the same load."""
    while not all(r.done for r in runs.values()):
        for r in runs.values():
            if not r.done:
                r.advance(slice_s)
    return {n: r.result for n, r in runs.items()}


def plot_p1_vs_time(results: dict[str, FitResult], path, *, target_p1: float | None = None,
                    threads: int | None = None) -> None:
    """Write a PNG of P@1 against training wall-clock, one line per method (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    for n, r in results.items():
        ax.plot([c.train_s for c in r.history], [c.p1 for c in r.history], marker="o", ms=3, label=n)
    if target_p1 is not None:
        ax.axhline(target_p1, color="grey", ls="--", lw=1, label="dense final P@1 - 1 pt")
    ax.set_xlabel("training wall-clock (s)" + (f", {threads} threads" if threads else ""))
    ax.set_ylabel("P@1 (test)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def time_to_reach(history: list[Checkpoint], target_p1: float, *, sustained: bool = True) -> float | None:
    """Training seconds at which P@1 reaches ``target_p1`` for good: the crossing after the last checkpoint below the
    target, linearly interpolated between the two checkpoints around it; None if the run ends below it.

    ``sustained=False`` gives the first crossing instead, which flatters a method whose P@1 crosses the target early,
    falls back and only later stays above (a crossing inside the test set's noise is not a result).
    """
    if not history:
        return None
    if sustained:
        below = [i for i, ck in enumerate(history) if ck.p1 < target_p1]
        if not below:
            return history[0].train_s
        i = below[-1]
        if i == len(history) - 1:
            return None
        prev, ck = history[i], history[i + 1]
        frac = (target_p1 - prev.p1) / (ck.p1 - prev.p1)
        return prev.train_s + frac * (ck.train_s - prev.train_s)
    prev = None
    for ck in history:
        if ck.p1 >= target_p1:
            if prev is None or ck.p1 == prev.p1:
                return ck.train_s
            frac = (target_p1 - prev.p1) / (ck.p1 - prev.p1)
            return prev.train_s + frac * (ck.train_s - prev.train_s)
        prev = ck
    return None


def p1_standard_error(p1: float, n: int) -> float:
    """Binomial standard error of a P@1 measured on ``n`` test samples: two methods whose P@1 differ by less than about
    two of these are not told apart by that test set."""
    return float((p1 * (1 - p1) / max(n, 1)) ** 0.5)
