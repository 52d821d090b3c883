"""Text-line direction (0 or 180 degrees), e.g. the PP-OCR angle classifier. Metric: accuracy.

Data: the same labelled photo folders as `ocr-det` (default: the bundled photo-like set). Each labelled line
(not "do not care") is cut out with the pipeline's perspective crop and used twice: upright (class 0) and turned
by 180 degrees (class 1), so the labels are known by construction. Fidelity: agreement with the fp32 classifier's
class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task

__all__ = ["OcrClsTask", "LineCrop"]

# A classifier fed correctly tells upright from upside-down lines far above chance (0.5).
BASELINE_ACC_LIMIT = 0.6


@dataclass
class LineCrop:
    name: str
    image: np.ndarray  # BGR uint8
    label: int  # 0 upright, 1 turned 180


def photo_crops(photos) -> list[LineCrop]:
    import cv2

    from ._ocr_geometry import crop_quad, order_quad

    out = []
    for p in photos:
        for k, (q, ign) in enumerate(zip(p.quads, p.ignore)):
            if ign:
                continue
            c = crop_quad(p.image, order_quad(q))
            if min(c.shape[:2]) < 2:
                continue
            out.append(LineCrop(f"{p.name}#{k}", c, 0))
            out.append(LineCrop(f"{p.name}#{k}@180", cv2.rotate(c, cv2.ROTATE_180), 1))
    return out


@register_task("ocr-cls")
class OcrClsTask(Task):
    """PP-OCR angle classifier: resize to height 48 keeping the aspect ratio (width at most 192), BGR,
    (x/255 - 0.5)/0.5, zero padding on the right to 192. Output: probabilities of (0, 180)."""

    name = "ocr-cls"
    metric_name = "accuracy"
    higher_is_better = True
    default_budget = 0.01

    def __init__(self, height: int = 48, width: int = 192, labels: tuple[str, ...] = ("0", "180"),
                 eval_limit: int | None = None, calib_limit: int | None = None) -> None:
        self.height, self.width, self.labels = height, width, tuple(labels)
        self.eval_limit, self.calib_limit = eval_limit, calib_limit
        self.input_name = "x"

    def bind(self, model) -> "OcrClsTask":
        inits = {t.name for t in model.graph.initializer}
        inp = [i for i in model.graph.input if i.name not in inits][0]
        self.input_name = inp.name
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            self.height, self.width = dims[2], dims[3]
        return self

    def load(self, data: Path | None) -> tuple[list[LineCrop], list[LineCrop]]:
        from .ocr_det import load_photo_set

        calib_photos, eval_photos = load_photo_set(data)
        calib, ev = photo_crops(calib_photos), photo_crops(eval_photos)
        if not ev:
            raise DataError(f"{data or 'bundled photos'}: no labelled lines to classify in the evaluation photos. "
                            "Add photos with labelled (not ###) quads.")
        if self.calib_limit:
            calib = calib[: self.calib_limit]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        return calib, ev

    def feed(self, crop: np.ndarray) -> np.ndarray:
        from ._ocr_photo import cls_input as _cls_input

        return _cls_input(crop, self.height, self.width)

    def batches(self, samples: list[LineCrop], batch_size: int = 8) -> Iterator[Batch]:
        for s in range(0, len(samples), batch_size):
            idx = list(range(s, min(s + batch_size, len(samples))))
            yield Batch({self.input_name: np.stack([self.feed(samples[i].image) for i in idx])}, idx)

    def decode(self, outputs: list[np.ndarray]) -> list[tuple[int, float]]:
        probs = outputs[0].reshape(len(outputs[0]), -1)
        return [(int(np.argmax(p)), float(np.max(p))) for p in probs]

    def score(self, preds: list, samples: list[LineCrop], reference: list | None = None) -> dict[str, float]:
        acc = float(np.mean([p[0] == s.label for p, s in zip(preds, samples)])) if samples else 0.0
        return {"metric": acc}

    def fidelity(self, preds: list, ref_preds: list) -> dict[str, float]:
        agree = float(np.mean([p[0] == r[0] for p, r in zip(preds, ref_preds)])) if preds else 1.0
        return {"exact_match": agree, "metric_vs_fp32": agree}

    def bench_feeds(self, samples: list[LineCrop]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {self.input_name: rng.uniform(-1, 1, (8, 3, self.height, self.width)).astype(np.float32)}

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if metric >= BASELINE_ACC_LIMIT:
            return None
        return (f"baseline accuracy {metric:.3f} on {n_eval} line crops: the original classifier is at chance, so the "
                "data or the preprocessing does not match it. Check the model is a 0/180 text-direction classifier "
                f"with a 3x{self.height}x{self.width} input.")

    def deploy_spec(self) -> dict:
        return {
            "name": self.name,
            "preprocess": {
                "input": self.input_name, "layout": "NCHW", "channel_order": "BGR",
                "resize": {"height": self.height, "max_width": self.width, "keep_aspect_ratio": True,
                           "width": "min(max_width, ceil(height * w / h))", "interpolation": "linear"},
                "normalize": {"divide_by": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "formula": "(x / 255 - mean) / std, in float32"},
                "pad": {"side": "right", "value": 0.0, "width": self.width},
            },
            "postprocess": {"type": "argmax", "output": 0, "labels": list(self.labels),
                            "rule": "label = labels[argmax]; the pipeline turns a line by 180 degrees when that "
                                    "label is '180' with probability above 0.9"},
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "OcrClsTask":
        pre, post = spec["preprocess"], spec["postprocess"]
        t = cls(height=int(pre["resize"]["height"]), width=int(pre["resize"]["max_width"]),
                labels=tuple(post.get("labels", ("0", "180"))))
        t.input_name = pre["input"]
        return t

    def samples_from(self, inputs) -> list[LineCrop]:
        """Line images (paths or BGR uint8 arrays), one or a list."""
        from ._ocr_photo import load_image

        if isinstance(inputs, (str, Path, np.ndarray)):
            inputs = [inputs]
        out = []
        for i, x in enumerate(inputs):
            img, name = load_image(x, f"<array {i}>" if isinstance(x, np.ndarray) else "")
            out.append(LineCrop(name, img, 0))
        return out

    def predict(self, runner, inputs) -> list[tuple[str, float]]:
        """Per line image: (label, probability), e.g. ("180", 0.98)."""
        from .base import evaluate

        preds, _ = evaluate(runner, self, self.samples_from(inputs))
        return [(self.labels[k], p) for k, p in preds]
