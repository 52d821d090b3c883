"""Automatic mixed precision with configurable op lists and a dynamic loss scaler.

Follows PaddlePaddle's AMP (O1): a *white* list of ops that run in low precision (conv,
matmul, linear), a *black* list kept in fp32 (softmax, losses, exp/log, reductions,
normalization) and *gray* ops that follow their inputs. Low precision is bfloat16 on CPU
and float16 on GPU. The op lists are applied by a ``TorchFunctionMode`` that casts floating
inputs of listed ops, so they are plain data (:class:`AmpConfig`), not torch's fixed lists.

:class:`DynamicLossScaler` is Paddle's ``update_loss_scaling`` with its static-graph defaults:
initial scale 2^15, x2 after 1000 consecutive finite steps, x0.8 after 2 steps with inf/nan
(never below 1), and the parameter update of an inf/nan step is skipped.

References
----------
- Micikevicius et al., "Mixed Precision Training", ICLR 2018.
- PaddlePaddle ``paddle.static.amp`` (``AutoMixedPrecisionLists``, ``update_loss_scaling``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidParameterError

__all__ = [
    "WHITE_LIST",
    "BLACK_LIST",
    "AmpConfig",
    "DynamicLossScaler",
    "autocast",
    "amp_step",
    "grads_finite",
]

WHITE_LIST = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear", "matmul", "mm", "bmm",
                        "addmm", "baddbmm", "einsum"})
BLACK_LIST = frozenset({"softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
                        "binary_cross_entropy_with_logits", "exp", "log", "sum", "mean", "var", "std", "norm",
                        "batch_norm", "layer_norm", "group_norm", "cumsum", "logsumexp", "pow"})
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class AmpConfig:
    """Which ops run in which precision.

    ``dtype="auto"`` picks bfloat16 on CPU and float16 when ``device`` is ``cuda``. Ops on
    neither list are gray: they run in whatever precision their inputs arrive in.

    >>> AmpConfig().low_dtype()
    torch.bfloat16
    >>> "softmax" in AmpConfig(black=frozenset({"softmax"})).black
    True
    """

    dtype: str = "auto"
    device: str = "cpu"
    white: frozenset[str] = WHITE_LIST
    black: frozenset[str] = BLACK_LIST

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *_DTYPES):
            raise InvalidParameterError(f"AmpConfig.dtype={self.dtype!r}; use 'auto', 'bfloat16' or 'float16'.")
        both = set(self.white) & set(self.black)
        if both:
            raise InvalidParameterError(f"ops {sorted(both)} are on both the white and the black list; keep each on one.")

    def low_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if self.device.startswith("cuda") else torch.bfloat16
        return _DTYPES[self.dtype]


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.dtype != dtype:
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


class _AmpMode(TorchFunctionMode):
    def __init__(self, config: AmpConfig) -> None:
        super().__init__()
        self.white, self.black, self.low = config.white, config.black, config.low_dtype()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.white:
            args, kwargs = _cast(args, self.low), {k: _cast(v, self.low) for k, v in kwargs.items()}
        elif name in self.black:
            args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def autocast(config: AmpConfig | None = None) -> TorchFunctionMode:
    """Context manager running white-list ops in low precision and black-list ops in fp32.

    >>> with autocast():
    ...     y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    >>> y.dtype
    torch.bfloat16
    """
    return _AmpMode(config or AmpConfig())


@dataclass(kw_only=True)
class DynamicLossScaler:
    """Dynamic loss scaling with Paddle's defaults; learned state ends in ``_``.

    >>> s = DynamicLossScaler()
    >>> s.update(found_inf=True), s.update(found_inf=True), s.scale_
    (False, False, 26214.4)
    """

    init_scale: float = 2.0**15
    incr_every_n_steps: int = 1000
    decr_every_n_nan_or_inf: int = 2
    incr_ratio: float = 2.0
    decr_ratio: float = 0.8
    scale_: float = field(init=False)
    good_steps_: int = field(init=False, default=0)
    bad_steps_: int = field(init=False, default=0)
    skipped_steps_: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.init_scale <= 0 or self.incr_ratio <= 1 or not 0 < self.decr_ratio < 1:
            raise InvalidParameterError(
                "DynamicLossScaler needs init_scale > 0, incr_ratio > 1 and 0 < decr_ratio < 1; got "
                f"{self.init_scale}, {self.incr_ratio}, {self.decr_ratio}."
            )
        if self.incr_every_n_steps < 1 or self.decr_every_n_nan_or_inf < 1:
            raise InvalidParameterError("incr_every_n_steps and decr_every_n_nan_or_inf must be >= 1.")
        self.scale_ = float(self.init_scale)

    def update(self, found_inf: bool) -> bool:
        """Advance the state machine after one backward pass; True if the step may be applied."""
        if found_inf:
            self.good_steps_ = 0
            self.bad_steps_ += 1
            self.skipped_steps_ += 1
            if self.bad_steps_ == self.decr_every_n_nan_or_inf:
                self.scale_ = max(1.0, self.scale_ * self.decr_ratio)
                self.bad_steps_ = 0
            return False
        self.bad_steps_ = 0
        self.good_steps_ += 1
        if self.good_steps_ == self.incr_every_n_steps:
            new = self.scale_ * self.incr_ratio
            if new != float("inf"):
                self.scale_ = new
            self.good_steps_ = 0
        return True


def grads_finite(params) -> bool:
    """True when every existing gradient is free of inf and nan."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def amp_step(
    config: AmpConfig | None = None,
    scaler: DynamicLossScaler | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], float]:
    """A training step for :func:`edgeslim.train.loop.fit`: forward under :func:`autocast`,
    backward of the scaled loss, unscale, and skip the update when gradients overflowed.

    Parameters (master weights) and their gradients stay fp32.
    """
    cfg = config or AmpConfig()

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(cfg):
            loss = loss_fn(model(xb), yb)
        scale = scaler.scale_ if scaler is not None else 1.0
        (loss * scale).backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        if scaler is not None:
            inv = 1.0 / scale
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(inv)
            if scaler.update(not grads_finite(params)):
                opt.step()
        else:
            opt.step()
        return float(loss.detach())

    return step
