"""Activation-range calibrators that stream over the calibration set with bounded memory.

Why our own: onnxruntime's calibrators keep every intermediate output of every sample in memory and stack them,
so the percentile/entropy calibrators crash on variable-width inputs ("inhomogeneous shape") and grow without
bound on long calibration sets. Here each tensor keeps a running min/max and a fixed-size histogram (2048 bins
over a symmetric range that doubles when data exceeds it; doubling re-bins exactly by merging bin pairs), so
memory is O(tensors x bins) whatever the number or shape of the samples.

Range pickers (`Calibrator.range`), all on that histogram:
- `minmax`: the observed range.
- `percentile`: clip each tail at the given percentile (default 99.99).
- `entropy`: the threshold minimising KL(P || Q) between the clipped distribution and its 128-level
  quantization (Migacz, "8-bit Inference with TensorRT", GTC 2017).
- `mse`: the threshold minimising the expected squared error of uint8 quantization (clipping error outside,
  step^2/12 inside).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import NotFittedError
from ..registry import Registry

__all__ = ["StreamingHistogram", "Calibrator", "CALIBRATORS", "register_calibrator", "get_calibrator", "collect_ranges"]

CALIBRATORS: Registry[type["Calibrator"]] = Registry("calibrator")
register_calibrator = CALIBRATORS.register


class StreamingHistogram:
    """Histogram over [-A, A] with a fixed bin count; A doubles (pairs of bins merge) to admit larger values."""

    def __init__(self, bins: int = 2048) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.bins = bins
        self.counts = np.zeros(bins, np.float64)
        self.amax = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.n = 0

    def update(self, x: np.ndarray, max_values: int = 1 << 16) -> None:
        x = np.asarray(x, np.float32).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # exact extremes from every value
        if x.size > max_values:  # the histogram's shape from an evenly strided subsample bounds the cost per tensor
            x = x[:: x.size // max_values]
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        need = max(abs(lo), abs(hi))
        if self.amax == 0.0:
            self.amax = need if need > 0 else 1e-8
        while need > self.amax:
            # double the range: old bin j lands in new bin bins/4 + j//2
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros(self.bins, np.float64)
            self.counts[self.bins // 4 : self.bins // 4 + self.bins // 2] = merged
            self.amax *= 2.0
        h, _ = np.histogram(x, bins=self.bins, range=(-self.amax, self.amax))
        self.counts += h
        self.n += x.size

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.amax, self.amax, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


class Calibrator:
    """Collects statistics tensor by tensor; `range(name)` returns the (low, high) to quantize with."""

    def __init__(self) -> None:
        self.hists_: dict[str, StreamingHistogram] = {}

    def update(self, name: str, x: np.ndarray) -> None:
        self.hists_.setdefault(name, StreamingHistogram()).update(x)

    def _hist(self, name: str) -> StreamingHistogram:
        h = self.hists_.get(name)
        if h is None or h.n == 0:
            raise NotFittedError(f"calibrator saw no data for tensor {name!r}; run update() on calibration data first.")
        return h

    def range(self, name: str) -> tuple[float, float]:
        raise NotImplementedError

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {k: self.range(k) for k, h in self.hists_.items() if h.n}


def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    # Quantized ranges must contain 0 exactly (zero padding, ReLU outputs).
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    return float(lo), float(hi)


def _clip_to(h: StreamingHistogram, t: float) -> tuple[float, float]:
    return _with_zero(max(h.min, -t), min(h.max, t))


@register_calibrator("minmax")
class MinMaxCalibrator(Calibrator):
    def range(self, name: str) -> tuple[float, float]:
        h = self._hist(name)
        return _with_zero(h.min, h.max)


@register_calibrator("percentile")
class PercentileCalibrator(Calibrator):
    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        self.percentile = percentile

    def range(self, name: str) -> tuple[float, float]:
        h = self._hist(name)
        cdf = np.cumsum(h.counts) / h.counts.sum()
        tail = (100.0 - self.percentile) / 100.0
        e = h.edges
        lo = e[int(np.searchsorted(cdf, tail, side="left"))]
        hi = e[min(int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1, h.bins)]
        return _with_zero(max(h.min, lo), min(h.max, hi))


def _abs_hist(h: StreamingHistogram) -> np.ndarray:
    half = h.bins // 2
    return h.counts[half:] + h.counts[:half][::-1]


@register_calibrator("entropy")
class EntropyCalibrator(Calibrator):
    def __init__(self, levels: int = 128) -> None:
        super().__init__()
        self.levels = levels

    def range(self, name: str) -> tuple[float, float]:
        h = self._hist(name)
        p_full = _abs_hist(h)
        # Exact zeros (zero padding, ReLU) pile into the first bin; that spike tells nothing about where to clip
        # and drags KL toward tiny thresholds, so it is left out of the divergence.
        p_full[0] = 0.0
        nb, q = len(p_full), self.levels
        width = h.amax / nb
        best_t, best_kl = nb, np.inf
        for i in range(q, nb + 1, max(1, (nb - q) // 256)):
            p = p_full[:i].copy()
            p[i - 1] += p_full[i:].sum()  # clipped mass goes to the last bin
            nz = p_full[:i] > 0
            # quantize bins [0, i) into q levels, spreading each level's mass over its non-empty bins
            idx = (np.arange(i) * q) // i
            mass = np.bincount(idx, weights=p_full[:i], minlength=q)
            cnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=q)
            qd = np.where(nz, mass[idx] / np.maximum(cnt[idx], 1), 0.0)
            ps, qs = p.sum(), qd.sum()
            if ps <= 0 or qs <= 0:
                continue
            pn, qn = p / ps, qd / qs
            m = pn > 0
            kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
            if kl < best_kl:
                best_kl, best_t = kl, i
        return _clip_to(h, best_t * width)


@register_calibrator("mse")
class MseCalibrator(Calibrator):
    def __init__(self, candidates: int = 128, levels: int = 255) -> None:
        super().__init__()
        self.candidates, self.levels = candidates, levels

    def range(self, name: str) -> tuple[float, float]:
        h = self._hist(name)
        c, n = h.centers, h.counts
        amax = max(abs(h.min), abs(h.max))
        ts = amax * np.arange(1, self.candidates + 1) / self.candidates
        lo = np.maximum(h.min, -ts)[:, None]
        hi = np.minimum(h.max, ts)[:, None]
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        step = (hi - lo) / self.levels
        err = np.where(c < lo, (c - lo) ** 2, np.where(c > hi, (c - hi) ** 2, step**2 / 12.0))
        best = int(np.argmin((err * n).sum(axis=1)))
        return _with_zero(float(lo[best, 0]), float(hi[best, 0]))


def get_calibrator(name: str) -> Calibrator:
    return CALIBRATORS.get(name)()


def collect_ranges(model, feeds: Iterable[dict[str, np.ndarray]], calibrator: Calibrator,
                   tensor_names: list[str] | None = None, progress=None) -> dict[str, tuple[float, float]]:
    """Stream `feeds` (one dict per calibration batch, any shapes) through the model; ranges of the tensors."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    float_types = {onnx.TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    names = tensor_names or [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output if o]
    names = [t for t in dict.fromkeys(names) if types.get(t, onnx.TensorProto.FLOAT) in float_types]
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have and t not in {i.name for i in m.graph.input}:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    wanted = set(names)
    for f in feeds:
        for k, v in f.items():
            if k in wanted:
                calibrator.update(k, v)
        for name, val in zip(out_names, sess.run(None, f)):
            if name in wanted and np.issubdtype(np.asarray(val).dtype, np.floating):
                calibrator.update(name, val)
        if progress:
            progress(1)
    return calibrator.ranges()
