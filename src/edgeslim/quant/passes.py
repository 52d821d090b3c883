"""Exact-enough rewrites of a QDQ model that keep onnxruntime's int8 fusions.

`absorb_affine_into_quantize`: PP-LCNet-style networks (PP-OCRv4's backbone) apply a learnable *scalar* affine
(`a * x + b`, "LAB") after each activation, right before a zero-padded depthwise convolution. In fp32 edgeslim keeps
it as a BatchNormalization so onnxruntime's NCHWc layout absorbs it; in a QDQ model it is a float op between
`DequantizeLinear` and `QuantizeLinear` that breaks the int8 chain (measured on PP-OCRv4: 19 BatchNormalization
nodes, 8% of the int8 model's time, and the layout-sensitive op stops onnxruntime's NHWC transformer from
cancelling the Transposes around each QLinearConv, another 12%).

A quantizer after the affine computes `q = round((a x + b) / s) + z`. With `a > 0` that is
`round(x / (s / a) + b / s) + z`, i.e. a quantizer of `x` with scale `s / a` and zero point `z + b / s`. The zero
point must be an integer: rounding it moves every value by at most half a quantization step (reported as
`max_shift_steps`), which is below the quantization noise the int8 model already has. Zero padding stays exact: the
convolution pads with the zero point, which dequantizes to 0 in the affine's output domain, as the original pads the
affine's output with 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["absorb_affine_into_quantize"]


def _uniform_affine(bn: onnx.NodeProto, init: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """(a, b) if the BatchNormalization is the same scalar affine on every channel (in inference mode)."""
    if len(bn.input) < 5 or any(i not in init for i in bn.input[1:5]):
        return None
    gamma, beta, mean, var = (init[i].astype(np.float64).ravel() for i in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    if scale.size == 0 or np.ptp(scale) > 1e-6 * max(abs(scale[0]), 1e-12) or np.ptp(shift) > 1e-6 * max(abs(shift).max(), 1e-12):
        return None
    return float(scale[0]), float(shift[0])


def absorb_affine_into_quantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Fold scalar-affine BatchNormalizations whose only readers are per-tensor uint8/int8 QuantizeLinear nodes into
    those quantizers' scale and zero point. Returns the model and {"absorbed": n, "max_shift_steps": ...}."""
    g = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    new_inits: list[onnx.TensorProto] = []
    drop: set[int] = set()
    worst = 0.0
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or bn.output[0] in outputs:
            continue
        ab = _uniform_affine(bn, init)
        if ab is None or ab[0] <= 0:
            continue
        a, b = ab
        qs = readers.get(bn.output[0], [])
        if not qs or any(q.op_type != "QuantizeLinear" or len(q.input) < 3 for q in qs):
            continue
        plans = []
        for q in qs:
            s, z = init.get(q.input[1]), init.get(q.input[2])
            if s is None or z is None or s.size != 1 or z.size != 1:
                plans = []
                break
            s, zi = float(s.ravel()[0]), int(z.ravel()[0])
            info = np.iinfo(z.dtype)
            z_new = zi + b / s
            z_round = int(np.rint(z_new))
            if not info.min <= z_round <= info.max:
                plans = []
                break
            plans.append((q, np.array(s / a, np.float32).reshape(init[q.input[1]].shape),
                          np.array(z_round, z.dtype).reshape(init[q.input[2]].shape), abs(z_new - z_round)))
        if not plans:
            continue
        for q, s_new, z_new, shift in plans:
            worst = max(worst, shift)
            sn, zn = q.input[1] + "_absorb_" + bn.name, q.input[2] + "_absorb_" + bn.name
            new_inits += [numpy_helper.from_array(s_new, sn), numpy_helper.from_array(z_new, zn)]
            q.input[0], q.input[1], q.input[2] = bn.input[0], sn, zn
        drop.add(id(bn))
    if not drop:
        return model, {"absorbed": 0}
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    unused = [t for t in g.initializer if t.name not in used and t.name not in {i.name for i in g.input}]
    for t in unused:
        g.initializer.remove(t)
    return model, {"absorbed": len(drop), "max_shift_steps": round(worst, 3)}
