"""QAT: LSQ fake quantization (values, STE and step-size gradients) and ONNX QDQ export run by ORT."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeslim.errors import InvalidParameterError, NotFittedError, RecipeError
from edgeslim.research.train.qat import LsqQuantizer, QatConfig, QConv2d, QLinear, export_mode, export_qdq, prepare_qat


def test_lsq_values_and_gradients_match_the_paper():
    q = LsqQuantizer(bits=4, signed=True)  # qmin -8, qmax 7
    q.initialized_.fill_(True)
    with torch.no_grad():
        q.scale.fill_(0.5)
    x = torch.tensor([-10.0, -1.3, 0.2, 0.74, 3.6], requires_grad=True)
    y = q(x)
    v = x.detach().numpy() / 0.5
    np.testing.assert_allclose(y.detach().numpy(), np.clip(np.round(v), -8, 7) * 0.5)
    y.sum().backward()
    inside = (v >= -8) & (v <= 7)
    np.testing.assert_array_equal(x.grad.numpy(), inside.astype(np.float32))  # STE, clipped outside
    # d y / d s = round(v) - v inside, qmin / qmax outside; times LSQ's 1/sqrt(N * qmax)
    ds = np.where(inside, np.round(v) - v, np.clip(v, -8, 7)).sum() / math.sqrt(5 * 7)
    np.testing.assert_allclose(q.scale.grad.numpy(), [ds], rtol=1e-5)


def test_per_channel_init_and_export_mode_equivalence():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 5, 5) * 4.0 ** torch.arange(6.0).view(6, 1, 1, 1)
    q = LsqQuantizer(bits=8, axis=0, channels=6)
    with pytest.raises(NotFittedError):
        q.eval()(w)
    q.train()
    y_train = q(w)
    assert q.scale.shape == (6,) and bool(q.initialized_)
    assert torch.all(q.scale[1:] > q.scale[:-1])  # per-channel steps follow the channel magnitudes
    with export_mode(), torch.no_grad():
        y_export = q(w)
    torch.testing.assert_close(y_export, y_train.detach())


def test_prepare_swaps_layers_and_keeps_weights():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    w0 = model[0].weight.detach().clone()
    prepare_qat(model, QatConfig(skip=("3",)))
    assert isinstance(model[0], QConv2d) and type(model[3]) is nn.Linear
    torch.testing.assert_close(model[0].weight, w0)
    with pytest.raises(RecipeError):
        prepare_qat(nn.Sequential(nn.ReLU()))
    with pytest.raises(InvalidParameterError):
        QatConfig(weight_bits=16)


def test_export_qdq_runs_in_onnxruntime_and_matches_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    prepare_qat(model)
    assert isinstance(model[6], QLinear)
    x = torch.randn(16, 1, 14, 14)
    y = torch.randint(0, 5, (16,))
    with pytest.raises(NotFittedError):
        export_qdq(model, x[:1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first  # fake-quantized training still learns
    model.eval()
    proto = export_qdq(model, x[:1])
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 6 and ops.count("DequantizeLinear") >= 6
    inits = {i.name: i for i in proto.graph.initializer}
    per_channel = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in inits and len(onnx.numpy_helper.to_array(inits[n.input[1]]).shape) == 1
                   and onnx.numpy_helper.to_array(inits[n.input[1]]).shape[0] == 8]
    assert per_channel, "weights should carry per-channel scales"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]  # dynamic batch
    with torch.no_grad():
        want = model(x).numpy()
    # same grid; ORT's int8 kernels may differ by one step in a few places
    assert np.median(np.abs(got - want)) < 1e-3
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
