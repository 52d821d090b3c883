"""int8 recipes: static QDQ with per-channel weights, and dynamic quantization (kept as the naive reference).

We use onnxruntime.quantization's quantizer for the graph surgery, but feed it ranges from our own streaming
calibrators (through its calibration-cache file) because its calibrators crash on variable-width inputs and hold
every activation in memory. Before quantizing, the model is prepared (`edgeslim.graph.simplify`): opset >= 13
(per-channel DequantizeLinear needs the `axis` attribute) and the decomposed HardSwish/affine chains fused, so
fewer float ops sit between quantized convolutions.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import RecipeError
from ..quant.calibrate import collect_ranges, get_calibrator
from . import register_recipe
from .base import Recipe, RecipeContext, RecipeOutput

# Ops whose int8 kernels pay on x86 (VNNI) and whose error stays local. Elementwise ops are left in fp32:
# quantizing them adds Q/DQ pairs and error without a faster kernel.
DEFAULT_OPS = ("Conv", "MatMul", "Gemm")


def tensors_of(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Activation tensors the quantizer needs ranges for: non-weight inputs and outputs of the quantized ops."""
    init = {t.name for t in model.graph.initializer}
    names = []
    for n in model.graph.node:
        if n.op_type in op_types:
            names += [i for i in n.input if i and i not in init] + [o for o in n.output if o]
    return list(dict.fromkeys(names))


def calibrated_ranges(ctx: RecipeContext, calibrator: str, op_types: tuple[str, ...] = DEFAULT_OPS) -> dict[str, tuple[float, float]]:
    """Ranges of the tensors around `op_types`; one streaming pass serves every calibrator (cached per study)."""
    key = f"ranges:{calibrator}:{op_types}"
    if key not in ctx.shared:
        hists_key = f"calib-histograms:{op_types}"
        cal = get_calibrator(calibrator)
        if hists_key in ctx.shared:
            cal.hists_ = ctx.shared[hists_key]
            ctx.shared[key] = cal.ranges()
        else:
            total = ctx.calib_count
            ctx.shared[key] = collect_ranges(ctx.model, ctx.calib_feeds(), cal, tensor_names=tensors_of(ctx.model, op_types),
                                            progress=(lambda n: ctx.progress("calibrate", n, total)) if ctx.progress else None)
            ctx.shared[hists_key] = cal.hists_
    return ctx.shared[key]


def quantize_qdq(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], *, per_channel: bool = True,
                 op_types: tuple[str, ...] = DEFAULT_OPS, exclude: tuple[str, ...] = (),
                 activation: str = "uint8", weight: str = "int8", reduce_range: bool = False) -> onnx.ModelProto:
    """QDQ-quantize `model` with the given activation ranges (onnxruntime's quantizer does the surgery)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    data = {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()}
    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as d, _quiet_root_logger():
        cache, out = Path(d) / "ranges.json", Path(d) / "q.onnx"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        try:
            quantize_static(
                model, str(out), None, quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=qt[activation], weight_type=qt[weight], op_types_to_quantize=list(op_types),
                nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as e:
            raise RecipeError(f"onnxruntime quantizer failed: {str(e).splitlines()[0][:200]}") from None
        return onnx.load(str(out))


@contextlib.contextmanager
def _quiet_root_logger():
    # onnxruntime.quantization logs "consider pre-processing" warnings on the root logger for every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantized_nodes(model: onnx.ModelProto, op_types: tuple[str, ...] = DEFAULT_OPS) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in op_types]


QUANT_OPS = ("Conv", "MatMul", "Gemm")
SCOPES = ("all", "gemm")


def check_quant_options(recipe: str, ops: str, scope: str, calibrator: str | None = None) -> None:
    """Option values of the int8 recipes, checked before any work."""
    from ..errors import InvalidParameterError
    from ..quant import CALIBRATORS

    bad = [o for o in ops.split("+") if o not in QUANT_OPS]
    if bad or not ops:
        raise InvalidParameterError(f"recipe option {recipe}:ops={ops!r} names unknown op types {bad}. "
                                    f"Use a '+'-joined subset of {'+'.join(QUANT_OPS)}.")
    if scope not in SCOPES:
        raise InvalidParameterError(f"recipe option {recipe}:scope={scope!r} is not known. Use scope=all or scope=gemm.")
    if calibrator is not None and calibrator != "auto" and calibrator not in CALIBRATORS:
        raise InvalidParameterError(f"recipe option {recipe}:calibrator={calibrator!r}: unknown calibrator. "
                                    f"Use auto or one of {', '.join(CALIBRATORS.names())}.")


def outside_scope(model: onnx.ModelProto, scope: str, op_types: tuple[str, ...]) -> tuple[str, ...]:
    """Nodes of `op_types` that `scope` leaves in fp32.

    `all`: none. `gemm`: grouped/depthwise convolutions. On onnxruntime's CPU provider int8 pays on GEMM-shaped
    work (dense convolutions, MatMul): a depthwise int8 convolution is no faster than its fp32 NCHWc kernel, and
    each one adds Q/DQ and layout changes (measured on PP-OCRv4: int8 everywhere 1.39x vs 1.53x for dense-only,
    with a third of the calibration-set damage).
    """
    if scope == "all":
        return ()
    if scope != "gemm":
        raise RecipeError(f"scope {scope!r} is not known. Use scope=all or scope=gemm.")
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and n.op_type in op_types:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if group != 1:
                out.append(n.name)
    return tuple(out)


@register_recipe("int8")
class Int8(Recipe):
    """Static int8, QDQ format, per-channel symmetric int8 weights, asymmetric uint8 activations.

    `calibrator=auto` calibrates once and picks, among minmax/percentile/entropy/mse, the ranges whose model agrees
    best with fp32 on the calibration lines.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        calibrator: str = "auto"
        per_channel: bool = True
        ops: str = "Conv+MatMul+Gemm"
        scope: str = "all"
        # fold scalar-affine BatchNormalizations into the next quantizer (edgeslim.quant.passes); off by default:
        # on PP-OCRv4 it makes int8 18% faster (13 BN and 26 Transposes gone) but the zero-point rounding moves CER
        # 0.067 -> 0.074 on 300 lines (benchmarks/int8_profile.py)
        absorb_affine: bool = False
        # match each quantized convolution's per-channel output mean to fp32 by shifting its int32 bias
        # (edgeslim.quant.bias_correction); off by default: on PP-OCRv4 it cuts the mean channel shift 60x
        # (0.124 -> 0.002) yet leaves CER where it was (0.0672 -> 0.0672 on 300 lines; with absorb_affine
        # 0.0740 -> 0.0693): the int8 error there is activation noise, not bias
        bias_correction: bool = False

    def validate(self) -> None:
        check_quant_options(self.registered_name, self.config.ops, self.config.scope, self.config.calibrator)

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        ops = tuple(self.config.ops.split("+"))
        exclude = outside_scope(ctx.model, self.config.scope, ops)
        if self.config.calibrator != "auto":
            ranges = calibrated_ranges(ctx, self.config.calibrator, ops)
            out = RecipeOutput(quantize_qdq(ctx.model, ranges, per_channel=self.config.per_channel, op_types=ops, exclude=exclude),
                               {"calibrator": self.config.calibrator, "fp32_nodes": list(exclude)})
        else:
            out = best_calibrated(ctx, ops, self.config.per_channel, exclude)
        if self.config.absorb_affine:
            from ..quant.passes import absorb_affine_into_quantize

            m = onnx.ModelProto()
            m.CopyFrom(out.model)
            m, info = absorb_affine_into_quantize(m)
            out = RecipeOutput(m, {**out.info, "absorb_affine": info})
        if self.config.bias_correction:
            from ..quant.bias_correction import correct_bias

            m, info = correct_bias(out.model, ctx.model, ctx.calib_feeds, threads=ctx.threads)
            out = RecipeOutput(m, {**out.info, "bias_correction": info})
        return out


def best_calibrated(ctx: RecipeContext, ops: tuple[str, ...], per_channel: bool = True, exclude: tuple[str, ...] = ()) -> RecipeOutput:
    key = f"best-int8:{ops}:{per_channel}:{exclude}"
    if key in ctx.shared:
        return ctx.shared[key]
    trials = {}
    for name in ("minmax", "percentile", "entropy", "mse"):
        m = quantize_qdq(ctx.model, calibrated_ranges(ctx, name, ops), per_channel=per_channel, op_types=ops, exclude=exclude)
        if ctx.calib_drop is None:
            trials[name] = (0.0, {}, m)  # nothing to compare against: first calibrator
            break
        drop, fid = ctx.calib_drop(m)
        trials[name] = (drop, fid, m)
    # rank by fidelity to fp32 on calibration lines, then by metric drop
    best = min(trials, key=lambda k: (trials[k][1].get("metric_vs_fp32", 0.0), trials[k][0]))
    out = RecipeOutput(trials[best][2], {
        "calibrator": best,
        "fp32_nodes": list(exclude),
        "calibrator_trials": {k: {"calib_drop": round(v[0], 5), **{f: round(x, 5) for f, x in v[1].items()}} for k, v in trials.items()},
    })
    ctx.shared[key] = out
    return out


@register_recipe("int8-dynamic")
class Int8Dynamic(Recipe):
    """onnxruntime's `quantize_dynamic` as a new user calls it (int8 weights, activations quantized at run time)."""

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as d, _quiet_root_logger():
            out = Path(d) / "q.onnx"
            try:
                quantize_dynamic(ctx.model, str(out), weight_type=QuantType.QInt8)
            except Exception as e:
                raise RecipeError(f"quantize_dynamic failed: {str(e).splitlines()[0][:200]}") from None
            return RecipeOutput(onnx.load(str(out)))
