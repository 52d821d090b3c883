"""Small real datasets for training examples and benchmarks (read in place, never copied).

MNIST in IDX format (LeCun, Cortes, Burges): ``t10k-images-idx3-ubyte[.gz]`` and
``t10k-labels-idx1-ubyte[.gz]``; :func:`split` makes a deterministic train/test split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ...errors import DataError, InvalidParameterError

__all__ = ["read_idx", "load_mnist", "split"]


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist. Pass the folder holding the MNIST IDX files.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()}).")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} values; its header says {dims}.")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has no {stem}[.gz]. Pass the folder holding the MNIST IDX files.")


def load_mnist(root: str | Path, kind: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` from an MNIST IDX folder.

    ``root`` may be the ``mnist`` folder itself or its parent.
    """
    root = Path(root)
    if (root / "mnist").is_dir():
        root = root / "mnist"
    images = read_idx(_find(root, f"{kind}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{kind}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"MNIST images {images.shape} and labels {labels.shape} do not match.")
    return images, labels


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled train/test index split of ``range(n)``."""
    if not 0.0 < test_fraction < 1.0:
        raise InvalidParameterError(f"test_fraction={test_fraction} must be in (0, 1).")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
