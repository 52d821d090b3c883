"""Any model, no labels: inputs from `.npz` files, metric = agreement with the fp32 model's outputs.

The metric is dataset-level, over every output of every sample at once: `1 - ||y - y_fp32|| / ||y_fp32||` (relative
L2 error of the concatenated outputs, clipped to [0, 1]). A per-sample cosine is undefined where the fp32 output is
all zeros (a detector on an empty image), which made exact conversions score below 1; here 0/0 counts as agreement
and a sample with zero output weighs only what its error weighs. Beside it, `max_abs_err` (the largest absolute
error of each output, relative to the fp32 output's dynamic range, worst over outputs) catches a small output
(scores next to pixel boxes) going wrong while the large one dominates the L2 norm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task

__all__ = ["RawTask", "agreement", "rel_l2_error", "max_abs_error", "cosine"]

# Largest tolerated max-abs error, as a share of an output's fp32 dynamic range (int8 stays well below: a few steps
# of 1/255 of the range).
MAX_ABS_BUDGET = 0.1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if not np.isfinite(na) or not np.isfinite(nb) or na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def _flat(preds: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).ravel() for p in preds for o in p]) if preds else np.zeros(0)


def rel_l2_error(preds: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> float:
    """||y - r|| / ||r|| over all outputs of all samples; 0/0 = 0 (agreement); inf when r = 0 but y != 0; NaN in y
    (or a shape mismatch) = inf."""
    if any(len(p) != len(r) or any(np.shape(a) != np.shape(b) for a, b in zip(p, r)) for p, r in zip(preds, ref)):
        return float("inf")
    y, r = _flat(preds), _flat(ref)
    err = np.linalg.norm(y - r)
    if not np.isfinite(err):
        return float("inf")
    norm = np.linalg.norm(r)
    if norm == 0:
        return 0.0 if err == 0 else float("inf")
    return float(err / norm)


def agreement(preds: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> float:
    """1 - relative L2 error, clipped to [0, 1] (1 = identical outputs)."""
    return float(max(0.0, 1.0 - rel_l2_error(preds, ref)))


def max_abs_error(preds: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> float:
    """Worst over outputs of max |y - r| / (max r - min r), each output's range taken over all samples; an output
    whose fp32 values are constant is measured in absolute units. Non-finite or mismatched outputs give inf."""
    if not ref:
        return 0.0
    worst = 0.0
    for j in range(len(ref[0])):
        try:
            y = np.concatenate([np.asarray(p[j], np.float64).ravel() for p in preds])
            r = np.concatenate([np.asarray(q[j], np.float64).ravel() for q in ref])
        except (IndexError, ValueError):
            return float("inf")
        if y.shape != r.shape:
            return float("inf")
        if r.size == 0:
            continue
        span = float(r.max() - r.min())
        e = float(np.abs(y - r).max())
        if not np.isfinite(e):
            return float("inf")
        worst = max(worst, e / span if span > 0 else e)
    return worst


def _argmax_agree(p: list[np.ndarray], r: list[np.ndarray]) -> bool:
    for a, b in zip(p, r):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.size and not np.array_equal(a.reshape(a.shape[0], -1).argmax(1), b.reshape(b.shape[0], -1).argmax(1)):
            return False
    return True


@register_task("raw")
class RawTask(Task):
    """Data: an `.npz` file or a folder of them. Each array is named after a model input; its first axis
    indexes samples (each sample is fed with a batch dim of 1). The metric (`agreement_l2`) is 1 minus the relative
    L2 error of all outputs against the fp32 baseline's (1.0 for the baseline); extras: `max_abs_err` (relative to
    each output's fp32 range) and `argmax_agree` (share of samples whose every output has the same argmax per row).
    """

    name = "raw"
    metric_name = "agreement_l2"
    higher_is_better = True
    # 5% relative L2 error (SQNR 26 dB): fp16/bf16 stay far below it, a good int8 conversion below it.
    default_budget = 0.05

    def __init__(self, calib_size: int = 32, eval_limit: int | None = None) -> None:
        self.calib_size, self.eval_limit = calib_size, eval_limit
        self.input_names: list[str] = []

    def bind(self, model) -> "RawTask":
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        return self

    def load(self, data: Path | None) -> tuple[list, list]:
        if data is None:
            raise DataError("the raw task needs --data FILE.npz (or a folder of .npz) with one array per model input.")
        p = Path(data)
        files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        if not p.exists() or not files:
            raise DataError(f"{p}: no .npz input found. Pass an .npz file (or folder of them) with one array per input.")
        samples: list[dict[str, np.ndarray]] = []
        for f in files:
            arrays = self._read_npz(f)
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

    def _read_npz(self, f: Path) -> dict[str, np.ndarray]:
        try:
            z = np.load(f)
            arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise DataError(f"{f}: cannot read as .npz ({type(e).__name__}). Save inputs with numpy.savez.") from None
        missing = [n for n in self.input_names if n not in arrays]
        if missing:
            raise DataError(f"{f}: no array named {missing[0]!r} (has {sorted(arrays)}). Name arrays after the model inputs.")
        return arrays

    def batches(self, samples: list[dict], batch_size: int = 8) -> Iterator[Batch]:
        for i, s in enumerate(samples):
            yield Batch(s, [i])

    def decode(self, outputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The batch holds one sample: its prediction is the list of every output."""
        return [[np.asarray(o) for o in outputs]]

    def score(self, preds: list[list[np.ndarray]], samples: list, reference: list | None = None) -> dict[str, float]:
        if reference is None:  # the original itself
            return {"metric": 1.0, "max_abs_err": 0.0, "argmax_agree": 1.0}
        f = self.fidelity(preds, reference)
        return {"metric": agreement(preds, reference), "max_abs_err": max_abs_error(preds, reference),
                "argmax_agree": f["exact_match"]}

    def fidelity(self, preds: list[list[np.ndarray]], ref_preds: list[list[np.ndarray]]) -> dict[str, float]:
        agree = float(np.mean([_argmax_agree(p, r) for p, r in zip(preds, ref_preds)])) if preds else 1.0
        return {"exact_match": agree, "metric_vs_fp32": 1.0 - agreement(preds, ref_preds)}

    def extra_problem(self, metric_extra: dict[str, float]) -> str | None:
        e = metric_extra.get("max_abs_err")
        if e is None or e <= MAX_ABS_BUDGET:
            return None
        return (f"max abs error {e:.3g} of an output's fp32 range (limit {MAX_ABS_BUDGET}): one output drifts even "
                "where the L2 agreement looks fine")

    # ---- deployment -----------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        return {"name": self.name, "preprocess": None, "postprocess": None, "inputs": list(self.input_names)}

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "RawTask":
        t = cls()
        t.input_names = list(spec.get("inputs") or [])
        return t

    def samples_from(self, inputs) -> list[dict[str, np.ndarray]]:
        """An `.npz` path or a dict of arrays named after the model inputs (or a list of one such): one sample
        holding the whole arrays."""
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise DataError(f"raw inputs: got {len(inputs)} items; pass one .npz (several samples go along the "
                                "first axis of its arrays).")
            inputs = inputs[0]
        if isinstance(inputs, (str, Path)):
            return [self._read_npz(Path(inputs))]
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise DataError(f"no array named {missing[0]!r} among the inputs {sorted(inputs)}. "
                                "Name arrays after the model inputs.")
            return [{k: np.asarray(v) for k, v in inputs.items()}]
        raise DataError(f"raw inputs are an .npz path or a dict of arrays, not {type(inputs).__name__}.")

    def predict(self, runner, inputs) -> dict[str, np.ndarray]:
        """The model's outputs by name, stacked over the samples of the first axis (each fed with a batch dim of 1,
        as `--data` feeds them in evaluation)."""
        s = self.samples_from(inputs)[0]
        names = self.input_names or list(s)
        n = {int(np.shape(s[k])[0]) for k in names}
        if len(n) != 1:
            raise DataError(f"raw inputs hold different sample counts {sorted(n)}. Give every input the same first axis.")
        outs: list[list[np.ndarray]] = []
        for i in range(n.pop()):
            try:
                outs.append(runner.run({k: s[k][i : i + 1] for k in names}))
            except Exception as e:
                raise DataError(f"sample {i}: the model rejects the input ({str(e).strip().splitlines()[0][:160]}). "
                                "Check the arrays' shapes and dtypes.") from None
        return {name: np.concatenate([o[j] for o in outs]) for j, name in enumerate(runner.output_names)}
