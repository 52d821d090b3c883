"""Image classification. Data: one sub-folder per class (sorted names = class indices). Metric: top-1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task, read_image

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Item:
    path: Path
    image: np.ndarray
    label: int


@register_task("classify")
class ClassifyTask(Task):
    """Resize to the model's input size, RGB, scale to [0, 1], normalize with `mean`/`std` (ImageNet by default)."""

    name = "classify"
    metric_name = "top1"
    higher_is_better = True
    default_budget = 0.01

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), size: tuple[int, int] = (224, 224),
                 calib_size: int = 64, eval_limit: int | None = None) -> None:
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.size, self.calib_size, self.eval_limit = size, calib_size, eval_limit
        self.input_name = "input"

    def bind(self, model) -> "ClassifyTask":
        inits = {t.name for t in model.graph.initializer}
        inp = [i for i in model.graph.input if i.name not in inits][0]
        self.input_name = inp.name
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            self.size = (dims[2], dims[3])
        return self

    def load(self, data: Path | None, input_names=(), input_shapes=()) -> tuple[list[Item], list[Item]]:
        if data is None:
            raise DataError("the classify task needs --data DIR with one sub-folder of images per class.")
        folder = Path(data)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found. Pass --data DIR with one sub-folder of images per class.")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{folder} has no class sub-folders. Put each class's images in its own sub-folder.")
        files = []
        for c, name in enumerate(classes):
            files += [(p, c) for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_EXT]
        if len(files) < 2:
            raise DataError(f"{folder}: found {len(files)} images. Add images (png/jpg) to the class folders.")
        # Deterministic interleave so the calibration share covers every class.
        rng = np.random.default_rng(0)
        order = rng.permutation(len(files))
        files = [files[i] for i in order]
        n = min(self.calib_size, len(files) // 2)
        items = [Item(p, read_image(p), c) for p, c in files]
        calib, ev = items[:n], items[n:]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        return calib, ev

    def _prep(self, img: np.ndarray) -> np.ndarray:
        import cv2

        x = cv2.resize(img, (self.size[1], self.size[0]))[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def batches(self, samples: list[Item], batch_size: int = 8) -> Iterator[Batch]:
        for s in range(0, len(samples), batch_size):
            chunk = list(range(s, min(s + batch_size, len(samples))))
            yield Batch({self.input_name: np.stack([self._prep(samples[i].image) for i in chunk]).astype(np.float32)}, chunk)

    def decode(self, outputs: list[np.ndarray]) -> list[int]:
        o = outputs[0]
        return list(o.reshape(o.shape[0], -1).argmax(axis=1).astype(int))

    def score(self, preds: list[int], samples: list[Item]) -> dict[str, float]:
        return {"metric": float(np.mean([p == s.label for p, s in zip(preds, samples)]))}

    def fidelity(self, preds: list[int], ref_preds: list[int]) -> dict[str, float]:
        agree = float(np.mean([p == r for p, r in zip(preds, ref_preds)]))
        return {"exact_match": agree, "metric_vs_fp32": 1.0 - agree}
