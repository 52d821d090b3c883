"""A minimal, deterministic classification training loop shared by the BNN, QAT and AMP code.

:func:`fit` trains on in-memory tensors with Adam and a cosine schedule; :func:`two_step`
is the BNN recipe (binary activations with real weights, then both binary; Martinez et al.,
ICLR 2020; ReActNet, ECCV 2020), optionally followed by a fine-tune with batch-norm statistics
frozen (:func:`recalibrate_bn`, ``FitConfig(freeze_bn=True)``). The library never prints: pass
``progress`` to observe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ...errors import InvalidParameterError

__all__ = ["FitConfig", "fit", "evaluate", "two_step", "distill_step", "random_shift", "recalibrate_bn"]


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Training options.

    ``freeze_bn``: batch-norm layers stay in eval mode while the rest trains, so they normalise with their running
    statistics (which no longer update) and only their affine parameters learn: training then sees exactly the
    normalisation that inference uses.

    >>> FitConfig(epochs=2).lr
    0.001
    """

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    freeze_bn: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise InvalidParameterError(
                f"FitConfig needs epochs >= 0, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}."
            )


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FitConfig,
    *,
    step_fn: Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], float] | None = None,
    progress: Callable[[int, float], None] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` on ``(x, y)``; returns the mean loss of each epoch.

    ``step_fn(model, optimizer, xb, yb) -> loss`` replaces the plain fp32 step (the AMP
    helper supplies one); ``progress(epoch, loss)`` is called after each epoch;
    ``augment(xb, generator)`` transforms each training batch (e.g. :func:`random_shift`).
    """
    if len(x) != len(y) or len(x) == 0:
        raise InvalidParameterError(f"x and y need the same non-zero length; got {len(x)} and {len(y)}.")
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step = step_fn or _plain_step
    losses = []
    for epoch in range(config.epochs):
        model.train()
        if config.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        perm = torch.randperm(len(x), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(x), config.batch_size):
            idx = perm[i : i + config.batch_size]
            xb = x[idx] if augment is None else augment(x[idx], g)
            total += step(model, opt, xb, y[idx]) * len(idx)
            count += len(idx)
            sched.step()
        losses.append(total / count)
        if progress is not None:
            progress(epoch, losses[-1])
    model.eval()
    return losses


def _plain_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """Replace every batch-norm layer's running statistics by their average over ``x`` (one pass, no gradients).

    A binary network needs this: its pre-sign activations take few distinct values (a constant background maps to one
    value per channel), so a running mean a little off the batch statistics training saw flips the sign of whole
    regions at inference. The running averages of training lag weights that keep flipping signs.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def random_shift(max_px: int = 2) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Augmentation: move each image of an NCHW batch by its own random offset of up to ``max_px`` pixels in x and y,
    filling the uncovered border with the batch's minimum (the background of normalised digits)."""
    if max_px < 0:
        raise InvalidParameterError(f"random_shift needs max_px >= 0; got {max_px}.")

    def shift(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if max_px == 0:
            return xb
        h, w = xb.shape[-2:]
        padded = nn.functional.pad(xb, (max_px,) * 4, value=float(xb.min()))
        off = torch.randint(0, 2 * max_px + 1, (xb.shape[0], 2), generator=g)
        out = torch.empty_like(xb)
        for k in torch.unique(off[:, 0] * (2 * max_px + 1) + off[:, 1]).tolist():
            dy, dx = divmod(k, 2 * max_px + 1)
            sel = (off[:, 0] == dy) & (off[:, 1] == dx)
            out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
        return out

    return shift


def distill_step(teacher: nn.Module, ce_weight: float = 0.0):
    """A `fit` step with ReActNet's distributional loss: cross-entropy between the real-valued teacher's softmax and
    the student's (Liu et al., ECCV 2020, Sec. 4.2), plus `ce_weight` x the label loss. The teacher is frozen."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            target = torch.softmax(teacher(xb), dim=1)
        logits = model(xb)
        loss = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        if ce_weight:
            loss = loss + ce_weight * nn.functional.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def two_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    step1: FitConfig,
    step2: FitConfig,
    *,
    teacher: nn.Module | None = None,
    progress: Callable[[int, float], None] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    finetune: FitConfig | None = None,
) -> tuple[list[float], list[float]]:
    """Two-step BNN training: binary activations + real weights, then everything binary
    (weights start from step 1's real values). With `teacher`, both steps use the distributional loss.

    ``finetune`` (a third, short stage): batch-norm statistics are recalibrated on ``x`` (`recalibrate_bn`), then the
    binary network trains on with them frozen (``freeze_bn`` is forced on); its losses are appended to step 2's."""
    from .bnn import set_binarization

    step_fn = distill_step(teacher) if teacher is not None else None
    set_binarization(model, activations=True, weights=False)
    l1 = fit(model, x, y, step1, step_fn=step_fn, progress=progress, augment=augment)
    set_binarization(model, activations=True, weights=True)
    l2 = fit(model, x, y, step2, step_fn=step_fn, progress=progress, augment=augment)
    if finetune is not None:
        recalibrate_bn(model, x)
        ft = replace(finetune, freeze_bn=True)
        l2 = l2 + fit(model, x, y, ft, step_fn=step_fn, progress=progress, augment=augment)
    return l1, l2
