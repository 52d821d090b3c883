"""AMP: op lists decide precision; cached bf16 weights stay fresh; loss scaling for fp16 only; the dynamic loss
scaler's state machine; skipped inf steps; AMP training converges; the bf16 hardware check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslim.errors import InvalidParameterError
from edgeslim.research.train.amp import (
    BLACK_LIST,
    WHITE_LIST,
    AmpConfig,
    AmpPerformanceWarning,
    DynamicLossScaler,
    WeightCache,
    amp_step,
    autocast,
    bf16_is_native,
    cpu_bf16_isa,
    grads_finite,
)


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


# ---- op lists decide the arithmetic, not only the dtype ---------------------------------------------------------

def test_whitelisted_linear_computes_in_bf16_and_blacklisted_ops_in_fp32():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with autocast(AmpConfig()):
        y = lin(x)  # white: inputs, weight and bias cast to bf16
        ln = nn.functional.layer_norm(y, (8,))  # black: bf16 input computed in fp32
        sm = torch.softmax(y, dim=1)  # black
    assert y.dtype == torch.bfloat16
    ref = nn.functional.linear(x.bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16())
    assert torch.equal(y, ref)
    assert not torch.equal(y.float(), lin(x))  # the fp32 result differs: the op really ran in bf16
    assert ln.dtype == torch.float32 and torch.equal(ln, nn.functional.layer_norm(y.float(), (8,)))
    assert sm.dtype == torch.float32 and torch.equal(sm, torch.softmax(y.float(), dim=1))
    # the same op moved to the black list runs in fp32
    with autocast(AmpConfig(white=WHITE_LIST - {"linear"}, black=BLACK_LIST | {"linear"})):
        y32 = lin(x)
    assert y32.dtype == torch.float32 and torch.equal(y32, lin(x))


def test_amp_gradients_reach_fp32_parameters_and_match_uncached_casts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 3))
    x, y = torch.randn(6, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    grads = {}
    for cached in (True, False):
        model.zero_grad(set_to_none=True)
        with autocast(AmpConfig(cache_weights=cached)):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads[cached] = [p.grad.clone() for p in model.parameters()]
    for a, b, p in zip(grads[True], grads[False], model.parameters()):
        assert a.dtype == torch.float32 == p.dtype
        assert torch.equal(a, b)  # the cached copy is exactly the cast it replaces


# ---- cached low-precision weights --------------------------------------------------------------------------------

def test_weight_cache_is_refreshed_after_an_optimizer_step_within_one_region():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.randn(3, 8)
    cache = WeightCache(torch.bfloat16)
    with autocast(AmpConfig(), cache=cache):
        y1 = lin(x)
        lin(x)  # same weights: served from the cache
        assert (cache.refreshes_, cache.hits_) == (1, 1)
        y1.float().pow(2).sum().backward()
        opt.step()  # in-place update moves the parameter's version counter
        y2 = lin(x)
    assert cache.refreshes_ == 2
    assert not torch.equal(y1, y2)
    # a stale copy would give the old weights' output
    assert torch.equal(y2, nn.functional.linear(x.bfloat16(), lin.weight.detach().bfloat16()))


def test_weight_cache_refreshes_each_region_and_reuses_its_buffer():
    lin = nn.Linear(4, 2, bias=False)
    cache = WeightCache(torch.bfloat16)
    x = torch.randn(1, 4)
    with autocast(AmpConfig(), cache=cache):
        lin(x)
    ptr = cache.get(lin.weight).data_ptr()
    lin.weight.data.mul_(3.0)  # a write the version counter does not see
    with autocast(AmpConfig(), cache=cache):
        y = lin(x)
    assert torch.equal(y, nn.functional.linear(x.bfloat16(), lin.weight.detach().bfloat16()))
    assert cache.get(lin.weight).data_ptr() == ptr  # refreshed in place, no new buffer
    assert len(cache) == 1
    del lin, y  # the graph of y holds the parameter too
    import gc

    gc.collect()
    assert len(cache) == 0  # copies live only as long as their parameters


def test_refreshing_a_copy_before_a_pending_backward_raises():
    lin = nn.Linear(4, 2, bias=False)
    cache = WeightCache(torch.bfloat16)
    with autocast(AmpConfig(), cache=cache):
        out = lin(torch.randn(3, 4, requires_grad=True))
    with torch.no_grad():
        lin.weight.add_(1.0)
    with autocast(AmpConfig(), cache=cache):
        lin(torch.randn(3, 4))  # refreshes the buffer the first graph saved
    with pytest.raises(RuntimeError, match="inplace"):
        out.float().sum().backward()


def test_amp_step_uses_the_updated_weights_on_the_next_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    step = amp_step(AmpConfig())
    for _ in range(3):
        with torch.no_grad(), autocast(AmpConfig(cache_weights=False)):
            expected = float(nn.functional.cross_entropy(model(x), y))  # fresh casts of the current weights
        assert step(model, opt, x, y) == pytest.approx(expected, rel=0, abs=0)
    assert step.cache.refreshes_ == 3 * 4  # every parameter once per step


# ---- loss scaling: fp16 only -------------------------------------------------------------------------------------

def test_loss_scaling_is_on_for_fp16_and_off_for_bf16():
    assert amp_step(AmpConfig(dtype="bfloat16")).scaler is None
    assert amp_step(AmpConfig()).scaler is None  # CPU default: bf16
    s16 = amp_step(AmpConfig(dtype="float16")).scaler
    assert isinstance(s16, DynamicLossScaler) and s16.scale_ == 2.0**15
    explicit = DynamicLossScaler(init_scale=4.0)
    assert amp_step(AmpConfig(dtype="bfloat16"), explicit).scaler is explicit  # an explicit scaler is honoured
    assert amp_step(AmpConfig(dtype="float16"), None).scaler is None
    with pytest.raises(InvalidParameterError):
        amp_step(AmpConfig(), scaler="always")


def test_fp16_step_scales_then_unscales_and_skips_overflow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    ref = copy.deepcopy(model)
    nn.functional.cross_entropy(ref(x), y).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = amp_step(AmpConfig(dtype="float16"))
    before = [p.detach().clone() for p in model.parameters()]
    step(model, opt, x, y)
    assert step.scaler.skipped_steps_ == 0
    for p, r in zip(model.parameters(), ref.parameters()):
        rel = (p.grad - r.grad).norm() / r.grad.norm()
        assert rel < 0.02  # unscaled: an x32768 gradient would be far off
    assert not torch.equal(before[0], model[0].weight)
    # an overflowing gradient skips the update
    hook = model[2].weight.register_hook(lambda g: g * float("inf"))
    snapshot = [p.detach().clone() for p in model.parameters()]
    step(model, opt, x, y)
    hook.remove()
    assert step.scaler.skipped_steps_ == 1
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.parameters()))


# ---- training converges ------------------------------------------------------------------------------------------

def test_amp_training_converges_like_fp32():
    from edgeslim.research.train.loop import FitConfig, evaluate, fit

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 20, generator=g) * 2.5
    y = torch.randint(0, 4, (512,), generator=g)
    x = centers[y] + torch.randn(512, 20, generator=g)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))

    cfg = FitConfig(epochs=6, lr=3e-3, batch_size=64)
    m32, m16 = net(), net()
    l32 = fit(m32, x, y, cfg)
    l16 = fit(m16, x, y, cfg, step_fn=amp_step(AmpConfig()))
    assert l16[-1] < 0.2 * l16[0]
    assert evaluate(m16, x, y) > 0.95
    assert abs(l16[-1] - l32[-1]) < 0.05 + 0.2 * l32[-1]  # the bf16 curve ends where the fp32 one does


# ---- hardware check ----------------------------------------------------------------------------------------------

def test_cpu_bf16_isa_names_native_and_emulated_bf16():
    assert cpu_bf16_isa({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, onednn_max_isa="") == "amx_bf16"
    assert cpu_bf16_isa({"avx2", "avx512f", "avx512_bf16"}, onednn_max_isa="") == "avx512_bf16"
    assert cpu_bf16_isa({"avx2", "avx512f"}, onednn_max_isa="") == "avx512"
    assert cpu_bf16_isa({"sse4_2", "avx2", "fma"}, onednn_max_isa="") == "avx2"
    assert cpu_bf16_isa({"fp", "asimd", "bf16"}, onednn_max_isa="") == "arm_bf16"
    # oneDNN capped below its bf16 kernels: emulated even where the CPU has them
    assert cpu_bf16_isa({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, onednn_max_isa="avx512_core") == "avx512"
    assert cpu_bf16_isa({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, onednn_max_isa="AVX512_CORE_BF16") == "avx512_bf16"
    assert bf16_is_native("avx512_bf16") and bf16_is_native("amx_bf16") and not bf16_is_native("avx2")


def test_amp_step_warns_when_bf16_is_emulated(monkeypatch):
    import warnings

    from edgeslim.research.train import amp as amp_mod

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(amp_mod, "_cpu_flags", lambda: {"avx2", "fma"})
    with pytest.warns(AmpPerformanceWarning, match="avx2"):
        amp_step(AmpConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        amp_step(AmpConfig(dtype="float16"))  # not a bf16 question
        monkeypatch.setattr(amp_mod, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
        amp_step(AmpConfig())
