"""Any model, no labels: inputs from `.npz` files, metric = agreement with the fp32 model's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if not np.isfinite(na) or not np.isfinite(nb) or na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


@register_task("raw")
class RawTask(Task):
    """Data: an `.npz` file or a folder of them. Each array is named after a model input; its first axis
    indexes samples (each sample is fed with a batch dim of 1). The metric is the mean cosine similarity of the
    first output with the fp32 baseline's (1.0 for the baseline); argmax agreement is reported beside it.
    """

    name = "raw"
    metric_name = "cosine_vs_fp32"
    higher_is_better = True
    default_budget = 0.01

    def __init__(self, calib_size: int = 32, eval_limit: int | None = None) -> None:
        self.calib_size, self.eval_limit = calib_size, eval_limit
        self.reference: list[np.ndarray] | None = None
        self.input_names: list[str] = []

    def bind(self, model) -> "RawTask":
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        return self

    def load(self, data: Path | None, input_names=(), input_shapes=()) -> tuple[list, list]:
        if data is None:
            raise DataError("the raw task needs --data FILE.npz (or a folder of .npz) with one array per model input.")
        p = Path(data)
        files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        if not p.exists() or not files:
            raise DataError(f"{p}: no .npz input found. Pass an .npz file (or folder of them) with one array per input.")
        samples: list[dict[str, np.ndarray]] = []
        for f in files:
            try:
                z = np.load(f)
                arrays = {k: z[k] for k in z.files}
            except Exception as e:
                raise DataError(f"{f}: cannot read as .npz ({type(e).__name__}). Save inputs with numpy.savez.") from None
            missing = [n for n in self.input_names if n not in arrays]
            if missing:
                raise DataError(f"{f}: no array named {missing[0]!r} (has {sorted(arrays)}). Name arrays after the model inputs.")
            n = {arrays[k].shape[0] for k in self.input_names}
            if len(n) != 1:
                raise DataError(f"{f}: inputs hold different sample counts {sorted(n)}. Give every input the same first axis.")
            for i in range(n.pop()):
                samples.append({k: arrays[k][i : i + 1] for k in self.input_names})
        if len(samples) < 2:
            raise DataError(f"{p}: {len(samples)} sample(s). Provide at least 2 (some calibrate, the rest evaluate).")
        k = min(self.calib_size, len(samples) // 2)
        ev = samples[k:]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        return samples[:k], ev

    def batches(self, samples: list[dict], batch_size: int = 8) -> Iterator[Batch]:
        for i, s in enumerate(samples):
            yield Batch(s, [i])

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(outputs[0])]

    def score(self, preds: list[np.ndarray], samples: list) -> dict[str, float]:
        if self.reference is None:  # the baseline itself
            return {"metric": 1.0, "argmax_agree": 1.0}
        f = self.fidelity(preds, self.reference)
        return {"metric": 1.0 - f["metric_vs_fp32"], "argmax_agree": f["exact_match"]}

    def fidelity(self, preds: list[np.ndarray], ref_preds: list[np.ndarray]) -> dict[str, float]:
        cos = float(np.mean([cosine(p, r) for p, r in zip(preds, ref_preds)]))
        agree = float(np.mean([np.array_equal(p.reshape(p.shape[0], -1).argmax(1), r.reshape(r.shape[0], -1).argmax(1))
                               for p, r in zip(preds, ref_preds)]))
        return {"exact_match": agree, "metric_vs_fp32": 1.0 - cos}
