import collections

import numpy as np
import onnx

from edgeslim.graph import (constants_to_initializers, fold_affine_into_pointwise_conv, fold_conv_affine, fuse_hardswish, opset_of,
                            simplify, upgrade_opset)
from edgeslim.model import load_onnx

from conftest import run_ort, tiny_conv_model


def _x(shape=(2, 3, 8, 8), seed=1):
    return np.random.default_rng(seed).normal(0, 1.5, shape).astype(np.float32)


def test_each_rewrite_is_exact_on_tiny_model():
    m = tiny_conv_model(constants_as_nodes=True)
    x = _x()
    ref = run_ort(m, {"x": x})[0]
    m1 = constants_to_initializers(m)
    assert not [n for n in m1.graph.node if n.op_type == "Constant"]
    m2 = upgrade_opset(m1, 17)
    assert opset_of(m2) == 17
    m3, n_aff = fold_conv_affine(m2)
    assert n_aff == 2  # Mul(s), Add(c) folded into conv1
    m4, n_hs = fuse_hardswish(m3)
    assert n_hs == 1
    m5, n_pw = fold_affine_into_pointwise_conv(m4)
    assert n_pw == 2  # a*y+b (Mul and Add) folded into the unpadded conv2
    ops = collections.Counter(n.op_type for n in m5.graph.node)
    assert ops == {"Conv": 2, "HardSwish": 1, "GlobalAveragePool": 1, "Flatten": 1, "MatMul": 1}
    for mm in (m1, m2, m3, m4, m5):
        onnx.checker.check_model(mm)
        np.testing.assert_allclose(run_ort(mm, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


def test_only_the_scale_folds_into_a_padded_conv():
    # conv(a*y + b) != a*conv(y) + b*sum(W) at the border when the conv zero-pads; a*(y + b/a) keeps it exact
    from onnx import helper

    m = tiny_conv_model()
    for n in m.graph.node:
        if n.name == "conv2":
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("kernel_shape", [1, 1]), helper.make_attribute("pads", [1, 1, 1, 1])])
    x = _x()
    ref = run_ort(m, {"x": x})[0]
    m2, n_pw = fold_affine_into_pointwise_conv(constants_to_initializers(upgrade_opset(m, 17)))
    assert n_pw == 1
    ops = collections.Counter(n.op_type for n in m2.graph.node)
    assert ops["Add"] == 2 and ops["Mul"] == 2 and ops["BatchNormalization"] == 1  # a*y+b -> BN(y) + b/a, a in W
    np.testing.assert_allclose(run_ort(m2, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


def test_simplify_default_model_exact(default_model_path):
    m = load_onnx(default_model_path)
    s, info = simplify(m)
    assert info["hardswish_fused"] == 28
    assert info["conv_affine_ops_folded"] >= 50
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)
    a, b = run_ort(m, {"x": x})[0], run_ort(s, {"x": x})[0]
    assert np.abs(a - b).max() < 1e-4
    assert len(s.graph.node) < len(m.graph.node) - 400
