"""Data for the search: MNIST IDX folders or class-folder image sets, preprocessed exactly as the ``classify`` task
preprocesses images (RGB, /255, ImageNet mean/std), so every exported subnet can be handed to ``edgeslim optimize
--task classify``.

Splits (deterministic): MNIST's 10,000 t10k images are split 80/20 with seed 0 into train/test, the same test
images ``benchmarks/bnn_mnist.py`` scores the hand-designed CNN on; the 8,000 train images are split again (seed 1)
into 7,000 for the supernet's weights and 1,000 for validation, the accuracy the search selects by. The test split
is read only to score the final front. A class-folder set is split 70/10/20 the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError

__all__ = ["SearchData", "load_data", "MEAN", "STD"]

MEAN = (0.485, 0.456, 0.406)  # the classify task's defaults
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class SearchData:
    """Float32 NCHW arrays (already normalized) and int64 labels of the three splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str
    split: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _normalize_gray(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)[:, None, :, :] / 255.0
    x = np.repeat(x, 3, axis=1)
    mean, std = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1), np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


def _is_mnist(folder: Path) -> bool:
    root = folder / "mnist" if (folder / "mnist").is_dir() else folder
    return any((root / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def load_data(folder: str | Path, image_size: int = 28) -> SearchData:
    """Read ``folder`` (an MNIST IDX folder or one sub-folder of images per class) and split it."""
    from ..train.data import load_mnist, split

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found. Pass --data with an MNIST IDX folder (t10k-images-idx3-ubyte"
                        f"[.gz]) or one sub-folder of images per class.")
    if _is_mnist(folder):
        images, labels = load_mnist(folder)
        if images.shape[1:] != (image_size, image_size):
            raise DataError(f"{folder}: MNIST images are {images.shape[1:]}; the search space expects {image_size}.")
        x, classes = _normalize_gray(images), tuple(str(i) for i in range(10))
        tr, te = split(len(x), test_fraction=0.2, seed=0)
        sub_tr, sub_val = split(len(tr), test_fraction=0.125, seed=1)
        how = "MNIST t10k: 80/20 train/test (seed 0, the test split of benchmarks/bnn_mnist.py); train 7/8 supernet, " \
              "1/8 validation (seed 1)"
        source = "mnist"
    else:
        from ...tasks.classify import ClassifyTask

        task = ClassifyTask(size=(image_size, image_size), calib_size=0)
        calib, ev = task.load(folder)
        items = calib + ev
        x = np.stack([task.preprocess(it.image) for it in items]).astype(np.float32)
        labels = np.asarray([it.label for it in items], np.int64)
        classes = tuple(task.classes_ or ())
        tr, te = split(len(x), test_fraction=0.2, seed=0)
        sub_tr, sub_val = split(len(tr), test_fraction=0.125, seed=1)
        how = "class folders: 80/20 train/test (seed 0); train 7/8 supernet, 1/8 validation (seed 1)"
        source = str(folder)
    if len(sub_val) < 1 or len(te) < 1:
        raise DataError(f"{folder}: {len(x)} images are too few to split into train/validation/test. Add images.")
    t, v = tr[sub_tr], tr[sub_val]
    return SearchData(x_train=x[t], y_train=labels[t], x_val=x[v], y_val=labels[v], x_test=x[te], y_test=labels[te],
                      classes=classes, source=source, split=how)
