"""Locality-sensitive hash families and bucketed hash tables for SLIDE.

References
----------
- Chen, Medini, Farwell, Gobriel, Tai, Shrivastava. "SLIDE: In Defense of Smart Algorithms over
  Hardware Acceleration for Large-Scale Deep Learning Systems." MLSys 2020.
- Charikar. "Similarity estimation techniques from rounding algorithms." STOC 2002 (SimHash).
- Chen, Shrivastava. "Densified Winner Take All (WTA) Hashing for Sparse Datasets." UAI 2018 (DWTA).

>>> import numpy as np
>>> cfg = HashConfig(family="simhash", K=4, L=3, bucket_size=8)
>>> t = LSHTables(cfg, dim=16, backend="numpy")
>>> W = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
>>> t.rebuild(W)
>>> t.codes(W[:2]).shape
(2, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ...errors import InvalidParameterError, NotFittedError
from ...registry import Registry
from . import _reference as _ref

__all__ = [
    "HashConfig",
    "HashFamily",
    "SimHash",
    "DWTA",
    "HASH_FAMILIES",
    "LSHTables",
    "get_backend",
]

HASH_FAMILIES: Registry[type["HashFamily"]] = Registry("hash family")


def get_backend(name: str = "auto") -> ModuleType:
    """The kernel module: ``"numba"`` (parallel, fast), ``"numpy"`` (reference) or ``"auto"``."""
    if name not in ("auto", "numba", "numpy"):
        raise InvalidParameterError(f"backend={name!r} is not one of 'auto', 'numba', 'numpy'.")
    if name == "numpy":
        return _ref
    try:
        from . import _kernels
    except ImportError as e:  # numba missing
        if name == "numba":
            raise InvalidParameterError(
                f"backend='numba' needs numba ({e}). Install it with `pip install edgeslim[kernels]` "
                "or pass backend='numpy'."
            ) from None
        return _ref
    return _kernels


@dataclass(frozen=True, kw_only=True)
class HashConfig:
    """LSH tables for one layer.

    ``K`` hashes are concatenated into the key of each of ``L`` tables; keys fold into
    ``2**range_pow`` buckets (SimHash keys have K bits, DWTA keys ``K * log2(bin_size)`` bits);
    each bucket keeps at most ``bucket_size`` ids (``policy``: ``"fifo"`` keeps the latest arrivals,
    ``"reservoir"`` a uniform sample). Tables are rebuilt from the current weights after
    ``rebuild_every`` steps, then each period grows by ``rebuild_growth`` (the paper's exponentially
    decaying rebuild frequency) up to ``rebuild_max`` steps.
    """

    family: str = "simhash"
    K: int = 8
    L: int = 16
    bucket_size: int = 64
    range_pow: int = 16
    bin_size: int = 8
    density: float = 1.0
    policy: str = "fifo"
    rebuild_every: int = 20
    rebuild_growth: float = 1.1
    rebuild_max: int = 400
    seed: int = 0

    def validate(self) -> "HashConfig":
        HASH_FAMILIES.get(self.family)
        checks = [
            (1 <= self.K <= 30, "K must be in [1, 30]"),
            (1 <= self.L <= 4096, "L must be in [1, 4096]"),
            (1 <= self.bucket_size <= 1 << 16, "bucket_size must be in [1, 65536]"),
            (1 <= self.range_pow <= 24, "range_pow must be in [1, 24]"),
            (self.bin_size >= 2 and self.bin_size & (self.bin_size - 1) == 0,
             "bin_size must be a power of two >= 2"),
            (0.0 < self.density <= 1.0, "density must be in (0, 1]"),
            (self.policy in ("fifo", "reservoir"), "policy must be 'fifo' or 'reservoir'"),
            (self.rebuild_every >= 1, "rebuild_every must be >= 1"),
            (self.rebuild_growth >= 1.0, "rebuild_growth must be >= 1"),
            (self.rebuild_max >= self.rebuild_every, "rebuild_max must be >= rebuild_every"),
        ]
        for ok, what in checks:
            if not ok:
                raise InvalidParameterError(f"HashConfig: {what}; got {self}.")
        return self


class HashFamily:
    """A hash family: random parameters drawn once, then ``key bits`` per table."""

    family_id: int = -1

    @staticmethod
    def params(cfg: HashConfig, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(proj float32[dim, L*K], bins int32[L*K, bin_size]); the unused one is a 1x1 dummy."""
        raise NotImplementedError

    @staticmethod
    def key_bits(cfg: HashConfig) -> int:
        raise NotImplementedError


@HASH_FAMILIES.register("simhash")
class SimHash(HashFamily):
    """Signed random projections: P[bit] = 1 - angle(x, y) / pi (Charikar 2002).

    ``density < 1`` gives sparse {-1, 0, +1} projections (SLIDE samples a third of the coordinates).
    """

    family_id = _ref.SIMHASH

    @staticmethod
    def params(cfg, dim, rng):
        n = cfg.L * cfg.K
        proj = rng.choice(np.array([-1.0, 1.0], np.float32), size=(dim, n))
        if cfg.density < 1.0:
            proj *= rng.random((dim, n)) < cfg.density
        return np.ascontiguousarray(proj, np.float32), np.zeros((1, 1), np.int32)

    @staticmethod
    def key_bits(cfg):
        return cfg.K


@HASH_FAMILIES.register("dwta")
class DWTA(HashFamily):
    """Densified winner-take-all: the argmax position inside a random bin of ``bin_size``
    coordinates; empty (all-zero) bins borrow a non-empty bin's code (Chen & Shrivastava 2018).
    Collision probability rises with the rank correlation of the vectors, suited to sparse inputs."""

    family_id = _ref.DWTA

    @staticmethod
    def params(cfg, dim, rng):
        n = cfg.L * cfg.K
        if cfg.bin_size > dim:
            raise InvalidParameterError(
                f"DWTA bin_size={cfg.bin_size} exceeds the vector dimension {dim}; lower bin_size."
            )
        # bins cut from random permutations, as in the paper: every coordinate is used equally
        per = dim // cfg.bin_size
        perms = [rng.permutation(dim)[: per * cfg.bin_size].reshape(per, cfg.bin_size)
                 for _ in range(math.ceil(n / per))]
        bins = np.concatenate(perms)[:n]
        return np.zeros((1, 1), np.float32), np.ascontiguousarray(bins, np.int32)

    @staticmethod
    def key_bits(cfg):
        return cfg.K * (cfg.bin_size.bit_length() - 1)


class LSHTables:
    """``L`` hash tables over the rows of a weight matrix (one row = one neuron).

    Learned state: ``proj_``, ``bins_`` (hash parameters), ``buckets_`` (int32[L, n_buckets,
    bucket_size]), ``fill_`` (int32[L, n_buckets]); set by `rebuild`.
    """

    def __init__(self, config: HashConfig, *, dim: int, backend: str = "auto") -> None:
        self.config = config.validate()
        self.dim = int(dim)
        self.backend = backend
        self._k = get_backend(backend)
        self.family = HASH_FAMILIES.get(config.family)
        rng = np.random.default_rng(config.seed)
        self.proj_, self.bins_ = self.family.params(config, self.dim, rng)
        bits = self.family.key_bits(config)
        self.range_pow_ = min(bits, config.range_pow)
        self.n_buckets = 1 << self.range_pow_
        self.buckets_: np.ndarray | None = None
        self.fill_: np.ndarray | None = None
        self.n_rebuilds_ = 0
        self._rng = np.random.default_rng(config.seed + 1)

    @property
    def hash_args(self) -> tuple:
        """The positional hash arguments every kernel takes: (family, proj, bins, K, L, range_pow)."""
        c = self.config
        return (self.family.family_id, self.proj_, self.bins_, c.K, c.L, self.config.range_pow)

    def codes(self, X: np.ndarray) -> np.ndarray:
        """Bucket index of each row of ``X`` in each table: int64[n, L]."""
        X = np.ascontiguousarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidParameterError(f"expected a float array [n, {self.dim}], got shape {X.shape}.")
        if self.family.family_id == _ref.SIMHASH and X.shape[0] > 256:
            # bulk path (table rebuilds): one BLAS product instead of per-row loops
            return _simhash_bulk(X, self.proj_, self.config.K, self.config.L, self.config.range_pow)
        return self._k.hash_codes(X, *self.hash_args)

    def rebuild(self, W: np.ndarray) -> None:
        """Re-hash every row of ``W`` into fresh tables (insertion order shuffled, so FIFO buckets
        that overflow keep a random subset rather than the highest ids)."""
        c = self.config
        codes = self.codes(W)
        order = self._rng.permutation(W.shape[0]).astype(np.int64)
        if self.buckets_ is None:
            self.buckets_ = np.zeros((c.L, self.n_buckets, c.bucket_size), np.int32)
            self.fill_ = np.zeros((c.L, self.n_buckets), np.int32)
        policy = _ref.FIFO if c.policy == "fifo" else _ref.RESERVOIR
        self._k.build_tables(codes, order, self.buckets_, self.fill_, policy, c.seed + self.n_rebuilds_)
        self.n_rebuilds_ += 1

    def check_built(self) -> None:
        if self.buckets_ is None:
            raise NotFittedError("LSHTables used before rebuild(W); call rebuild with the weights first.")

    def candidates(self, x: np.ndarray) -> np.ndarray:
        """Distinct ids in the ``L`` buckets that ``x`` hashes to (no cap), sorted."""
        self.check_built()
        code = self.codes(np.asarray(x, np.float32)[None, :])[0]
        bs = self.config.bucket_size
        parts = [self.buckets_[l, b, : min(int(self.fill_[l, b]), bs)] for l, b in enumerate(code)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)

    def occupancy(self) -> dict[str, float]:
        """Bucket statistics: share of non-empty buckets, mean / max valid entries, overflow share."""
        self.check_built()
        valid = np.minimum(self.fill_, self.config.bucket_size)
        nz = valid > 0
        return {
            "nonempty_share": float(nz.mean()),
            "mean_per_nonempty": float(valid[nz].mean()) if nz.any() else 0.0,
            "max": float(valid.max()),
            "overflow_share": float((self.fill_ > self.config.bucket_size).mean()),
        }


def _simhash_bulk(X: np.ndarray, proj: np.ndarray, K: int, L: int, range_pow: int) -> np.ndarray:
    """Same result as the kernels' SimHash codes, for many rows, via matrix products."""
    n = X.shape[0]
    out = np.empty((n, L), np.int64)
    weights = (1 << np.arange(K, dtype=np.int64))
    for lo in range(0, n, 16384):
        s = X[lo:lo + 16384].astype(np.float32) @ proj  # float32 BLAS; ties at 0 are measure-zero
        bits = (s > 0).reshape(-1, L, K).astype(np.int64)
        key = bits @ weights
        if K > range_pow:
            k32 = (key ^ (key >> 32)) & 0xFFFFFFFF
            key = ((k32 * 1540483477) & 0xFFFFFFFF) >> (32 - range_pow)
        out[lo:lo + 16384] = key
    return out
