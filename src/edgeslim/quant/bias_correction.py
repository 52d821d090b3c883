"""Empirical bias correction of a QDQ model: give every quantized convolution the per-channel output mean of fp32.

Quantization noise is not zero-mean per channel: rounded weights shift each output channel's expectation
(`E[(W_q - W) x]`, Nagel et al. 2019), and quantized inputs from earlier layers add their own shifts, which
accumulate through a network. A shifted channel mean moves every value of the channel, so the next quantizer and
activation see a biased input. The correction measures, on calibration samples, the mean of each convolution's
output per channel in the fp32 model and in the quantized one, and adds the difference to the convolution's int32
bias (in units of its bias scale, so the graph and its int8 fusions are unchanged). Layers are corrected in graph
order, each measured with the earlier ones already corrected.

Why our own: onnxruntime's quantizer has no bias correction; NNCF's fast bias correction works on its own graph
representation and weights kept in float (measured on PP-OCRv4: its model stores fp32 weights and runs slower than
fp32 on onnxruntime).

References
----------
- Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019.
- Finkelstein et al., "Fighting Quantization Bias With Bias", 2019 (empirical, data-driven correction).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["correct_bias", "conv_bias_sites"]


def conv_bias_sites(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Quantized convolutions with an int32 bias: `{conv output: (bias int32 initializer, bias scale initializer)}`."""
    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    sites = {}
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 3 or not n.input[2]:
            continue
        dq = producer.get(n.input[2])
        w = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or w is None or w.op_type != "DequantizeLinear":
            continue
        q, scale = dq.input[0], dq.input[1]
        if q in init and scale in init and init[q].data_type == onnx.TensorProto.INT32:
            sites[n.output[0]] = (q, scale)
    return sites


def _channel_means(model: onnx.ModelProto, names: list[str], feeds: Iterable[dict[str, np.ndarray]],
                   threads: int) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each named tensor over every sample and position."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for f in feeds:
        outs = sess.run(names, f)
        for name, y in zip(names, outs):
            y = np.asarray(y, np.float64)
            axes = (0,) + tuple(range(2, y.ndim))
            s = y.sum(axis=axes)
            sums[name] = sums.get(name, 0) + s
            counts[name] = counts.get(name, 0) + y.size // y.shape[1]
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def correct_bias(qmodel: onnx.ModelProto, fp32_model: onnx.ModelProto, calib_feeds, *, max_batches: int = 4,
                 threads: int = 2) -> tuple[onnx.ModelProto, dict]:
    """Return a copy of `qmodel` with each quantized convolution's int32 bias shifted so its per-channel output mean
    on calibration samples matches `fp32_model`'s. `calib_feeds()` yields feed dicts (any shapes); the first
    `max_batches` are used (channel means settle fast: every position of a sample counts).

    Convolutions are corrected one at a time in graph order, each measured with the earlier ones already corrected:
    correcting all at once from one measurement over-corrects, because a later layer's shift is partly the earlier
    layers' (measured on PP-OCRv4: the mean channel shift grew 0.055 -> 0.25 -> 0.76 over two simultaneous passes,
    CER 0.067 -> 1.0). Convolutions are matched by output tensor name (onnxruntime's QDQ quantizer keeps them). Info:
    the number corrected and the mean absolute channel-mean shift (output units) before and after.

    >>> qm, info = correct_bias(qdq_model, fp32_model, lambda: iter(feeds))  # doctest: +SKIP
    """
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    fp32_outputs = {o for n in fp32_model.graph.node for o in n.output}
    sites = {k: v for k, v in conv_bias_sites(m).items() if k in fp32_outputs}
    if not sites:
        return m, {"corrected": 0}
    feeds = [f for _, f in zip(range(max_batches), calib_feeds())]
    names = list(sites)  # graph order: an ONNX graph is topologically sorted
    ref = _channel_means(fp32_model, names, feeds, threads)
    init = {t.name: t for t in m.graph.initializer}

    def shift(means: dict[str, np.ndarray]) -> float:
        return float(np.mean([np.abs(ref[k] - means[k]).mean() for k in means]))

    before = None
    for i, name in enumerate(names):
        cur = _channel_means(m, names[i:], feeds, threads)
        if before is None:
            before = shift(cur)
        q_name, s_name = sites[name]
        q = numpy_helper.to_array(init[q_name]).astype(np.int64)
        scale = numpy_helper.to_array(init[s_name]).astype(np.float64)
        step = np.rint((ref[name] - cur[name]) / np.where(scale > 0, scale, 1.0)).astype(np.int64)
        new = np.clip(q + step.reshape(q.shape), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        init[q_name].CopyFrom(numpy_helper.from_array(new, q_name))
    after = shift(_channel_means(m, names, feeds, threads))
    return m, {"corrected": len(names), "samples_batches": len(feeds),
               "mean_abs_channel_shift": {"before": round(before, 6), "after": round(after, 6)}}
