"""ncnn engine (Tencent's mobile inference framework), converting ONNX with pnnx.

The graph handed to pnnx is the fp32 model with edgeslim's exact affine folds at the model's own opset: pnnx
recognises PP-OCR's attention blocks (and emits one MultiHeadAttention layer) only at the original opset; after
an upgrade to opset >= 14 it leaves 5-D reshapes ncnn cannot run ("target exceeds ncnn physical rank"), which
conversion reports as an error instead of writing a model that fails to load.

Precisions: `fp32`; `bf16` (bf16 storage, fp32 arithmetic; AVX512-BF16 where present); `fp16` (fp16 storage and
arithmetic where the CPU supports it, else ncnn falls back to fp32); `int8` (Convolution, ConvolutionDepthWise and
InnerProduct in int8, per-output-channel weight scales, activation scales from edgeslim's calibrators, written in
ncnn's calibration table format); `int8-bf16` (int8 layers plus bf16 storage for the rest); `int8-mixed` (as
int8-bf16, with the layers whose int8 input hurts the task metric most left in bf16, found on the calibration
samples: the per-layer fallback ncnn's own tools leave to the user); `bf16-w8` (bf16, with the weights stored as
8-bit k-means codebooks, ncnn's quantized-weight format, expanded at load: a quarter of the fp32 file). Every
precision but fp32 stores its other float weights in fp16 in the .bin (half the file).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from ..policy import ThreadPolicy
from . import register_engine
from ._subprocess import call_function, describe_failure, run_tool
from ._io import io_from_meta
from .base import (INSTALL_HINT, ConversionError, Engine, EngineError, EngineUnavailableError, Feeds, meta_path, read_meta,
                   sidecar_files, write_meta)
from .ncnn_format import QUANT_TYPES as _QUANT_TYPES
from .ncnn_format import _parse_param, codebook_errors, codebook_weights, codebooks, quantize_int8, read_table, weight_scales, write_table
from .ncnn_format import unsupported_layers as _unsupported_layers

__all__ = ["NcnnEngine", "NcnnRunner", "NCNN_PRECISIONS", "write_table", "read_table", "quantize_int8"]

_OFF = {"use_bf16_storage": False, "use_bf16_packed": False, "use_fp16_storage": False, "use_fp16_packed": False,
        "use_fp16_arithmetic": False, "use_int8_inference": False}
NCNN_PRECISIONS: dict[str, dict[str, bool]] = {
    "fp32": dict(_OFF),
    "bf16": dict(_OFF, use_bf16_storage=True, use_bf16_packed=True),
    # bf16 compute, weights stored as 8-bit k-means codebooks (ncnn_format.codebook_weights): bf16's speed with a
    # file about a quarter of fp32's
    "bf16-w8": dict(_OFF, use_bf16_storage=True, use_bf16_packed=True),
    "fp16": dict(_OFF, use_fp16_storage=True, use_fp16_packed=True, use_fp16_arithmetic=True),
    "int8": dict(_OFF, use_int8_inference=True),
    "int8-bf16": dict(_OFF, use_int8_inference=True, use_bf16_storage=True, use_bf16_packed=True),
    # int8 with the layers whose int8 input hurts most left in bf16, found on the calibration samples
    "int8-mixed": dict(_OFF, use_int8_inference=True, use_bf16_storage=True, use_bf16_packed=True),
}
CONVERT_TIMEOUT = 300.0
CALIB_TIMEOUT = 600.0


def _import_ncnn():
    if importlib.util.find_spec("ncnn") is None:
        raise EngineUnavailableError(f"engine ncnn needs the ncnn package, which is not installed. Run {INSTALL_HINT}.")
    import ncnn

    return ncnn


def _pnnx_binary() -> str:
    spec = importlib.util.find_spec("pnnx")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
        if p.exists():
            return str(p)
    p = shutil.which("pnnx")
    if p:
        return p
    raise EngineUnavailableError(f"converting to ncnn needs pnnx, which is not installed. Run {INSTALL_HINT}.")


class NcnnRunner:
    """Runs an ncnn param/bin pair. Shapes may change per call; batches run sample by sample (ncnn has no batch)."""

    def __init__(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> None:
        from .base import thread_policy

        tp = thread_policy(policy)
        self.policy = policy
        ncnn = _import_ncnn()
        meta = read_meta(artifact, "ncnn")
        self.meta = meta
        self.input_names, self.output_names = list(meta["inputs"]), list(meta["outputs"])
        self._in, self._out = list(meta["ncnn_inputs"]), list(meta["ncnn_outputs"])
        self._ncnn = ncnn
        net = ncnn.Net()
        net.opt.num_threads = int(threads)
        net.opt.use_vulkan_compute = False
        # Reaches LLVM/Intel OpenMP builds only; GCC's libgomp (the PyPI wheel) spins per OMP_WAIT_POLICY, which
        # must be in the environment before ncnn is imported (the benchmark worker sets it).
        if hasattr(net.opt, "openmp_blocktime"):
            net.opt.openmp_blocktime = int(tp["ncnn_openmp_blocktime"])
        for k, v in meta.get("options", {}).items():
            setattr(net.opt, k, bool(v))
        param = Path(artifact).with_suffix(".param")
        if net.load_param(str(param)) != 0 or net.load_model(str(artifact)) != 0:
            raise EngineError(f"{artifact}: ncnn could not load {param.name}/{Path(artifact).name}. Convert the model again.")
        self._net = net

    def _run_one(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        ncnn = self._ncnn
        ex = self._net.create_extractor()
        # Input Mats wrap the numpy buffers: keep both alive until extraction is done.
        keep = [np.ascontiguousarray(x, dtype=np.float32) for x in xs]
        mats = [ncnn.Mat(k) for k in keep]
        for name, m in zip(self._in, mats):
            ex.input(name, m)
        outs = []
        for name in self._out:
            ret, m = ex.extract(name)
            if ret != 0:
                raise EngineError(f"ncnn failed to compute output {name} (code {ret}). Check the input shape.")
            # Copy while the Mat is alive: a view outlives the Mat's memory once the extractor is released.
            outs.append(np.array(m, dtype=np.float32, copy=True))
        del ex, mats, keep
        return outs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        xs = [np.asarray(feeds[n], np.float32) for n in self.input_names]
        n = xs[0].shape[0]
        per = [self._run_one([x[i] for x in xs]) for i in range(n)]
        return [np.stack([p[j] for p in per]).reshape((n, *per[0][j].shape)) for j in range(len(self._out))]


def _onnx_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _pnnx_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exact affine folds without an opset upgrade (see the module note)."""
    from ..graph import constants_to_initializers, fold_affine_into_pointwise_conv, fold_conv_affine

    try:
        m = constants_to_initializers(model)
        m, _ = fold_conv_affine(m)
        m, _ = fold_affine_into_pointwise_conv(m)
        return m
    except Exception:  # a fold meeting an unexpected graph: convert the model as given
        return model


def _shapes(model: onnx.ModelProto, inputs: list[str], sample: Feeds | None) -> tuple[list[list[int]], list[list[int]]]:
    """Two example shapes per input for pnnx: the last dynamic dim differs between them, so pnnx keeps it dynamic
    (OCR line widths); other dims take the example's value (PP-OCR's head needs height 48, so a doubled height
    fails). Examples come from a sample feed, else 1 (batch) / 32."""
    by_name = {i.name: i for i in model.graph.input}
    first, second = [], []
    for name in inputs:
        dims = by_name[name].type.tensor_type.shape.dim
        dyn = [not d.dim_value > 0 for d in dims]
        if sample is not None and name in sample:
            shape = [int(s) for s in np.shape(sample[name])]
        else:
            shape = [d.dim_value if d.dim_value > 0 else (1 if i == 0 else 32) for i, d in enumerate(dims)]
        first.append(shape)
        last = max((i for i in range(1, len(dyn)) if dyn[i]), default=None)
        second.append([s * 2 if i == last else s for i, s in enumerate(shape)])
    return first, second


_PNNX_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.DOUBLE: "f64",
               onnx.TensorProto.INT64: "i64", onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT8: "i8",
               onnx.TensorProto.UINT8: "u8", onnx.TensorProto.BOOL: "b"}


def _pnnx_types(model: onnx.ModelProto, inputs: list[str]) -> list[str]:
    """pnnx's type suffix of each input's example shape (token ids are i64: a f32 example fails the conversion)."""
    by_name = {i.name: i for i in model.graph.input}
    return [_PNNX_TYPES.get(by_name[n].type.tensor_type.elem_type, "f32") for n in inputs]


def calibrate_blobs(param: str, binf: str, feeds_file: str, layers: list[str], bottoms: list[str],
                    calibrator: str = "percentile", threads: int = 2) -> dict:
    """Run in a child process: stream calibration feeds through the fp32 ncnn net, range of each layer's input."""
    import ncnn

    from ..quant.calibrate import get_calibrator

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    net.opt.lightmode = False
    for k, v in NCNN_PRECISIONS["fp32"].items():
        setattr(net.opt, k, v)
    net.load_param(param)
    net.load_model(binf)
    cal = get_calibrator(calibrator)
    z = np.load(feeds_file)
    keys = sorted(z.files, key=lambda k: int(k.split("_")[0]))

    def blobs(sample_keys):
        """(blob name, its values) for every wanted blob of every sample, one extractor per sample."""
        for k in sample_keys:
            ex = net.create_extractor()
            x = np.ascontiguousarray(z[k], np.float32)  # the Mat wraps this buffer: keep it alive while extracting
            m = ncnn.Mat(x)
            ex.input("in0", m)
            for blob in dict.fromkeys(bottoms):
                ret, o = ex.extract(blob)
                if ret == 0:
                    yield blob, np.array(o, dtype=np.float32, copy=True)
            del ex, m, x

    for blob, a in blobs(keys):
        cal.update(blob, a)
    res = {}
    for layer, blob in zip(layers, bottoms):
        lo, hi = cal.range(blob)
        t = max(abs(lo), abs(hi))
        res[layer] = 127.0 / t if t > 0 else 1.0
    # second pass: how much int8 hurts each layer's input (SQNR of symmetric int8 at the chosen scale), the ranking
    # `int8-mixed` falls back by
    sig: dict[str, float] = {}
    err: dict[str, float] = {}
    scale_of = {blob: res[layer] for layer, blob in zip(layers, bottoms)}
    for blob, a in blobs(keys[: max(8, len(keys) // 4)]):
        a = a.astype(np.float64)
        q = np.clip(np.rint(a * scale_of[blob]), -127, 127) / scale_of[blob]
        sig[blob] = sig.get(blob, 0.0) + float((a * a).sum())
        err[blob] = err.get(blob, 0.0) + float(((a - q) ** 2).sum())
    sqnr = {layer: round(10 * np.log10(max(sig.get(b, 0.0), 1e-30) / max(err.get(b, 0.0), 1e-30)), 2)
            for layer, b in zip(layers, bottoms)}
    return {"scale": res, "sqnr": sqnr}


def _meta(precision: str, inputs: list[str], outputs: list[str]) -> dict:
    return {"engine": "ncnn", "precision": precision, "inputs": inputs, "outputs": outputs,
            "ncnn_inputs": [f"in{i}" for i in range(len(inputs))],
            "ncnn_outputs": [f"out{i}" for i in range(len(outputs))], "options": NCNN_PRECISIONS[precision]}


def fewest_kept(order: list[str], trial_fn, work: Path, budget: float) -> tuple[int, list[dict]]:
    """The fewest leading entries of `order` to keep at the higher precision so the model stays within budget on
    the calibration samples: doubling, then up to three bisection steps. `trial_fn(k, artifact_path)` builds the
    model keeping `order[:k]` and returns `(metric drop, fidelity)`. Returns (k, the trials)."""
    trials: list[dict] = []

    def trial(k: int) -> bool:
        drop, fid = trial_fn(k, work / f"trial{k}.ncnn.bin")
        trials.append({"kept_layers": k, "calib_drop": round(float(drop), 5), **{f: round(v, 5) for f, v in fid.items()}})
        return drop <= budget / 2 and fid.get("metric_vs_fp32", 0.0) <= 2 * budget

    steps = [0] + [2**i for i in range(0, 12) if 2**i < len(order)] + [len(order)]
    chosen, lo = len(order), -1
    for k in steps:
        if trial(k):
            chosen = k
            break
        lo = k
    hi = chosen
    for _ in range(3):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if trial(mid):
            hi = mid
        else:
            lo = mid
    return hi, trials


@register_engine("ncnn")
class NcnnEngine(Engine):
    name = "ncnn"
    suffix = ".ncnn.bin"
    # bf16-w8 is not a default: it runs at bf16's speed, so under the default objective bf16 (closer to fp32) wins the
    # tie anyway, and its search adds about ten scored trials to every run. On PP-OCRv4 it gives 4.27 MB vs 5.47 MB at
    # the original's CER (benchmarks/ncnn_codebook.py); ask for it with --engine-precisions ncnn:bf16-w8 (with
    # --objective size it is then the pick).
    default_precisions = ("fp32", "bf16", "int8-mixed")
    package = "ncnn"
    # ncnn's runtime finds the .param by replacing the .bin's last suffix, so the pair keeps the `model.ncnn.` stem
    model_files = {"param": "model.ncnn.param", "bin": "model.ncnn.bin"}
    main_role = "bin"
    roles = {"param": "ncnn graph (.param)", "bin": "ncnn weights (.bin)"}

    def deploy_layout(self, artifact: Path, source=None) -> dict:
        meta = read_meta(artifact, self.name)
        inputs, outputs = io_from_meta(meta, source)
        copies = {artifact: "model.ncnn.bin", artifact.with_suffix(".param"): "model.ncnn.param",
                  meta_path(artifact): "model.ncnn.bin.json"}
        options = {"use_vulkan_compute": False, **{k: bool(v) for k, v in meta.get("options", {}).items()}}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs,
                "note": "ncnn has no batch axis: feed each sample's CHW array to the ncnn_blob of each input, "
                        "read outputs from the ncnn_blob of each output"}

    def bare_files(self, path: Path) -> dict[str, str] | None:
        return sidecar_files(path, self.name, {"bin": path.name, "param": path.with_suffix(".param").name})

    def available(self) -> bool:
        return importlib.util.find_spec("ncnn") is not None and importlib.util.find_spec("pnnx") is not None

    def version(self) -> str:
        return getattr(_import_ncnn(), "__version__", "?")

    def precisions(self) -> tuple[str, ...]:
        return tuple(NCNN_PRECISIONS)

    def needs_calibration(self, precision: str) -> bool:
        return precision.startswith("int8")

    def artifact_files(self, artifact: Path) -> list[Path]:
        artifact = Path(artifact)
        return [artifact, artifact.with_suffix(".param")]

    def searches(self, precision: str) -> bool:
        return precision in ("int8-mixed", "bf16-w8")

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32",
                calib_feeds: Iterable[Feeds] | None = None, calibrator: str = "percentile", calib_limit: int = 64,
                score=None, budget: float = 0.005) -> Path:
        """Write `<out>` (weights, `.ncnn.bin`), `<out>.param` beside it (suffix replaced) and the `.json` sidecar.

        `int8-mixed` needs `score(artifact) -> (metric drop, fidelity)` on the calibration samples: the layers are
        ranked by the SQNR of their int8 input, and the fewest most-hurt layers are left in bf16 (doubling, then
        bisection) until the drop is within half the `budget`."""
        self.check_precision(precision)
        _import_ncnn()
        pnnx = _pnnx_binary()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        inputs, outputs = _onnx_names(model)
        feeds_iter = iter(calib_feeds) if calib_feeds is not None else None
        first = next(feeds_iter, None) if feeds_iter is not None else None
        if self.needs_calibration(precision) and first is None:
            raise ConversionError(f"ncnn {precision} needs calibration feeds. Pass calib_feeds, or use precision bf16.")
        shapes, shapes2 = _shapes(model, inputs, first)
        info: dict = {}
        with tempfile.TemporaryDirectory(prefix="edgeslim-ncnn-") as d:
            d = Path(d)
            src = d / "model.onnx"
            onnx.save(_pnnx_input(model), str(src))
            # reduced precisions store weights in fp16 (half the file; ncnn widens or narrows them at load), so
            # "smaller" is true of the delivered file; fp32 keeps fp32 weights so it stays exact
            fp16 = "0" if precision == "fp32" else "1"
            types = _pnnx_types(model, inputs)  # pnnx checks each example's type against the graph's
            argv = [pnnx, src.name, "inputshape=" + ",".join(f"[{','.join(map(str, s))}]{t}" for s, t in zip(shapes, types)),
                    f"fp16={fp16}"]
            if shapes2 != shapes:  # a second shape tells pnnx which dims vary (OCR widths)
                argv.append("inputshape2=" + ",".join(f"[{','.join(map(str, s))}]{t}" for s, t in zip(shapes2, types)))
            run = run_tool(argv, CONVERT_TIMEOUT, cwd=d)
            param, binf = d / "model.ncnn.param", d / "model.ncnn.bin"
            if not run.ok or not param.exists() or not binf.exists():
                raise ConversionError(describe_failure(run, "pnnx", CONVERT_TIMEOUT) + ".")
            bad = _unsupported_layers(param)
            if bad:
                raise ConversionError(f"pnnx left ops ncnn cannot run: {', '.join(bad[:5])}. Convert the model at its "
                                      "original opset (pass the original model, not one upgraded to opset >= 14).")
            param_text = param.read_text()
            if precision.startswith("int8"):
                _, layers = _parse_param(param_text)
                q = [L for L in layers if L.type in _QUANT_TYPES]
                feeds = [first] + [f for _, f in zip(range(calib_limit - 1), feeds_iter)]
                arrays = {}
                for f in feeds:
                    x = np.asarray(f[inputs[0]], np.float32)
                    for k in range(x.shape[0]):
                        arrays[f"{len(arrays)}_s"] = x[k]
                np.savez(d / "calib.npz", **arrays)
                cal = call_function("edgeslim.engines.ncnn:calibrate_blobs", {
                    "param": str(param), "binf": str(binf), "feeds_file": str(d / "calib.npz"),
                    "layers": [L.name for L in q], "bottoms": [L.bottoms[0] for L in q], "calibrator": calibrator},
                    CALIB_TIMEOUT, d, "ncnn calibration")
                bottom = cal["scale"]
                table = out.with_name(out.name.replace(".ncnn.bin", "") + ".table")
                weights = weight_scales(param_text, binf.read_bytes())
                write_table(table, weights, bottom)
                fp32_text, fp32_bin = param_text, binf.read_bytes()

                def build(exclude: set[str], dest_param: Path, dest_bin: Path) -> list[str]:
                    sub = d / "sub.table"
                    write_table(sub, {k: v for k, v in weights.items() if k not in exclude},
                                {k: v for k, v in bottom.items() if k not in exclude})
                    text, data, done_ = quantize_int8(fp32_text, fp32_bin, sub)
                    dest_param.write_text(text)
                    dest_bin.write_bytes(data)
                    return done_

                info = {"calibration": {"samples": len(arrays), "calibrator": calibrator, "table": table.name}}
                exclude: set[str] = set()
                if precision == "int8-mixed" and score is not None:
                    order = sorted(bottom, key=lambda k: cal["sqnr"].get(k, 1e9))
                    meta = _meta(precision, inputs, outputs)
                    hi, trials = fewest_kept(order, lambda k, tb: (build(set(order[:k]), tb.with_suffix(".param"), tb),
                                                                   write_meta(tb, meta), score(tb))[-1], d, budget)
                    exclude = set(order[:hi])
                    info.update(search=trials, bf16_layers=sorted(exclude),
                                sensitivity=[{"layer": k, "input_sqnr_db": cal["sqnr"].get(k)} for k in order])
                done = build(exclude, param, binf)
                param_text = param.read_text()
                info["int8_layers"] = len(done)
            if precision.endswith("-w8"):
                src_bin = binf.read_bytes()
                codes = codebooks(param_text, src_bin)  # once: every trial reuses them
                errors = codebook_errors(codes)
                order = sorted(errors, key=lambda k: -errors[k])  # the worst-coded layers stay fp16 first
                keep: set[str] = set()
                if score is not None:
                    meta = _meta(precision, inputs, outputs)

                    def coded(k: int, tb: Path):
                        tb.write_bytes(codebook_weights(param_text, src_bin, skip=set(order[:k]), codes=codes)[0])
                        tb.with_suffix(".param").write_text(param_text)
                        write_meta(tb, meta)
                        return score(tb)

                    hi, trials = fewest_kept(order, coded, d, budget)
                    keep = set(order[:hi])
                    info["search"] = trials
                data, info["codebook"] = codebook_weights(param_text, src_bin, skip=keep, codes=codes)
                info["codebook"]["fp16_layers"] = sorted(keep)
                binf.write_bytes(data)
            out.write_bytes(binf.read_bytes())
            out.with_suffix(".param").write_text(param_text)
        n_in = len(inputs)
        write_meta(out, {"engine": "ncnn", "precision": precision, "inputs": inputs, "outputs": outputs,
                         "ncnn_inputs": [f"in{i}" for i in range(n_in)],
                         "ncnn_outputs": [f"out{i}" for i in range(len(outputs))],
                         "options": NCNN_PRECISIONS[precision], "convert_shapes": shapes, **info})
        return out

    def load(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> NcnnRunner:
        artifact = Path(artifact)
        if not artifact.exists() or not artifact.with_suffix(".param").exists():
            raise EngineError(f"{artifact}: ncnn model (.bin + .param) not found. Convert one with `edgeslim convert --to ncnn`.")
        return NcnnRunner(artifact, threads, policy)
