import pytest

from edgeslim.errors import ModelLoadError, ShapeError
from edgeslim.model import inspect_model, load_onnx

from conftest import tiny_conv_model


@pytest.mark.parametrize("as_nodes", [False, True])
def test_inspect_counts_by_hand(tmp_path, as_nodes):
    p = tmp_path / "m.onnx"
    tiny_conv_model(p, constants_as_nodes=as_nodes)
    info = inspect_model(p, (1, 3, 8, 8))
    # w1 108 + b1 4 + w2 24 + b2 6 + wm 30 + 8 scalars (s c three zero six sixd a b)
    assert info.params == 180
    # conv1: 4*8*8 outputs x 27; conv2: 6*8*8 x 4; matmul: 5 x 6
    assert info.macs == 4 * 64 * 27 + 6 * 64 * 4 + 5 * 6
    assert info.census["Conv"] == 2 and info.census["Mul"] == 3 and info.census.get("Constant", 0) == (13 if as_nodes else 0)
    assert info.opset == 12
    assert info.inputs[0].dynamic == [0]
    assert info.size_bytes == p.stat().st_size


def test_inspect_default_model(default_model_path):
    info = inspect_model(default_model_path, (1, 3, 48, 320))
    assert info.census["Constant"] == 420 and info.census["Conv"] == 38
    assert 2_500_000 < info.params < 3_000_000  # weights are Constant nodes: they must count
    assert 0.6e9 < info.macs < 0.8e9
    assert info.inputs[0].dynamic == [0, 2, 3]


def test_bad_shape_is_one_clear_error(tiny):
    with pytest.raises(ShapeError, match="fixes dim 1 to 3"):
        inspect_model(tiny, (1, 4, 8, 8))
    with pytest.raises(ShapeError, match="rank"):
        inspect_model(tiny, (1, 3, 8))


def test_not_onnx_and_truncated(tmp_path, tiny):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello, I am not a model")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load_onnx(bad)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="bad.onnx|trunc.onnx"):
        load_onnx(trunc)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_onnx(empty)
