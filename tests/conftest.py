from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
def _shared() -> Path:
    """The shared models and data: $EDGESLIM_SHARED, else ../shared beside the checkout, else the workplace's copy
    (a clean clone made elsewhere, e.g. by CI, still finds it)."""
    for p in (os.environ.get("EDGESLIM_SHARED"), ROOT.parent / "shared", "/work/shared"):
        if p and (Path(p) / "models").is_dir():
            return Path(p)
    return ROOT.parent / "shared"


SHARED = _shared()


def tiny_conv_model(path: Path | None = None, *, constants_as_nodes: bool = False, opset: int = 12,
                    seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv3x3(3->4, pad 1) -> Mul(s) -> Add(c) -> HardSwish (decomposed, 4 ops) -> Mul(a) -> Add(b)
    -> Conv1x1(4->6) -> GlobalAveragePool -> Flatten -> MatMul(6x5) -> y[1,5]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 6).astype(np.float32)
    wm = rng.normal(0, 0.5, (6, 5)).astype(np.float32)
    consts = {
        "w1": w1, "b1": b1, "w2": w2, "b2": b2, "wm": wm,
        "s": np.array([1.5], np.float32), "c": np.array([0.2], np.float32), "three": np.array([3.0], np.float32),
        "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32), "sixd": np.array([6.0], np.float32),
        "a": np.array([0.8], np.float32), "b": np.array([0.1], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Mul", ["c1", "s"], ["m1"], name="lab_mul"),
        helper.make_node("Add", ["m1", "c"], ["a1"], name="lab_add"),
        helper.make_node("Add", ["a1", "three"], ["h1"], name="hs_add"),
        helper.make_node("Clip", ["h1", "zero", "six"], ["h2"], name="hs_clip"),
        helper.make_node("Mul", ["a1", "h2"], ["h3"], name="hs_mul"),
        helper.make_node("Div", ["h3", "sixd"], ["h4"], name="hs_div"),
        helper.make_node("Mul", ["h4", "a"], ["p1"], name="post_mul"),
        helper.make_node("Add", ["p1", "b"], ["p2"], name="post_add"),
        helper.make_node("Conv", ["p2", "w2", "b2"], ["c2"], kernel_shape=[1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wm"], ["y"], name="fc"),
    ]
    if constants_as_nodes:
        nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k), name="const_" + k)
                 for k, v in consts.items()] + nodes
        inits = []
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    if path is not None:
        onnx.save(m, str(path))
    return m


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.onnx"
    tiny_conv_model(p)
    return p


@pytest.fixture(scope="session")
def default_model_path():
    from edgeslim.zoo import resolve

    return resolve("ppocrv4-rec")
