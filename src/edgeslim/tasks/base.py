from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError


@dataclass
class Batch:
    """Model feeds for a group of samples and the sample indices they hold, in order."""

    feeds: dict[str, np.ndarray]
    index: list[int]


class Task:
    """Base class. A task owns data reading, feeding, decoding, the metric and fidelity to fp32."""

    name = "?"
    metric_name = "?"
    higher_is_better = True
    default_budget = 0.01

    def bind(self, model) -> "Task":
        """Take what the task needs from the model (input names, an OCR charset, a classifier's input size)."""
        raise NotImplementedError

    def load(self, data: Path | None) -> tuple[list, list]:
        """Return (calibration samples, evaluation samples); `data` None: the task's bundled data (`default_data`)."""
        raise NotImplementedError

    def default_data(self) -> Path | None:
        """Where the data `load(None)` reads lives (hashed into cache keys and recorded), or None when the task has
        no bundled data."""
        return None

    def batches(self, samples: list, batch_size: int = 8) -> Iterator[Batch]:
        raise NotImplementedError

    def decode(self, outputs: list[np.ndarray]) -> list[Any]:
        """One prediction per sample of the batch, from the model's outputs."""
        raise NotImplementedError

    def score(self, preds: list, samples: list, reference: list | None = None) -> dict[str, float]:
        """Metric (key `metric`) plus extras, against labels. `reference`: the original model's predictions on the
        same samples, for label-free tasks (None scores the original itself)."""
        raise NotImplementedError

    def fidelity(self, preds: list, ref_preds: list) -> dict[str, float]:
        """Agreement with the fp32 baseline's predictions: keys `exact_match` and `metric_vs_fp32`."""
        raise NotImplementedError

    def bench_feeds(self, samples: list) -> dict[str, np.ndarray]:
        """One typical input for latency measurement."""
        return next(iter(self.batches(samples[:1], 1))).feeds

    def drop(self, metric: float, baseline: float) -> float:
        """How much worse `metric` is than `baseline` (positive = worse)."""
        return baseline - metric if self.higher_is_better else metric - baseline

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        """A message when the original model's own metric says the data or the preprocessing is wrong, else None.

        A model scoring at chance on its own data is almost always fed wrongly (class order, normalisation,
        charset); comparing candidates against such a baseline measures nothing.
        """
        return None

    def extra_problem(self, metric_extra: dict[str, float]) -> str | None:
        """A reason to reject a candidate on a secondary criterion in its `score()` extras, else None."""
        return None

    # ---- deployment: the task's pre/post-processing as data, and back ----------------------------------------

    @classmethod
    def program_path(cls) -> Path:
        """The task's part of the delivered predict.py: a module defining `USAGE` and `main(run, D, ROOT, argv)` that
        preprocesses the inputs, runs the model and prints the decoded result with numpy and OpenCV alone
        (edgeslim/tasks/programs/<name>.py; see `edgeslim.deploy.snippet`)."""
        return Path(__file__).parent / "programs" / f"{cls.name.replace('-', '_')}.py"

    def deploy_spec(self) -> dict:
        """`{"name", "preprocess", "postprocess"}`: everything a deployment needs to feed the model and read its
        outputs as this task does, as JSON-able data (no model needed to rebuild the task from it)."""
        raise NotImplementedError

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "Task":
        """The task `deploy_spec()` describes: feeds and decodes exactly as the task that wrote it."""
        raise NotImplementedError

    def samples_from(self, inputs: Any) -> list:
        """Unlabelled samples from user inputs (what `predict` accepts)."""
        raise NotImplementedError

    def predict(self, runner, inputs: Any) -> Any:
        """Predictions for user inputs, computed as evaluation computes them."""
        preds, _ = evaluate(runner, self, self.samples_from(inputs))
        return preds


def evaluate(runner, task: Task, samples: list, batch_size: int = 8, progress: Callable[[int], None] | None = None) -> tuple[list, int]:
    """Predictions for every sample (in sample order) and how many non-finite output values were seen."""
    preds: list[Any] = [None] * len(samples)
    nonfinite = 0
    for b in task.batches(samples, batch_size):
        outs = runner.run(b.feeds)
        nonfinite += sum(int(np.size(o) - np.isfinite(o).sum()) for o in outs if np.issubdtype(np.asarray(o).dtype, np.floating))
        for i, p in zip(b.index, task.decode(outs)):
            preds[i] = p
        if progress:
            progress(len(b.index))
    return preds, nonfinite


def as_bgr(img: np.ndarray, name: str) -> np.ndarray:
    """An image array as BGR uint8 HxWx3 (gray HxW and BGRA HxWx4 are converted); anything else is a `DataError`
    naming `name`."""
    import cv2

    img = np.asarray(img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"{name}: an array of shape {list(img.shape)} and dtype {img.dtype}; expected a BGR uint8 "
                        "image HxWx3 (as cv2.imread returns). Convert it first.")
    return img


def read_image(path: Path, where: str = "") -> np.ndarray:
    """BGR uint8 image; a file that does not decode is a `DataError` naming it."""
    import cv2

    if not path.exists():
        raise DataError(f"{where}{path}: image file not found. Fix the file name or add the image.")
    buf = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise DataError(f"{where}{path}: cannot decode the image (not a PNG/JPEG/BMP or truncated). Replace or remove it.")
    return img


def images_from(inputs: Any) -> list[tuple[str, np.ndarray]]:
    """(name, BGR uint8 image) for each user input: an image path or an array (HxWx3 BGR; HxW gray and HxWx4 BGRA are
    converted), one or a list. Every image task's `samples_from` reads its inputs here, so all accept the same."""
    if isinstance(inputs, (str, Path, np.ndarray)):
        inputs = [inputs]
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, np.ndarray):
            out.append((f"<array {i}>", as_bgr(x, f"input {i}")))
        else:
            out.append((str(x), read_image(Path(x))))
    return out
