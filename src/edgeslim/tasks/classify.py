"""Image classification. Data: one sub-folder per class (sorted names = class indices). Metric: top-1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task, images_from, read_image

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
        self.classes_: list[str] | None = None  # sorted class folder names, index = class id; set by `load`
        self.top_k = 5

    def bind(self, model) -> "ClassifyTask":
        inits = {t.name for t in model.graph.initializer}
        inp = [i for i in model.graph.input if i.name not in inits][0]
        self.input_name = inp.name
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            self.size = (dims[2], dims[3])
        return self

    def load(self, data: Path | None) -> tuple[list[Item], list[Item]]:
        if data is None:
            raise DataError("the classify task needs --data DIR with one sub-folder of images per class.")
        folder = Path(data)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found. Pass --data DIR with one sub-folder of images per class.")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))  # hidden: not classes
        if not classes:
            raise DataError(f"{folder} has no class sub-folders. Put each class's images in its own sub-folder.")
        self.classes_ = classes
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

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """One BGR HxWx3 image -> the model's CHW float input (resize, RGB, /255, mean/std)."""
        import cv2

        x = cv2.resize(img, (self.size[1], self.size[0]))[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def batches(self, samples: list[Item], batch_size: int = 8) -> Iterator[Batch]:
        for s in range(0, len(samples), batch_size):
            chunk = list(range(s, min(s + batch_size, len(samples))))
            yield Batch({self.input_name: np.stack([self.preprocess(samples[i].image) for i in chunk]).astype(np.float32)}, chunk)

    def decode(self, outputs: list[np.ndarray]) -> list[int]:
        o = outputs[0]
        return list(o.reshape(o.shape[0], -1).argmax(axis=1).astype(int))

    def score(self, preds: list[int], samples: list[Item], reference: list | None = None) -> dict[str, float]:
        return {"metric": float(np.mean([p == s.label for p, s in zip(preds, samples)]))}

    def fidelity(self, preds: list[int], ref_preds: list[int]) -> dict[str, float]:
        agree = float(np.mean([p == r for p, r in zip(preds, ref_preds)]))
        return {"exact_match": agree, "metric_vs_fp32": 1.0 - agree}

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if not self.classes_:
            return None
        n = len(self.classes_)
        chance = 1.0 / n
        if metric > chance:
            return None
        return (f"baseline top-1 {metric:.3f} on {n_eval} images is at or below chance ({chance:.3f} for {n} classes): "
                "check the class folder order (sorted names = class indices) and the preprocessing "
                "(--mean/--std/size).")

    # ---- deployment -----------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        return {
            "name": self.name,
            "preprocess": {
                "input": self.input_name,
                "layout": "NCHW",
                "resize": {"height": int(self.size[0]), "width": int(self.size[1]), "keep_aspect_ratio": False,
                           "interpolation": "linear"},
                # cv2 decodes to BGR; the task reverses the channels to RGB.
                "channel_order": "RGB",
                "normalize": {"divide_by": 255.0, "mean": [float(v) for v in self.mean.ravel()],
                              "std": [float(v) for v in self.std.ravel()],
                              "formula": "(x / 255 - mean) / std, in float32"},
            },
            "postprocess": {
                "type": "topk", "output": 0, "k": self.top_k,
                "score": "the model's output value for the class (a logit or a probability, as the model gives it)",
                "classes": list(self.classes_) if self.classes_ else None,
            },
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "ClassifyTask":
        pre, post = spec["preprocess"], spec["postprocess"]
        norm = pre["normalize"]
        t = cls(mean=norm["mean"], std=norm["std"], size=(int(pre["resize"]["height"]), int(pre["resize"]["width"])))
        t.input_name = pre["input"]
        t.top_k = int(post.get("k", 5))
        t.classes_ = list(post["classes"]) if post.get("classes") else None
        return t

    def samples_from(self, inputs) -> list[Item]:
        """Image paths or BGR uint8 arrays (HxWx3; gray and BGRA are converted), one or a list."""
        return [Item(Path(name), img, -1) for name, img in images_from(inputs)]

    def topk(self, outputs: list[np.ndarray]) -> list[list[tuple[int, float]]]:
        """Per sample, the `top_k` (class index, score) pairs, best first; the first is `decode`'s class."""
        o = outputs[0]
        o = o.reshape(o.shape[0], -1)
        order = np.argsort(-o, axis=1, kind="stable")[:, : self.top_k]
        return [[(int(c), float(row[c])) for c in idx] for row, idx in zip(o, order)]

    def predict(self, runner, inputs) -> list[list[tuple[int, float]]]:
        """Top-k (class index, score) pairs per image; index 0 of each list is what evaluation scores."""
        samples = self.samples_from(inputs)
        preds: list = [None] * len(samples)
        for b in self.batches(samples):
            for i, p in zip(b.index, self.topk(runner.run(b.feeds))):
                preds[i] = p
        return preds
