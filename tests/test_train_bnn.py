"""Binary layers: STE gradients, binarization switches, and packed export/run parity on MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.errors import DataError, ModelLoadError, RecipeError, UnknownNameError
from edgeslim.research.train.bnn import (
    BinaryConv2d,
    BinaryLinear,
    MnistBNN,
    RPReLU,
    RSign,
    approx_sign,
    export_packed,
    load_packed,
    save_packed,
    set_binarization,
    ste_sign,
)
from edgeslim.research.train.data import load_mnist, split
from edgeslim.research.train.loop import FitConfig, fit, recalibrate_bn, two_step

DATA = next((p for p in (Path("/work/shared/data"), Path(__file__).resolve().parents[2] / "shared" / "data")
             if (p / "mnist").is_dir()), Path("/work/shared/data"))


def test_ste_sign_forward_and_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    y = ste_sign(x)
    np.testing.assert_array_equal(y.detach().numpy(), [-1, -1, -1, 1, 1, 1, 1])
    g = torch.arange(1.0, 8.0)
    y.backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), g.numpy() * (np.abs(x.detach().numpy()) <= 1))


def test_approx_sign_gradient_is_bireal_quadratic():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.9], requires_grad=True)
    approx_sign(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.maximum(0.0, 2 - 2 * np.abs(x.detach().numpy())))


def test_rsign_threshold_and_gradient():
    r = RSign(2)
    with torch.no_grad():
        r.beta[:] = torch.tensor([0.5, -0.5]).view(1, 2, 1, 1)
    x = torch.tensor([0.2, 0.2]).view(1, 2, 1, 1)
    y = r(x)
    np.testing.assert_array_equal(y.detach().numpy().ravel(), [-1, 1])
    y.sum().backward()
    # d sign(x - beta) / d beta = -(2 - 2|x - beta|) with the approx gradient; |x - beta| = 0.3, 0.7
    np.testing.assert_allclose(r.beta.grad.numpy().ravel(), [-(2 - 0.6), -(2 - 1.4)], rtol=1e-6)


def test_rprelu_matches_formula():
    a = RPReLU(3)
    with torch.no_grad():
        a.gamma[:] = torch.tensor([0.0, 1.0, -1.0])
        a.zeta[:] = torch.tensor([0.5, 0.0, 0.0])
        a.slope[:] = torch.tensor([0.1, 0.2, 0.3])
    x = torch.tensor([-1.0, 0.5, -2.0]).view(1, 3, 1, 1)
    want = np.array([-0.1 + 0.5, (0.5 - 1) * 0.2, (-2 + 1) * 0.3])
    np.testing.assert_allclose(a(x).detach().numpy().ravel(), want, rtol=1e-6)


def test_binary_conv_uses_signs_and_xnor_scale():
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 4, 3, padding=1)
    x = torch.randn(2, 5, 6, 6)
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    want = torch.nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0) * alpha, padding=1)
    torch.testing.assert_close(conv(x), want)
    # step 1 of the recipe: real weights, binary activations
    set_binarization(conv, activations=True, weights=False)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0), w, padding=1))
    lin = BinaryLinear(7, 3)
    set_binarization(lin, activations=False, weights=False)
    xl = torch.randn(4, 7)
    torch.testing.assert_close(lin(xl), xl @ lin.weight.T)


def test_weight_gradient_flows_through_ste():
    conv = BinaryConv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 5.0  # outside the STE window of |w| <= 1
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    # only the alpha path reaches the clipped weight: the sign path is zeroed there
    assert conv.weight.grad[0, 0, 0, 0].abs() < conv.weight.grad[0].abs().max()


def test_unknown_kind_lists_known():
    with pytest.raises(UnknownNameError, match="reactnet"):
        MnistBNN("reactnett")


def test_mnist_reader_and_split():
    imgs, labels = load_mnist(DATA)
    assert imgs.shape == (10000, 28, 28) and imgs.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    tr, te = split(len(imgs), 0.2, seed=0)
    assert len(te) == 2000 and len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 10000
    tr2, te2 = split(len(imgs), 0.2, seed=0)
    np.testing.assert_array_equal(te, te2)
    with pytest.raises(DataError):
        load_mnist(DATA / "nope")


@pytest.fixture(scope="module")
def mnist_small():
    imgs, labels = load_mnist(DATA)
    tr, te = split(len(imgs), 0.2, seed=0)
    x = torch.from_numpy((imgs.astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    y = torch.from_numpy(labels)
    return x[tr[:192]], y[tr[:192]], x[te[:200]], y[te[:200]]


@pytest.mark.parametrize("kind,downsample", [("xnor", "pool"), ("reactnet", "pool"), ("reactnet", "proj")])
def test_packed_export_matches_torch(kind, downsample, mnist_small, tmp_path):
    xtr, ytr, xte, yte = mnist_small
    torch.manual_seed(0)
    model = MnistBNN(kind, widths=(9, 18, 36, 72, 72), downsample=downsample)  # 72: channels not a multiple of 64
    if downsample == "proj":  # a real 1x1 conv + BN shortcut where the shape changes, and none where it does not
        assert [b.proj is not None for b in model.blocks] == [True, True, True, False]
    with pytest.raises(RecipeError):
        set_binarization(model, activations=True, weights=False)
        export_packed(model)
    cfg = FitConfig(epochs=1, lr=3e-3, batch_size=64)
    l1, l2 = two_step(model, xtr, ytr, cfg, cfg)
    assert all(np.isfinite(l1 + l2))
    packed = export_packed(model)
    with torch.no_grad():
        want = model(xte).numpy()
    got = packed.run(xte.numpy())
    agree = (want.argmax(1) == got.argmax(1)).mean()
    assert agree >= 0.99
    assert len(np.unique(want.argmax(1))) >= 2  # not a degenerate constant predictor
    assert np.median(np.abs(want - got)) < 1e-3
    save_packed(packed, tmp_path / "bnn.npz")
    again = load_packed(tmp_path / "bnn.npz")
    np.testing.assert_allclose(again.run(xte[:20].numpy()), got[:20], rtol=1e-5, atol=1e-5)
    assert [b.w_packed.shape for b in packed.blocks] == [(3, 3, 1, 18), (3, 3, 1, 36), (3, 3, 1, 72), (3, 3, 2, 72)]
    assert [b.proj is not None for b in again.blocks] == [b.proj is not None for b in model.blocks]


def test_export_rejects_fp32_and_load_rejects_junk(tmp_path):
    with pytest.raises(RecipeError):
        export_packed(MnistBNN("fp32", widths=(4, 8, 8, 8, 8)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError):
        load_packed(tmp_path / "junk.npz")


def test_packed_inference_needs_no_torch(tmp_path):
    """A packed BNN loads and runs without torch: the inference module is apart from the training one."""
    import subprocess
    import sys

    model = MnistBNN("xnor", widths=(4, 8, 8, 8, 8)).eval()
    save_packed(export_packed(model), tmp_path / "bnn.npz")
    code = ("import sys, numpy as np\n"
            "sys.modules['torch'] = None  # any import of torch fails\n"
            "from edgeslim.research.kernels.packed_bnn import load_packed\n"
            f"p = load_packed({str(tmp_path / 'bnn.npz')!r})\n"
            "y = p.run(np.zeros((1, 1, 28, 28), np.float32))\n"
            "print(y.shape)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip() == "(1, 10)"


def test_distributional_loss_pulls_the_student_to_the_teacher():
    """ReActNet's distributional loss: the student fits the frozen teacher's softmax, labels unused."""
    import torch

    from edgeslim.research.train.loop import FitConfig, distill_step, fit

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher = torch.nn.Linear(8, 3)
    y = torch.zeros(256, dtype=torch.long)  # labels that disagree with the teacher: ignored by the loss
    student = torch.nn.Linear(8, 3)
    before = torch.softmax(student(x), 1).detach()
    fit(student, x, y, FitConfig(epochs=60, lr=5e-2, batch_size=64), step_fn=distill_step(teacher))
    target = torch.softmax(teacher(x), 1)
    after = torch.softmax(student(x), 1).detach()
    assert (after - target).abs().mean() < 0.25 * (before - target).abs().mean()
    assert (after.argmax(1) == target.argmax(1)).float().mean() > 0.95
    assert all(not p.requires_grad for p in teacher.parameters())


def test_random_shift_moves_each_image_by_its_own_offset():
    from edgeslim.research.train.loop import random_shift

    g = torch.Generator().manual_seed(0)
    x = torch.full((64, 1, 10, 10), -1.0)
    x[:, 0, 4, 5] = 3.0  # one bright pixel per image at (4, 5)
    out = random_shift(2)(x, g)
    assert out.shape == x.shape
    pos = [divmod(int(i), 10) for i in out.view(64, -1).argmax(1)]
    dys, dxs = {p[0] - 4 for p in pos}, {p[1] - 5 for p in pos}
    assert dys <= set(range(-2, 3)) and dxs <= set(range(-2, 3))
    assert len(set(pos)) >= 10  # offsets differ between images of one batch
    assert torch.all(out.view(64, -1).max(1).values == 3.0) and float(out.min()) == -1.0  # nothing lost, border filled
    assert torch.equal(random_shift(0)(x, g), x)


def _conv_bn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3))


def test_recalibrate_bn_sets_running_stats_to_the_data():
    model = _conv_bn()
    x = torch.randn(40, 1, 8, 8) * 3 + 1
    bn = model[1]
    bn.running_mean.fill_(5.0)
    recalibrate_bn(model, x, batch_size=10)  # four equal batches: the mean of batch means is the data mean
    with torch.no_grad():
        a = model[0](x)
    np.testing.assert_allclose(bn.running_mean.numpy(), a.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    recalibrate_bn(model, x, batch_size=len(x))  # one batch: exactly the data's (unbiased) variance
    np.testing.assert_allclose(bn.running_var.numpy(), a.transpose(0, 1).reshape(4, -1).var(dim=1).numpy(),
                               rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


@pytest.mark.parametrize("freeze", [False, True])
def test_fit_freeze_bn_keeps_running_stats_and_trains_the_affine(freeze):
    model = _conv_bn()
    x, y = torch.randn(64, 1, 8, 8) + 2, torch.randint(0, 3, (64,))
    recalibrate_bn(model, x)
    bn = model[1]
    mean0, var0, w0 = bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone()
    fit(model, x * 2 + 1, y, FitConfig(epochs=2, lr=1e-2, batch_size=16, freeze_bn=freeze))  # shifted data
    moved = not torch.allclose(bn.running_mean, mean0) or not torch.allclose(bn.running_var, var0)
    assert moved != freeze
    assert not torch.allclose(bn.weight.detach(), w0)  # the affine part learns either way


def test_two_step_finetune_trains_with_frozen_recalibrated_statistics(mnist_small):
    xtr, ytr, _, _ = mnist_small
    torch.manual_seed(0)
    model = MnistBNN("xnor", widths=(8, 16, 16, 32, 32))
    cfg = FitConfig(epochs=1, lr=3e-3, batch_size=64)
    bn = model.blocks[-1].bn
    snaps = []  # the last block's running mean after every epoch: step 1, step 2, fine-tune x2
    l1, l2 = two_step(model, xtr, ytr, cfg, cfg, finetune=FitConfig(epochs=2, lr=1e-4, batch_size=64),
                      progress=lambda e, l: snaps.append(bn.running_mean.clone()))
    assert len(l1) == 1 and len(l2) == 3 and len(snaps) == 4
    assert not torch.allclose(snaps[0], snaps[1])  # statistics update during the two steps
    assert not torch.allclose(snaps[1], snaps[2])  # recalibrated before the fine-tune, not step 2's running ones
    assert torch.equal(snaps[2], snaps[3])  # and frozen during it


def test_packed_shortcut_pooling_matches_torch_avg_pool_on_odd_sizes():
    from edgeslim.research.kernels.packed_bnn import _np_shortcut

    h = np.random.default_rng(0).standard_normal((2, 7, 9, 5)).astype(np.float32)  # NHWC, odd sizes
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(h).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).numpy()
    got = _np_shortcut(h, 2, 5)
    assert got.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np_shortcut(h, 2, 10), np.concatenate([want, want], axis=-1), rtol=1e-6, atol=1e-6)
