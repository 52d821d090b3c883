"""Sparse multi-label data for extreme classification (XMC): loader, writer, synthetic generator.

The Extreme Classification Repository format (Bhatia et al., http://manikvarma.org/downloads/XC/
XMLRepository.html): a header ``n_samples n_features n_labels``, then one line per sample
``l1,l2,... f:v f:v ...`` (labels may be empty; feature ids and label ids are 0-based).

>>> train, test = make_synthetic_xmc(SyntheticConfig(n_train=200, n_test=50, n_features=500, n_labels=300))
>>> train.n_samples, test.n_samples, train.n_labels
(200, 50, 300)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError, InvalidParameterError

__all__ = ["XMCData", "SyntheticConfig", "load_xmc", "save_xmc", "make_synthetic_xmc"]


@dataclass(frozen=True, kw_only=True, eq=False)
class XMCData:
    """Samples as two CSR matrices: features (``x_*``) and labels (``y_*``)."""

    x_indptr: np.ndarray  # int64[n + 1]
    x_idx: np.ndarray  # int32[nnz]
    x_val: np.ndarray  # float32[nnz]
    y_indptr: np.ndarray  # int64[n + 1]
    y_idx: np.ndarray  # int32[n_label_entries]
    n_features: int
    n_labels: int

    @property
    def n_samples(self) -> int:
        return int(self.x_indptr.shape[0] - 1)

    def labels(self, i: int) -> np.ndarray:
        return self.y_idx[self.y_indptr[i]:self.y_indptr[i + 1]]

    def features(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.x_indptr[i], self.x_indptr[i + 1]
        return self.x_idx[lo:hi], self.x_val[lo:hi]

    def subset(self, rows: np.ndarray) -> "XMCData":
        rows = np.asarray(rows, np.int64)
        xs = [self.features(int(r)) for r in rows]
        ys = [self.labels(int(r)) for r in rows]
        return _from_lists(xs, ys, self.n_features, self.n_labels)

    def label_counts(self) -> np.ndarray:
        return np.bincount(self.y_idx, minlength=self.n_labels)


def _from_lists(xs, ys, n_features, n_labels) -> XMCData:
    x_indptr = np.zeros(len(xs) + 1, np.int64)
    x_indptr[1:] = np.cumsum([len(i) for i, _ in xs])
    y_indptr = np.zeros(len(ys) + 1, np.int64)
    y_indptr[1:] = np.cumsum([len(y) for y in ys])
    def cat(parts, dt):
        return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return XMCData(
        x_indptr=x_indptr,
        x_idx=cat([i for i, _ in xs], np.int32),
        x_val=cat([v for _, v in xs], np.float32),
        y_indptr=y_indptr,
        y_idx=cat(list(ys), np.int32),
        n_features=int(n_features),
        n_labels=int(n_labels),
    )


def load_xmc(path: str | os.PathLike) -> XMCData:
    """Read a file in the Extreme Classification Repository sparse format.

    Raises `DataError` naming the file, the line and what is wrong on any malformed line, an id out
    of the header's range, or a sample count that disagrees with the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file. Pass a file in the XMC sparse text format.")
    xs: list[tuple[np.ndarray, np.ndarray]] = []
    ys: list[np.ndarray] = []
    with path.open("r", encoding="utf-8") as fh:
        header = fh.readline()
        parts = header.split()
        try:
            if len(parts) != 3:
                raise ValueError
            n, n_features, n_labels = (int(p) for p in parts)
            if min(n, n_features, n_labels) < 0:
                raise ValueError
        except ValueError:
            raise DataError(
                f"{path}:1: header {header.strip()!r} is not 'n_samples n_features n_labels' "
                "(three non-negative integers). Add the header line the XMC format starts with."
            ) from None
        lineno = 1
        for line in fh:
            lineno += 1
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            fix = "Each line must read 'l1,l2,... f:v f:v ...' with 0-based integer ids."
            if line[0] in " \t":
                lab_tok, rest = "", line.split()
            else:
                toks = line.split()
                if ":" in toks[0]:
                    lab_tok, rest = "", toks
                else:
                    lab_tok, rest = toks[0], toks[1:]
            try:
                labels = np.array([int(t) for t in lab_tok.split(",") if t != ""], np.int64)
            except ValueError:
                raise DataError(f"{where}: labels {lab_tok!r} are not comma-separated integers. {fix}") from None
            fi, fv = [], []
            for tok in rest:
                a, sep, b = tok.partition(":")
                try:
                    if not sep:
                        raise ValueError
                    fi.append(int(a))
                    fv.append(float(b))
                except ValueError:
                    raise DataError(f"{where}: feature token {tok!r} is not 'id:value'. {fix}") from None
            fi_a = np.array(fi, np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
                bad = labels[(labels < 0) | (labels >= n_labels)][0]
                raise DataError(f"{where}: label {bad} is outside [0, {n_labels}) set by the header. "
                                "Fix the label id or the header's n_labels.")
            if fi_a.size and (fi_a.min() < 0 or fi_a.max() >= n_features):
                bad = fi_a[(fi_a < 0) | (fi_a >= n_features)][0]
                raise DataError(f"{where}: feature {bad} is outside [0, {n_features}) set by the header. "
                                "Fix the feature id or the header's n_features.")
            xs.append((fi_a, np.array(fv, np.float32)))
            ys.append(labels)
    if len(xs) != n:
        raise DataError(f"{path}: header says {n} samples but the file has {len(xs)}. "
                        "Fix the header's n_samples or restore the missing lines.")
    return _from_lists(xs, ys, n_features, n_labels)


def save_xmc(data: XMCData, path: str | os.PathLike) -> None:
    """Write ``data`` in the XMC sparse text format (``load_xmc`` reads it back)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        fh.write(f"{data.n_samples} {data.n_features} {data.n_labels}\n")
        for i in range(data.n_samples):
            fi, fv = data.features(i)
            labs = ",".join(str(int(y)) for y in data.labels(i))
            feats = " ".join(f"{int(a)}:{float(b):.6g}" for a, b in zip(fi, fv))
            fh.write(f"{labs} {feats}\n")


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """A seeded XMC-like task.

    Label ``j`` (by popularity rank) is the primary label of a sample with probability
    proportional to ``(j + 1) ** -zipf`` (power law). Labels come in clusters of ``cluster_size``;
    a sample adds each other label of its primary's cluster with probability ``co_label_p``.
    Every label owns ``feats_per_label`` features; a sample draws ``feats_per_sample`` features
    from its labels' features (label-correlated), ``noise_feats`` uniformly at random, with
    tf-idf-like positive values, L2-normalised.
    """

    n_train: int = 20000
    n_test: int = 2000
    n_features: int = 50000
    n_labels: int = 200000
    zipf: float = 1.0
    cluster_size: int = 4
    co_label_p: float = 0.15
    feats_per_label: int = 12
    feats_per_sample: int = 16
    noise_feats: int = 4
    seed: int = 0

    def validate(self) -> "SyntheticConfig":
        if min(self.n_train, self.n_test, self.n_features, self.n_labels, self.cluster_size,
               self.feats_per_label, self.feats_per_sample) < 1 or self.noise_feats < 0:
            raise InvalidParameterError(f"SyntheticConfig: sizes must be >= 1 (noise_feats >= 0); got {self}.")
        if not 0.0 <= self.co_label_p <= 1.0 or self.zipf < 0:
            raise InvalidParameterError(f"SyntheticConfig: need 0 <= co_label_p <= 1 and zipf >= 0; got {self}.")
        return self


def make_synthetic_xmc(config: SyntheticConfig) -> tuple[XMCData, XMCData]:
    """Generate ``(train, test)`` drawn from the same distribution; deterministic in ``config.seed``."""
    c = config.validate()
    rng = np.random.default_rng(c.seed)
    pop = (np.arange(c.n_labels, dtype=np.float64) + 1.0) ** -c.zipf
    cdf = np.cumsum(pop / pop.sum())
    # label ids are a random relabelling of popularity ranks, so ids carry no information
    rank_to_id = rng.permutation(c.n_labels).astype(np.int64)
    label_feats = rng.integers(0, c.n_features, size=(c.n_labels, c.feats_per_label))
    feat_w = rng.uniform(0.5, 1.5, size=(c.n_labels, c.feats_per_label))
    idf = rng.uniform(0.5, 2.0, size=c.n_features)
    n = c.n_train + c.n_test
    primary_rank = np.minimum(np.searchsorted(cdf, rng.random(n)), c.n_labels - 1)
    xs, ys = [], []
    for i in range(n):
        pr = int(primary_rank[i])
        base = pr - pr % c.cluster_size
        mates = [r for r in range(base, min(base + c.cluster_size, c.n_labels)) if r != pr]
        extra = [r for r in mates if rng.random() < c.co_label_p]
        ranks = [pr] + extra
        labels = rank_to_id[ranks]
        # features: mostly the primary's, some from co-labels
        owners = rng.choice(len(ranks), size=c.feats_per_sample,
                            p=_owner_p(len(ranks)))
        slots = rng.integers(0, c.feats_per_label, size=c.feats_per_sample)
        lab_ids = labels[owners]
        f = label_feats[lab_ids, slots]
        w = feat_w[lab_ids, slots]
        if c.noise_feats:
            f = np.concatenate([f, rng.integers(0, c.n_features, size=c.noise_feats)])
            w = np.concatenate([w, rng.uniform(0.2, 1.0, size=c.noise_feats)])
        uf, inv = np.unique(f, return_inverse=True)
        v = np.zeros(uf.shape[0])
        np.add.at(v, inv, w)
        v = np.log1p(v) * idf[uf]
        v /= np.linalg.norm(v)
        xs.append((uf, v.astype(np.float32)))
        ys.append(np.sort(labels))
    train = _from_lists(xs[: c.n_train], ys[: c.n_train], c.n_features, c.n_labels)
    test = _from_lists(xs[c.n_train:], ys[c.n_train:], c.n_features, c.n_labels)
    return train, test


def _owner_p(k: int) -> np.ndarray:
    if k == 1:
        return np.ones(1)
    p = np.full(k, 0.4 / (k - 1))
    p[0] = 0.6
    return p
