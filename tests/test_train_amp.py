"""AMP: op lists decide precision; the dynamic loss scaler's state machine; skipped inf steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslim.errors import InvalidParameterError
from edgeslim.train.amp import AmpConfig, DynamicLossScaler, amp_step, autocast, grads_finite


def test_white_black_gray_precision():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    with autocast(AmpConfig()):
        y = nn.functional.conv2d(x, w)  # white
        assert y.dtype == torch.bfloat16
        r = torch.relu(y)  # gray: follows its input
        assert r.dtype == torch.bfloat16
        s = torch.softmax(r.flatten(1), dim=1)  # black
        assert s.dtype == torch.float32
        assert torch.relu(s).dtype == torch.float32  # gray again, now fp32 input
        assert r.mean().dtype == torch.float32  # reductions are black
    # outside the context nothing is cast
    assert nn.functional.conv2d(x, w).dtype == torch.float32


def test_op_lists_are_configurable():
    cfg = AmpConfig(white=frozenset({"softmax"}), black=frozenset({"conv2d"}))
    with autocast(cfg):
        assert nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)).dtype == torch.float32
        assert torch.softmax(torch.randn(3), 0).dtype == torch.bfloat16
    assert AmpConfig(dtype="auto", device="cuda").low_dtype() == torch.float16
    with pytest.raises(InvalidParameterError):
        AmpConfig(white=frozenset({"exp"}), black=frozenset({"exp"}))
    with pytest.raises(InvalidParameterError):
        AmpConfig(dtype="int8")


def test_scaler_paddle_defaults_and_growth():
    s = DynamicLossScaler()
    assert (s.scale_, s.incr_every_n_steps, s.decr_every_n_nan_or_inf, s.incr_ratio, s.decr_ratio) == (
        32768.0, 1000, 2, 2.0, 0.8)
    for _ in range(999):
        assert s.update(found_inf=False)
    assert s.scale_ == 32768.0 and s.good_steps_ == 999
    assert s.update(found_inf=False)
    assert s.scale_ == 65536.0 and s.good_steps_ == 0


def test_scaler_shrinks_after_two_bad_steps_and_resets_counters():
    s = DynamicLossScaler(init_scale=100.0)
    for _ in range(10):
        s.update(False)
    assert not s.update(True)  # one bad step: skipped, scale kept, good streak broken
    assert s.scale_ == 100.0 and s.good_steps_ == 0 and s.bad_steps_ == 1
    assert s.update(False)  # a finite step resets the bad count
    assert s.bad_steps_ == 0
    assert not s.update(True) and s.scale_ == 100.0
    assert not s.update(True) and s.scale_ == pytest.approx(80.0)
    assert s.bad_steps_ == 0 and s.skipped_steps_ == 3
    # the scale never drops below 1
    s2 = DynamicLossScaler(init_scale=1.1)
    for _ in range(6):
        s2.update(True)
    assert s2.scale_ == 1.0


def test_amp_step_skips_update_on_injected_inf_and_scales_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=8.0, decr_every_n_nan_or_inf=2)
    step = amp_step(AmpConfig(), scaler)
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])

    poison = {"on": True}
    hook = model[3].weight.register_hook(lambda g: g * float("inf") if poison["on"] else g)
    before = [p.detach().clone() for p in model.parameters()]
    step(model, opt, x, y)
    assert not grads_finite(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # update skipped
    assert scaler.bad_steps_ == 1 and scaler.scale_ == 8.0
    step(model, opt, x, y)
    assert scaler.scale_ == pytest.approx(6.4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    poison["on"] = False
    hook.remove()
    ref = copy.deepcopy(model)
    nn.functional.cross_entropy(ref(x), y).backward()
    step(model, opt, x, y)
    assert grads_finite(model.parameters())
    assert not torch.equal(before[-2], model[3].weight)
    # gradients were unscaled: they match a plain fp32 backward up to bf16 error
    g_amp, g_ref = model[3].weight.grad, ref[3].weight.grad
    assert model[3].weight.dtype == torch.float32 and g_amp.dtype == torch.float32
    rel = (g_amp - g_ref).norm() / g_ref.norm()
    assert rel < 0.1  # same direction; an unreverted x6.4 scale would be far off
