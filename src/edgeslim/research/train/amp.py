"""Automatic mixed precision with configurable op lists, cached low-precision weights and loss scaling for fp16.

Follows PaddlePaddle's AMP (O1): a *white* list of ops that run in low precision (conv,
matmul, linear), a *black* list kept in fp32 (softmax, losses, exp/log, reductions,
normalization) and *gray* ops that follow their inputs. Low precision is bfloat16 on CPU
and float16 on GPU. The op lists are applied by a ``TorchFunctionMode`` that casts floating
inputs of listed ops, so they are plain data (:class:`AmpConfig`), not torch's fixed lists.
Parameters stay fp32 (master weights) and receive fp32 gradients; only the compute is low precision.

Where the time goes, and what this module does about it:

- **Weight casts.** A white-listed op needs a low-precision copy of its weight. Casting into a
  new tensor every call costs more than the copy itself on CPU: a fresh buffer of tens of MB
  is new memory from the OS, and its page faults cost about 3x the conversion. :class:`WeightCache`
  keeps one low-precision buffer per parameter and refreshes it *in place*: once per autocast
  region, and again whenever the parameter's version counter moved (an optimizer step, any
  in-place write), so a copy is never stale. :func:`amp_step` keeps one cache for the whole run.
- **Loss scaling only for fp16.** bfloat16 keeps fp32's 8-bit exponent, so gradients do not
  underflow and a loss scaler is pure cost (scale, unscale, an inf/nan scan of every gradient).
  :func:`amp_step` therefore scales the loss for float16 only (``scaler="auto"``); a scaler
  passed explicitly is honoured with either dtype. When scaling, unscaling and the inf/nan
  check are one fused pass over the gradients.
- **Hardware.** bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16, AMX-BF16,
  Arm BF16): there oneDNN's bf16 matmuls run several times faster than fp32 (about 4-5x on an
  AVX512-BF16 core). Elsewhere bf16 is emulated through fp32 conversions and a step gets *slower*;
  :func:`cpu_bf16_isa` names what this CPU has, and :func:`amp_step` warns
  (:class:`AmpPerformanceWarning`) when bf16 is emulated. Small convolution nets gain little even
  with native bf16: with 32-128 channels the kernels are short, and every layer pays layout
  reorders and bf16/fp32 casts around its fp32 batch norm. Models whose step is dominated by
  large matmuls (wide MLPs, transformer encoders) gain the most; the optimizer step, which stays
  fp32 over the master weights, is the part AMP does not shorten.

:class:`DynamicLossScaler` is Paddle's ``update_loss_scaling`` with its static-graph defaults:
initial scale 2^15, x2 after 1000 consecutive finite steps, x0.8 after 2 steps with inf/nan
(never below 1), and the parameter update of an inf/nan step is skipped.

References
----------
- Micikevicius et al., "Mixed Precision Training", ICLR 2018.
- Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322, 2019
  (bf16 needs no loss scaling).
- PaddlePaddle ``paddle.static.amp`` (``AutoMixedPrecisionLists``, ``update_loss_scaling``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from ...errors import InvalidParameterError

__all__ = [
    "WHITE_LIST",
    "BLACK_LIST",
    "AmpConfig",
    "AmpPerformanceWarning",
    "AmpStep",
    "DynamicLossScaler",
    "WeightCache",
    "autocast",
    "amp_step",
    "bf16_is_native",
    "cpu_bf16_isa",
    "grads_finite",
]

WHITE_LIST = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear", "matmul", "mm", "bmm",
                        "addmm", "baddbmm", "einsum", "scaled_dot_product_attention"})
BLACK_LIST = frozenset({"softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
                        "binary_cross_entropy_with_logits", "exp", "log", "sum", "mean", "var", "std", "norm",
                        "batch_norm", "layer_norm", "group_norm", "cumsum", "logsumexp", "pow"})
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class AmpConfig:
    """Which ops run in which precision.

    ``dtype="auto"`` picks bfloat16 on CPU and float16 when ``device`` is ``cuda``. Ops on
    neither list are gray: they run in whatever precision their inputs arrive in.
    ``cache_weights`` keeps low-precision copies of parameters between calls (see :class:`WeightCache`).

    >>> AmpConfig().low_dtype()
    torch.bfloat16
    >>> "softmax" in AmpConfig(black=frozenset({"softmax"})).black
    True
    >>> AmpConfig().uses_loss_scaling(), AmpConfig(dtype="float16").uses_loss_scaling()
    (False, True)
    """

    dtype: str = "auto"
    device: str = "cpu"
    white: frozenset[str] = WHITE_LIST
    black: frozenset[str] = BLACK_LIST
    cache_weights: bool = True

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

    def uses_loss_scaling(self) -> bool:
        """True for float16, whose 5-bit exponent lets small gradients underflow; bfloat16 has fp32's range."""
        return self.low_dtype() == torch.float16


# ---- hardware ----------------------------------------------------------------------------------------------------

class AmpPerformanceWarning(UserWarning):
    """Mixed precision will run, but slower than fp32 on this hardware."""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):  # x86 | Arm
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) -> the best of our names it still allows; caps not listed allow everything
_ONEDNN_CAPS = {"SSE41": "none", "AVX": "none", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2",
                "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512_bf16",
                "AVX512_CORE_FP16": "avx512_bf16", "AVX10_1_512": "avx512_bf16"}
_X86_ORDER = ("none", "avx2", "avx512", "avx512_bf16", "amx_bf16")


def cpu_bf16_isa(flags: Iterable[str] | None = None, onednn_max_isa: str | None = None) -> str:
    """The best instruction set this CPU has for bf16 matmuls.

    ``"amx_bf16"`` or ``"avx512_bf16"`` (x86) and ``"arm_bf16"`` multiply bf16 natively; otherwise the
    best plain vector ISA (``"avx512"``, ``"avx2"``, ``"neon"``, ``"none"``) is named and bf16 is emulated.
    ``flags`` defaults to this machine's ``/proc/cpuinfo`` flags; ``onednn_max_isa`` to the
    ``ONEDNN_MAX_CPU_ISA`` environment variable, which caps what oneDNN (torch's bf16 kernels) may use.

    >>> cpu_bf16_isa({"avx2", "fma", "avx512f", "avx512_bf16"})
    'avx512_bf16'
    >>> cpu_bf16_isa({"avx2", "fma"})
    'avx2'
    >>> cpu_bf16_isa({"avx2", "avx512f", "avx512_bf16"}, onednn_max_isa="AVX2")
    'avx2'
    """
    f = set(_cpu_flags() if flags is None else flags)
    isa = "none"
    for flag, name in (("amx_bf16", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("bf16", "arm_bf16"),
                       ("avx512f", "avx512"), ("avx2", "avx2"), ("asimd", "neon")):
        if flag in f:
            isa = name
            break
    cap = _ONEDNN_CAPS.get((os.environ.get("ONEDNN_MAX_CPU_ISA", "") if onednn_max_isa is None
                            else onednn_max_isa).strip().upper())
    if cap is not None and isa in _X86_ORDER and _X86_ORDER.index(cap) < _X86_ORDER.index(isa):
        isa = cap
    return isa


def bf16_is_native(isa: str | None = None) -> bool:
    """True when ``isa`` (default: this CPU's, from :func:`cpu_bf16_isa`) multiplies bf16 in hardware."""
    return (cpu_bf16_isa() if isa is None else isa) in ("amx_bf16", "avx512_bf16", "arm_bf16")


def _warn_if_emulated(config: AmpConfig, isa: str | None = None) -> bool:
    if config.device != "cpu" or config.low_dtype() != torch.bfloat16:
        return False
    isa = cpu_bf16_isa() if isa is None else isa
    if bf16_is_native(isa):
        return False
    warnings.warn(f"this CPU has no bf16 arithmetic ({isa}): bf16 AMP converts to fp32 on the fly and trains slower "
                  "than fp32 (about 5x slower measured on AVX2). Train in fp32 here, or on a CPU with AVX512-BF16 "
                  "or AMX.", AmpPerformanceWarning, stacklevel=3)
    return True


# ---- low-precision weight copies ---------------------------------------------------------------------------------

class _LowCopy(torch.autograd.Function):
    """``param -> buffer`` (the buffer already holds param's low-precision copy); the gradient flows back in fp32.

    The output aliases the buffer and shares its version counter, so an op that saved it for backward
    raises torch's "modified by an inplace operation" error if the buffer is refreshed before that
    backward pass, instead of differentiating with the new weights."""

    @staticmethod
    def forward(ctx, param, buffer):
        ctx.param_dtype = param.dtype
        return buffer.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.param_dtype), None


@dataclass
class _Entry:
    buffer: torch.Tensor
    version: int
    region: int


class WeightCache:
    """Low-precision copies of parameters, kept between calls and refreshed in place.

    A copy is refreshed on its first use in each autocast region and whenever the parameter's
    version counter moved since the copy was made (an optimizer step or any other in-place write),
    so a copy is never stale. Refreshing writes into the same buffer, which saves the page faults
    of a new one; the price is one low-precision copy of every used parameter held in memory.
    Copies live as long as their parameters. Learned state: ``refreshes_`` (copies made) and ``hits_``
    (uses served without copying).

    >>> cache = WeightCache(torch.bfloat16)
    >>> w = nn.Parameter(torch.ones(2, 2))
    >>> cache.begin_region()
    >>> cache.get(w).dtype, cache.get(w).dtype, cache.refreshes_, cache.hits_
    (torch.bfloat16, torch.bfloat16, 1, 1)
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._region = 0
        self.refreshes_ = 0
        self.hits_ = 0

    def begin_region(self) -> None:
        """Mark every copy for a refresh on its next use (called when an autocast region is entered)."""
        self._region += 1

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every copy (frees their memory)."""
        self._entries = WeakIdKeyDictionary()

    def get(self, param: torch.Tensor) -> torch.Tensor:
        """``param`` in low precision, connected to autograd so its gradient reaches ``param`` in fp32."""
        entry = self._entries.get(param)
        version = param._version
        if entry is not None and entry.version == version and entry.region == self._region:
            self.hits_ += 1
        else:
            if (entry is None or entry.buffer.shape != param.shape or entry.buffer.device != param.device
                    or (entry.buffer.is_inference() and not torch.is_inference_mode_enabled())):
                # contiguous whatever the parameter's strides: oneDNN's bf16 kernels want dense weights
                entry = _Entry(torch.empty(param.shape, dtype=self.dtype, device=param.device), -1, -1)
                self._entries[param] = entry
            with torch.no_grad():
                entry.buffer.copy_(param)
            entry.version, entry.region = version, self._region
            self.refreshes_ += 1
        return _LowCopy.apply(param, entry.buffer)


# ---- the op-list mode --------------------------------------------------------------------------------------------

def _cast(obj: Any, dtype: torch.dtype, cache: WeightCache | None = None) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.dtype != dtype:
        # parameters (leaves) are cached; activations change every call and are cast as they come
        if cache is not None and isinstance(obj, nn.Parameter):
            return cache.get(obj)
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype, cache) for o in obj)
    return obj


class _AmpMode(TorchFunctionMode):
    def __init__(self, config: AmpConfig, cache: WeightCache | None) -> None:
        super().__init__()
        self.white, self.black, self.low = config.white, config.black, config.low_dtype()
        self.cache = cache

    def __enter__(self):
        if self.cache is not None:
            self.cache.begin_region()
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.white:
            c = self.cache if self.cache is not None and self.cache.dtype == self.low else None
            args, kwargs = _cast(args, self.low, c), {k: _cast(v, self.low, c) for k, v in kwargs.items()}
        elif name in self.black:
            args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def autocast(config: AmpConfig | None = None, *, cache: WeightCache | None = None) -> TorchFunctionMode:
    """Context manager running white-list ops in low precision and black-list ops in fp32.

    Parameters reaching a white-list op are cast through a :class:`WeightCache`: ``cache`` when
    given (it outlives the region; finish one region's backward pass before entering the next), else
    a new one for this region when ``config.cache_weights``.

    >>> with autocast():
    ...     y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    >>> y.dtype
    torch.bfloat16
    """
    cfg = config or AmpConfig()
    if cache is None and cfg.cache_weights:
        cache = WeightCache(cfg.low_dtype())
    return _AmpMode(cfg, cache)


# ---- loss scaling ------------------------------------------------------------------------------------------------

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


def _unscale_(params: list[torch.Tensor], inv_scale: float) -> bool:
    """Multiply every gradient by ``inv_scale`` in place; True if any held inf or nan.

    Dense gradients go through torch's fused kernel (the one ``torch.amp.GradScaler`` uses: one pass
    per gradient for both jobs), grouped by device and dtype as it requires; sparse ones one by one."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    found = False
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g.mul_(inv_scale)
            found |= not bool(torch.isfinite(g.coalesce().values()).all())
            continue
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), grads in groups.items():
        flag = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, torch.full((1,), inv_scale, device=device))
        found |= bool(flag.item())
    return found


# ---- the training step -------------------------------------------------------------------------------------------

class AmpStep:
    """One AMP training step, ``step(model, optimizer, xb, yb) -> loss``; made by :func:`amp_step`.

    Holds the run's :class:`WeightCache` (``cache``, None when ``config.cache_weights`` is off) and
    the loss ``scaler`` (None when the loss is not scaled).
    """

    def __init__(self, config: AmpConfig, scaler: DynamicLossScaler | None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.config, self.scaler, self.loss_fn = config, scaler, loss_fn
        self.cache = WeightCache(config.low_dtype()) if config.cache_weights else None

    def __call__(self, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(self.config, cache=self.cache):
            loss = self.loss_fn(model(xb), yb)
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            scale = self.scaler.scale_
            (loss * scale).backward()
            params = [p for g in opt.param_groups for p in g["params"]]
            if self.scaler.update(_unscale_(params, 1.0 / scale)):
                opt.step()
        return float(loss.detach())


def amp_step(
    config: AmpConfig | None = None,
    scaler: DynamicLossScaler | None | str = "auto",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> AmpStep:
    """A training step for :func:`edgeslim.research.train.loop.fit`: forward under :func:`autocast`,
    backward (of the scaled loss when scaling), unscale, and skip the update when gradients overflowed.

    Parameters (master weights) and their gradients stay fp32; their low-precision copies are
    cached across steps and refreshed after every optimizer step. ``scaler="auto"`` scales the
    loss for float16 only: bfloat16 has fp32's exponent range, so its gradients do not underflow.
    Pass a :class:`DynamicLossScaler` to scale (and skip inf/nan steps) with either dtype, or None
    to never scale. Warns with :class:`AmpPerformanceWarning` when bf16 would be emulated on this CPU.

    >>> step = amp_step()
    >>> step.scaler is None, amp_step(AmpConfig(dtype="float16")).scaler is not None
    (True, True)
    """
    cfg = config or AmpConfig()
    if isinstance(scaler, str):
        if scaler != "auto":
            raise InvalidParameterError(f"amp_step(scaler={scaler!r}); pass 'auto', a DynamicLossScaler or None.")
        scaler = DynamicLossScaler() if cfg.uses_loss_scaling() else None
    _warn_if_emulated(cfg)
    return AmpStep(cfg, scaler, loss_fn)
