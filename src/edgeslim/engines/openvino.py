"""OpenVINO engine (Intel's inference toolkit; CPU plugin), converting ONNX to OpenVINO IR (.xml graph + .bin weights).

Precisions: `fp32` (fp32 weights, inference precision f32: on CPUs with native bf16 the plugin would otherwise pick
bf16 by itself); `bf16` (inference precision bf16, weights stored in fp16: half the file), offered only where the CPU
plugin reports native bf16; `int8` (NNCF post-training quantization on edgeslim's calibration feeds; when a search
score is given and full int8 costs more than half the budget, the layers whose int8 inputs lose most (SQNR on the
calibration feeds) compute in float (their int8 activations are removed from the built IR and their float weights
and biases restored), the fewest that fit, as ncnn's int8-mixed does);
the layers left in float (and every layer NNCF does not quantize) run in bf16 where bf16 is native, else fp32;
`w8` (NNCF int8 weight-only compression, activations stay float); `bf16-w8` (the same int8 weights, bf16 inference
precision, where bf16 is native: measured on the PP-OCRv4 detector and recognizer, as fast as bf16 within the noise
(1.00x and 1.05x, rounds 0.76-1.34) from 0.63 and 0.56 of bf16's file).

Conversion and quantization run in a child process with a timeout: the converter aborts the process on some graphs,
and NNCF's calibration can hang on a model the plugin cannot compile.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from . import register_engine
from ._io import io_from_meta
from ._subprocess import call_function
from ..policy import ThreadPolicy
from .base import (INSTALL_HINT, ConversionError, Engine, EngineError, EngineUnavailableError, Feeds, meta_path, read_meta,
                   sidecar_files, write_meta)

__all__ = ["OpenVinoEngine", "OpenVinoRunner", "OV_PRECISIONS", "native_bf16", "runtime_properties", "policy_properties"]

# precision -> (inference precision hint, IR weights stored in fp16, extra compile properties)
OV_PRECISIONS: dict[str, tuple[str, bool, dict]] = {
    "fp32": ("f32", False, {}),
    "bf16": ("bf16", True, {}),
    # the layers NNCF leaves in float run in bf16 where the CPU computes bf16 natively (runtime_properties), else fp32
    "int8": ("f32", False, {}),
    # weight-only: without this the plugin quantizes activations of int8-weight MatMuls on the fly (group size 32)
    "w8": ("f32", False, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}),
    "bf16-w8": ("bf16", True, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}),
}
WEIGHT_ONLY = ("w8", "bf16-w8")  # NNCF compress_weights: int8 weights, float activations
CONVERT_TIMEOUT = 300.0
QUANT_TIMEOUT = 600.0
BF16_NOTE = "bf16 inference precision: this CPU has native bf16 (AVX512-BF16/AMX)"


def _import_ov():
    if importlib.util.find_spec("openvino") is None:
        raise EngineUnavailableError(f"engine openvino needs the openvino package, which is not installed. Run {INSTALL_HINT}.")
    import openvino

    return openvino


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether the CPU plugin computes bf16 natively (else bf16 is emulated and slower than fp32, so not offered)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        return "BF16" in _import_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a plugin that cannot describe the CPU: offer what is exact
        return False


def policy_properties(policy: str) -> dict:
    """CPU plugin properties for a thread policy. The plugin's TBB workers have no spin knob (they spin briefly, then
    sleep, whatever is asked), so what differs is placement: dedicated pins threads to cores and splits work statically
    (no stealing overhead on an idle CPU); shared leaves threads unpinned with TBB's adaptive partitioner, so work
    moves away from cores other processes hold."""
    dedicated = ThreadPolicy.of(policy).spins
    return {"ENABLE_CPU_PINNING": dedicated, "TBB_PARTITIONER": "STATIC" if dedicated else "AUTO"}


def runtime_properties(precision: str) -> dict:
    """Compile properties a precision needs, apart from threads and the thread policy."""
    hint, _, extra = OV_PRECISIONS[precision]
    if precision == "int8" and native_bf16():
        # the float remainder is most of the model once the search has put the sensitive layers back (65 of 67 on
        # the PP-OCRv4 recognizer), so its precision is most of the speed: bf16 where bf16 is native. For full int8
        # the remainder's precision did not rank consistently (benchmarks/ov_int8_variants.py)
        hint = "bf16"
    return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, **extra}


def fp16_weights(precision: str) -> bool:
    """Whether the IR stores its float constants in fp16. int8 does where its float remainder computes in bf16: those
    weights are rounded to bf16 when the plugin compiles them, so fp16 storage (wider mantissa) loses nothing they keep
    and halves the layers kept in float (fp32 storage made the searched int8 recognizer larger than its bf16 IR).
    `ov.save_model(compress_to_fp16=True)` leaves every constant of a model with FakeQuantize in fp32 (checked on
    2026.4), so `keep_float` stores the restored weights as fp16 constants with a Convert itself."""
    return OV_PRECISIONS[precision][1] or (precision == "int8" and
                                           runtime_properties(precision)["INFERENCE_PRECISION_HINT"] == "bf16")


# A model with dynamic dims runs on one dynamic-shape compilation; an input shape seen STATIC_AFTER times gets a
# compilation of its own, fixed to that shape, for up to STATIC_MAX shapes in the runner's life (never evicted, so a
# stream of new widths costs at most STATIC_MAX compiles, about 0.23 s each on the PP-OCRv4 recognizer). Fixed shapes
# let the CPU plugin choose its kernels ahead: 1.21x the dynamic compilation on that recognizer, bf16, 1x3x48x320, in
# both processes of benchmarks/process_spread.py; in some processes it gains nothing (BENCHMARKS, "Reading the main
# job"). The delivered predict.py (templates/openvino.py) does the same.
STATIC_AFTER, STATIC_MAX = 2, 4


class OpenVinoRunner:
    """Runs an IR on the CPU plugin. Dynamic dims stay dynamic (OCR widths, batch), and a shape that recurs is
    compiled for that shape (STATIC_AFTER, STATIC_MAX); a model the plugin cannot compile with dynamic shapes is
    compiled per input shape instead."""

    def __init__(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> None:
        ov = _import_ov()
        meta = read_meta(artifact, "openvino")
        self.meta, self.policy = meta, policy
        self.input_names, self.output_names = list(meta["inputs"]), list(meta["outputs"])
        self.properties = {**meta["properties"], "INFERENCE_NUM_THREADS": int(threads), **policy_properties(policy)}
        self._core = ov.Core()
        self._model = self._core.read_model(str(artifact))
        self._by_shape: dict[tuple, tuple] = {}
        self._seen: dict[tuple, int] = {}
        # a sidecar may turn this off (benchmarks time OpenVINO as a user runs it by default: one dynamic compilation);
        # a model whose inputs are all fixed has nothing to gain
        fixed = all(i.get_partial_shape().is_static for i in self._model.inputs)
        self._static_max = STATIC_MAX if meta.get("static_recompile", True) and not fixed else 0
        self._dynamic = None
        try:
            self._dynamic = self._compile(self._model)
        except RuntimeError:
            if all(i.get_partial_shape().is_static for i in self._model.inputs):
                raise
            # some layers have no dynamic-shape kernel on this plugin: compiled per shape, at first use

    def _compile(self, model) -> tuple:
        cm = self._core.compile_model(model, "CPU", self.properties)
        order = []
        for name in self.output_names:
            found = [j for j, o in enumerate(cm.outputs) if name in o.get_names()]
            order.append(found[0] if found else len(order))
        return cm, cm.create_infer_request(), order

    def _for(self, feeds: dict[str, np.ndarray]) -> tuple:
        key = tuple(tuple(np.shape(feeds[n])) for n in self.input_names)
        if self._dynamic is not None:
            if key in self._by_shape:
                return self._by_shape[key]
            if len(self._by_shape) >= self._static_max:  # the hot path once the shapes are compiled: no counting
                return self._dynamic
            self._seen[key] = seen = self._seen.get(key, 0) + 1
            if seen < STATIC_AFTER:
                return self._dynamic
            m = self._model.clone()
            m.reshape({n: list(s) for n, s in zip(self.input_names, key)})
            self._by_shape[key] = self._compile(m)
            return self._by_shape[key]
        if key not in self._by_shape:
            if len(self._by_shape) >= 8:  # a stream of new widths: keep memory bounded
                self._by_shape.pop(next(iter(self._by_shape)))
            m = self._model.clone()
            m.reshape({n: list(s) for n, s in zip(self.input_names, key)})
            self._by_shape[key] = self._compile(m)
        return self._by_shape[key]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cm, req, order = self._for(feeds)
        res = req.infer({n: np.ascontiguousarray(feeds[n], np.float32) for n in self.input_names})
        return [np.array(res[cm.outputs[j]], copy=True) for j in order]

    def static_shapes(self) -> list[tuple]:
        """The input shapes that have a compilation of their own."""
        return list(self._by_shape)

    def compiled_properties(self) -> dict:
        """What the plugin reports it applied (as strings), for the properties this runner asked for."""
        cm = self._dynamic[0] if self._dynamic is not None else None
        if cm is None:
            return {}
        return {k: str(cm.get_property(k)) for k in self.properties}


def _onnx_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _one_line(e: BaseException) -> str:
    """The informative line of an OpenVINO/NNCF error (theirs are multi-line C++ check reports)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    named = [s.lstrip("- ") for s in lines if s.startswith("--") or "conversion rule" in s]
    return (named[-1] if named else (lines[-1] if lines else type(e).__name__))[:300]


def _read_feeds(feeds_file: str) -> list[dict]:
    z = np.load(feeds_file)
    n = int(z["__count__"])
    return [{k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}/")} for i in range(n)]


def _sensitivity(model, feeds: list[dict], limit: int = 16) -> list[dict]:
    """Layers fed by int8 activations, most hurt first: SQNR of each FakeQuantize (its output vs its input, both from
    the quantized model on calibration feeds), a layer scored by its worst quantized input."""
    import openvino as ov

    fqs = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
           and op.input_value(0).get_node().get_type_name() != "Constant"]
    if not fqs:
        return []
    probe = model.clone()
    by_name = {op.get_friendly_name(): op for op in probe.get_ordered_ops()}
    pairs = []
    for fq in fqs:
        p = by_name[fq.get_friendly_name()]
        pairs.append((p.input_value(0), p.output(0)))
    added = probe.add_outputs([o for pair in pairs for o in pair])
    # results are read by position: find each added output among the model's outputs (a tensor added twice is one)
    where = [next(i for i, r in enumerate(probe.outputs) if r.get_node() == o.get_node() and r.get_index() == o.get_index())
             for o in added]
    cm = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = cm.create_infer_request()
    sig = np.zeros(len(fqs))
    err = np.zeros(len(fqs))
    for f in feeds[:limit]:
        res = req.infer(f)
        for j in range(len(fqs)):
            a = np.asarray(res[cm.outputs[where[2 * j]]], np.float64)
            q = np.asarray(res[cm.outputs[where[2 * j + 1]]], np.float64)
            sig[j] += float((a * a).sum())
            err[j] += float(((a - q) ** 2).sum())
    sqnr = 10 * np.log10(np.maximum(sig, 1e-30) / np.maximum(err, 1e-30))
    layers: dict[str, float] = {}
    for fq, s in zip(fqs, sqnr):
        for t in fq.output(0).get_target_inputs():
            name = t.get_node().get_friendly_name()
            layers[name] = min(layers.get(name, np.inf), float(s))
    return [{"layer": k, "input_sqnr_db": round(v, 2)} for k, v in sorted(layers.items(), key=lambda kv: kv[1])]


def _int8_weights(node, ov) -> bool:
    """Whether `node` is NNCF's decompression of int8 weights: Multiply(Convert(Constant i8|u8) [- zero point], scale)."""
    if node.get_type_name() != "Multiply":
        return False
    for v in node.input_values():
        n = v.get_node()
        if n.get_type_name() == "Subtract":
            n = n.input_value(0).get_node()
        if (n.get_type_name() == "Convert" and n.input_value(0).get_node().get_type_name() == "Constant"
                and n.input_value(0).get_element_type() in (ov.Type.i8, ov.Type.u8)):
            return True
    return False


def keep_float(xml_in: Path, xml_out: Path, layers: list[str], float_xml: Path | None = None,
               compress_to_fp16: bool = False) -> dict:
    """Copy the NNCF int8 IR `xml_in` to `xml_out` with `layers` computing in float: every input of those layers that a
    FakeQuantize feeds reads that FakeQuantize's own input instead (other consumers keep theirs); with `float_xml` (the
    same model before quantization) their int8 weights are replaced by the original float weights and the bias that
    NNCF's bias correction adjusted for the int8 layer is restored, so a kept layer is what it was before NNCF.
    `compress_to_fp16` stores the float constants in fp16 (`fp16_weights`). Returns the counts of inputs rewired, weights and biases restored.

    Written here rather than re-running `nncf.quantize` with an ignored scope for every search trial: that repeats the
    statistics collection and bias correction (about 8 s a trial on the PP-OCRv4 recognizer, 96 s for its search),
    while this edits the IR already built (well under a second) and the model scored is the model delivered."""
    ov = _import_ov()
    core = ov.Core()
    model = core.read_model(str(xml_in))
    ref = {op.get_friendly_name(): op for op in core.read_model(str(float_xml)).get_ordered_ops()} if float_xml else {}

    def float_const(name: str, idx: int):
        f = ref.get(name)
        if f is None or idx >= f.get_input_size():
            return None
        src = f.input_value(idx).get_node()
        if src.get_type_name() == "Convert" and src.input_value(0).get_node().get_type_name() == "Constant":
            src = src.input_value(0).get_node()  # fp16-stored weights: the plugin widens them alike
        if src.get_type_name() != "Constant":
            return None
        data = np.asarray(src.get_data(), np.float32)
        if compress_to_fp16 and data.size > 1 and np.abs(data).max() < 65504.0:  # fp16 storage, widened at compile
            return ov.opset13.convert(ov.op.Constant(data.astype(np.float16)), ov.Type.f32)
        return ov.op.Constant(data)

    names = set(layers)
    counts = {"rewired": 0, "weights": 0, "biases": 0}
    for op in model.get_ordered_ops():
        if op.get_friendly_name() not in names:
            continue
        for idx, inp in enumerate(op.inputs()):
            src = inp.get_source_output().get_node()
            if src.get_type_name() == "FakeQuantize" and src.input_value(0).get_node().get_type_name() != "Constant":
                inp.replace_source_output(src.input_value(0))
                counts["rewired"] += 1
            elif ref and _int8_weights(src, ov):
                c = float_const(op.get_friendly_name(), idx)
                if c is not None and tuple(c.get_output_shape(0)) == tuple(inp.get_shape()):
                    inp.replace_source_output(c.output(0))
                    counts["weights"] += 1
        if ref:  # the bias Add right after the layer: NNCF's fast bias correction shifted it for the int8 version
            for t in op.output(0).get_target_inputs():
                add = t.get_node()
                if add.get_type_name() != "Add":
                    continue
                for idx, inp in enumerate(add.inputs()):
                    if inp.get_source_output().get_node().get_type_name() == "Constant":
                        c = float_const(add.get_friendly_name(), idx)
                        if c is not None and tuple(c.get_output_shape(0)) == tuple(inp.get_shape()):
                            inp.replace_source_output(c.output(0))
                            counts["biases"] += 1
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(xml_out), compress_to_fp16=compress_to_fp16)
    return counts


def build_ir(onnx_path: str, out_xml: str, precision: str, feeds_file: str | None = None, ignored: list[str] | None = None,
             rank: bool = False, float_xml: str | None = None) -> dict:
    """Run in a child process: ONNX -> IR at `precision` (NNCF for int8/w8). Returns facts for the sidecar."""
    import logging

    import openvino as ov

    try:
        model = ov.convert_model(onnx_path)
    except Exception as e:
        raise RuntimeError(f"OpenVINO cannot convert the model: {_one_line(e)}") from None
    info: dict = {}
    if precision == "int8" or precision in WEIGHT_ONLY:
        import nncf

        nncf.set_log_level(logging.ERROR)
        try:
            if precision in WEIGHT_ONLY:
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
                info["w8"] = {"method": "nncf.compress_weights", "mode": "INT8_ASYM"}
            else:
                feeds = _read_feeds(feeds_file)
                if float_xml:  # the model as NNCF receives it: the float side of the search's trials
                    ov.save_model(model, float_xml, compress_to_fp16=False)
                scope = nncf.IgnoredScope(names=list(ignored or []), validate=False)
                model = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=scope)
                info["calibration"] = {"samples": len(feeds), "method": "nncf.quantize (PTQ, preset performance)"}
                if rank:
                    info["sensitivity"] = _sensitivity(model, feeds)
        except Exception as e:
            raise RuntimeError(f"NNCF failed on the model: {_one_line(e)}") from None
    ops: dict[str, int] = {}
    for op in model.get_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    info["fake_quantize"] = ops.get("FakeQuantize", 0)
    ov.save_model(model, out_xml, compress_to_fp16=OV_PRECISIONS[precision][1])
    return info


def _save_feeds(feeds: list[Feeds], path: Path) -> None:
    arrays = {"__count__": np.array(len(feeds))}
    for i, f in enumerate(feeds):
        for k, v in f.items():
            arrays[f"{i}/{k}"] = np.asarray(v, np.float32)
    np.savez(path, **arrays)


@register_engine("openvino")
class OpenVinoEngine(Engine):
    name = "openvino"
    suffix = ".xml"
    package = "openvino"
    model_files = {"xml": "model.xml", "bin": "model.bin"}
    main_role = "xml"
    roles = {"xml": "OpenVINO IR graph (.xml)", "bin": "OpenVINO IR weights (.bin)"}
    info_keys = Engine.info_keys + ("float_layers",)

    @property
    def default_precisions(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("fp32", "bf16", "bf16-w8", "int8") if native_bf16() else ("fp32", "int8")

    def available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def version(self) -> str:
        return _import_ov().get_version()

    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in OV_PRECISIONS if not p.startswith("bf16") or native_bf16())

    def needs_calibration(self, precision: str) -> bool:
        return precision == "int8"

    def searches(self, precision: str) -> bool:
        return precision == "int8"

    def artifact_files(self, artifact: Path) -> list[Path]:
        artifact = Path(artifact)
        return [artifact, artifact.with_suffix(".bin")]

    def deploy_layout(self, artifact: Path, source=None) -> dict:
        artifact = Path(artifact)
        meta = read_meta(artifact, self.name)
        inputs, outputs = io_from_meta(meta, source)
        copies = {artifact: self.model_files["xml"], artifact.with_suffix(".bin"): self.model_files["bin"],
                  meta_path(artifact): self.model_files["xml"] + ".json"}
        options = {"device": "CPU", "properties": meta["properties"], "policy_properties": meta["policy_properties"]}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs,
                "note": "compile with runtime.options.properties, INFERENCE_NUM_THREADS = runtime.threads and "
                        "runtime.options.policy_properties[runtime.thread_policy.policy]"}

    def bare_files(self, path: Path) -> dict[str, str] | None:
        return sidecar_files(path, self.name, {"xml": path.name, "bin": path.with_suffix(".bin").name})

    def _build(self, src: Path, out: Path, precision: str, work: Path, feeds_file: Path | None = None,
               ignored: list[str] | None = None, rank: bool = False, float_xml: Path | None = None) -> dict:
        timeout = QUANT_TIMEOUT if precision == "int8" or precision in WEIGHT_ONLY else CONVERT_TIMEOUT
        info = call_function("edgeslim.engines.openvino:build_ir", {
            "onnx_path": str(src), "out_xml": str(out), "precision": precision,
            "feeds_file": str(feeds_file) if feeds_file else None, "ignored": ignored or [], "rank": rank,
            "float_xml": str(float_xml) if float_xml else None},
            timeout, work, f"openvino {precision} conversion")
        if not out.exists() or not out.with_suffix(".bin").exists():
            raise ConversionError(f"openvino {precision} conversion wrote no IR for {src.name}. Convert the model again.")
        return info

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32",
                calib_feeds: Iterable[Feeds] | None = None, calib_limit: int = 64, score=None,
                budget: float = 0.005) -> Path:
        """Write `<out>` (.xml), its .bin and the .json sidecar. int8 needs `calib_feeds`; with `score(artifact) ->
        (metric drop, fidelity)` and `budget`, the layers most hurt by int8 are kept in float, the fewest that keep
        the drop within half the budget (`ncnn.fewest_kept`)."""
        self.check_precision(precision)
        _import_ov()
        out = Path(out)
        if out.suffix != ".xml":
            raise ConversionError(f"{out}: an OpenVINO IR is named *.xml (its weights go to *.bin beside it). Pass a .xml name.")
        out.parent.mkdir(parents=True, exist_ok=True)
        inputs, outputs = _onnx_names(model)
        meta = {"engine": "openvino", "precision": precision, "inputs": inputs, "outputs": outputs,
                "properties": runtime_properties(precision),
                "policy_properties": {p.value: policy_properties(p) for p in ThreadPolicy},
                "weights": ("int8" if precision == "int8" or precision in WEIGHT_ONLY else
                            "fp16" if fp16_weights(precision) else "fp32")}
        if precision == "int8" and fp16_weights(precision):
            meta["weights"] += " (float layers fp16)"
        if precision.startswith("bf16"):
            meta["note"] = BF16_NOTE
        with tempfile.TemporaryDirectory(prefix="edgeslim-openvino-") as d:
            d = Path(d)
            src = d / "model.onnx"
            onnx.save(model, str(src))
            feeds_file = None
            if precision == "int8":
                feeds = [f for _, f in zip(range(calib_limit), calib_feeds or ())]
                if not feeds:
                    raise ConversionError("openvino int8 needs calibration feeds. Pass calib_feeds, or use precision w8.")
                feeds_file = d / "calib.npz"
                _save_feeds(feeds, feeds_file)
            built = d / "full.xml"
            searching = precision == "int8" and score is not None
            float_xml = d / "float.xml" if searching else None
            info = self._build(src, built, precision, d, feeds_file, rank=searching, float_xml=float_xml)
            if precision == "int8":
                sens = info.pop("sensitivity", [])
                order = [s["layer"] for s in sens]
                kept: list[str] = []
                restored: dict[int, dict] = {}
                if score is not None and order:
                    from .ncnn import fewest_kept

                    def trial(k: int, _path: Path):
                        tx = d / f"trial{k}.xml"
                        if k == 0:
                            shutil.copy(built, tx)
                            shutil.copy(built.with_suffix(".bin"), tx.with_suffix(".bin"))
                        else:
                            restored[k] = keep_float(built, tx, order[:k], float_xml, fp16_weights(precision))
                        write_meta(tx, {**meta, "float_layers": order[:k]})
                        return score(tx)

                    k, trials = fewest_kept(order, trial, d, budget)
                    kept = order[:k]
                    chosen = d / f"trial{k}.xml"
                    if chosen.exists():
                        built = chosen
                    else:
                        info = self._build(src, built, precision, d, feeds_file, ignored=kept)
                    info["search"] = trials
                    info["sensitivity"] = sens
                    if k in restored:
                        info["kept_restored"] = restored[k]
                info["float_layers"] = kept
                info["int8_layers"] = len(order) - len(kept) if order else info.get("fake_quantize", 0)
                if kept:
                    fl = "bf16" if meta["properties"]["INFERENCE_PRECISION_HINT"] == "bf16" else "fp32"
                    meta["note"] = (f"int8 (NNCF) with {len(kept)} of {len(order)} quantized layers computing in {fl} "
                                    "(their float weights restored; search on the task metric)")
            shutil.move(str(built.with_suffix(".bin")), str(out.with_suffix(".bin")))
            shutil.move(str(built), str(out))
        write_meta(out, {**meta, **info})
        return out

    def load(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> OpenVinoRunner:
        artifact = Path(artifact)
        if not artifact.exists() or not artifact.with_suffix(".bin").exists():
            raise EngineError(f"{artifact}: OpenVINO IR (.xml + .bin) not found. Convert one with `edgeslim convert --to openvino`.")
        return OpenVinoRunner(artifact, threads, policy)
