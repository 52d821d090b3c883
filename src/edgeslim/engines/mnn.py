"""MNN engine (Alibaba's mobile engine; Jiang et al., "MNN: A Universal and Efficient Inference Engine", MLSys 2020).

Conversion runs MNN's converter in a child process through the wheel's native `_tools` module, never through the
`mnnconvert`/`mnnquant` console scripts: those import `MNN.tools.utils.log`, which runs
`pip install -U aliyun-log-python-sdk` when that package is missing (that SDK pins protobuf<6 and breaks
`import onnx`) and then uploads usage logs. The `mnnquant` script also crashes on every model
(std::length_error): it passes three strings to `_tools.mnnquant`, whose C side expects one argv list
(`PyList_Size` of a str is -1 -> `std::vector<const char*>(-1)`). Called with an argv list it works.

Precisions: `fp32`; `low` (MNN precision low: fp16 arithmetic where the CPU has it, fp32 elsewhere);
`bf16` (precision lowBF16, where the build has it); `w8`/`w4` (weights stored in 8/4 bits; loaded with memory=low
so MNN computes with dynamically quantized int8 activations); `int8` (full int8: edgeslim's own static int8
recipe, per-channel QDQ with its calibrators, which MNN's converter turns into int8 layers); `int8-mnnquant`
(MNN's own quantizer fed with the calibration inputs as images; kept for comparison: on PP-OCRv4 its KL ranges
collapse the output, CER 1.0, and its EMA/ADMM methods crash the tool).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from ..policy import ThreadPolicy
from . import register_engine
from ._subprocess import describe_failure, run_python
from ._io import io_from_meta
from .base import (INSTALL_HINT, ConversionError, Engine, EngineError, EngineUnavailableError, Feeds, meta_path, read_meta,
                   sidecar_files, write_meta)

__all__ = ["MnnEngine", "MnnRunner", "MNN_PRECISIONS"]

# precision -> (converter flags, runtime precision, runtime memory mode)
MNN_PRECISIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "fp32": ((), "normal", "normal"),
    "low": (("--fp16",), "low", "normal"),  # fp16 weight storage: half the file
    "bf16": (("--fp16",), "lowBF16", "normal"),
    "w8": (("--weightQuantBits", "8"), "normal", "low"),
    "w4": (("--weightQuantBits", "4", "--weightQuantBlock", "32"), "normal", "low"),
    "int8": ((), "normal", "normal"),
    "int8-mnnquant": ((), "normal", "normal"),
}
CONVERT_TIMEOUT = 300.0
QUANT_TIMEOUT = 600.0

_CONVERT = "import sys, _tools; _tools.mnnconvert(['mnnconvert'] + sys.argv[1:])"
_QUANT = "import sys, _tools; _tools.mnnquant(['mnnquant'] + sys.argv[1:])"


@contextlib.contextmanager
def _quiet_stdout():
    """MNN's native code prints a CPU-feature line to fd 1 at import; the library never prints."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def _import_mnn():
    if importlib.util.find_spec("MNN") is None:
        raise EngineUnavailableError(f"engine mnn needs the MNN package, which is not installed. Run {INSTALL_HINT}.")
    with _quiet_stdout():
        import MNN  # noqa: F401
        import MNN.expr
        import MNN.nn
    return MNN


class MnnRunner:
    """Runs an .mnn module; inputs may change shape on every call (OCR line widths)."""

    def __init__(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> None:
        # MNN's CPU pool has no spin/sleep knob: the PyPI wheel runs its own ThreadPool (not OpenMP), which wakes
        # for each run and parks right after it (measured: ~0 idle CPU after a run with power normal or high), and
        # neither the config's "power" nor any set_hint() mode keeps it spinning. The policy is recorded, and the
        # benchmark worker still sets OMP_WAIT_POLICY for builds that use OpenMP.
        from .base import thread_policy

        thread_policy(policy)  # validates the name
        self.policy = policy
        MNN = _import_mnn()
        meta = read_meta(artifact, "mnn")
        self.meta = meta
        self.input_names, self.output_names = list(meta["inputs"]), list(meta["outputs"])
        cfg = {"backend": "CPU", "precision": meta.get("runtime_precision", "normal"), "numThread": int(threads)}
        if meta.get("memory", "normal") != "normal":
            cfg["memory"] = meta["memory"]
        self._F = MNN.expr
        with _quiet_stdout():
            self._rt = MNN.nn.create_runtime_manager((cfg,))
            self._net = MNN.nn.load_module_from_file(str(artifact), self.input_names, self.output_names,
                                                     runtime_manager=self._rt, shape_mutable=True)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        F = self._F
        inputs = []
        for name in self.input_names:  # integer inputs (token ids) as int32, MNN's integer type; a float feed fails
            x = np.asarray(feeds[name])  # the shape computation of such graphs ("Compute Shape Error", no outputs)
            if np.issubdtype(x.dtype, np.integer):
                x = np.ascontiguousarray(x, dtype=np.int32)
                inputs.append(F.const(x, list(x.shape), F.NCHW, F.int))
            else:
                x = np.ascontiguousarray(x, dtype=np.float32)
                inputs.append(F.const(x, list(x.shape), F.NCHW))
        outs = self._net.forward(inputs)
        res = []
        for o in outs:
            if o.data_format == F.NC4HW4:
                o = F.convert(o, F.NCHW)
            res.append(np.array(o.read(), dtype=np.float32, copy=True))
        return res


def _onnx_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _calib_images(feeds: Iterable[Feeds], input_name: str, folder: Path, limit: int = 64, method: str = "KL") -> dict:
    """Write calibration feeds as 8-bit images plus the (mean, normal) that maps them back onto the feeds.

    MNN's quantizer reads calibration data as images and applies dst = (src - mean) * normal; a linear map of
    the feeds' own range onto 0..255 makes that reproduce the feeds to 8-bit precision, whatever the model's
    normalisation was.
    """
    import cv2

    xs = []
    for f in feeds:
        x = np.asarray(f[input_name], np.float32)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConversionError(f"mnn int8: input {input_name!r} has shape {list(x.shape)}; MNN's quantizer takes "
                                  "1- or 3-channel NCHW image inputs. Use precision w8 instead.")
        xs.extend(x)
        if len(xs) >= limit:
            break
    if not xs:
        raise ConversionError("mnn int8 needs calibration feeds. Pass calib_feeds (the CLI uses the task's calibration lines).")
    lo = min(float(x.min()) for x in xs)
    hi = max(float(x.max()) for x in xs)
    normal = (hi - lo) / 255.0 if hi > lo else 1.0
    mean = -lo / normal
    folder.mkdir(parents=True, exist_ok=True)
    widths = []
    for i, x in enumerate(xs):
        img = np.clip(np.rint((x - lo) / normal), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        cv2.imwrite(str(folder / f"{i:05d}.png"), img)
        widths.append(x.shape[2])
    h = int(xs[0].shape[1])
    w = int(np.bincount(widths).argmax())
    c = int(xs[0].shape[0])
    return {"format": "BGR" if c == 3 else "GRAY", "mean": [mean] * c, "normal": [normal] * c, "width": w, "height": h,
            "path": str(folder) + "/", "used_image_num": len(xs), "feature_quantize_method": method,
            "weight_quantize_method": "MAX_ABS", "batch_size": 1}


def _qdq_int8(model: onnx.ModelProto, feeds: list[Feeds]) -> tuple[onnx.ModelProto, dict]:
    """edgeslim's static int8 recipe (per-channel QDQ, its own calibrators) on the prepared model."""
    from ..recipes import RecipeContext, get_recipe
    from ..graph import prepare

    if not feeds:
        raise ConversionError("mnn int8 needs calibration feeds. Pass calib_feeds, or use precision w8.")
    prepared, rewrites = prepare(model)
    out = get_recipe("int8").apply(RecipeContext(model=prepared, original=model, calib_feeds=lambda: iter(feeds),
                                                 rewrites=rewrites, calib_count=len(feeds)))
    info = {k: v for k, v in out.info.items() if isinstance(v, (str, int, float))}
    return out.model, {"int8": {"method": "edgeslim int8 recipe (QDQ)", **info}}


def _int8_storage_note(model: onnx.ModelProto, stored: int) -> dict:
    """Whether MNN really stored int8 weights. Its converter turns some QDQ graphs into int8 layers and keeps others
    as float layers with fake quantization (PP-OCRv4: 10.88 MB for 10.85 MB of fp32 weights, no faster than fp32):
    the candidate says which it is instead of passing as int8."""
    floats = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    ints = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    weights = max(floats + ints * 4, 1)
    if stored > 0.6 * weights:
        return {"int8_weights": False,
                "note": f"MNN stored float weights ({stored / 1e6:.2f} MB for {weights / 1e6:.2f} MB of fp32 weights): "
                        "it runs the QDQ model with fake quantization, not int8 kernels"}
    return {"int8_weights": True}


@register_engine("mnn")
class MnnEngine(Engine):
    name = "mnn"
    suffix = ".mnn"
    # low/bf16 give fp32 results on x86 builds without fp16/bf16 kernels, so they are not tried by default
    default_precisions = ("fp32", "int8")
    package = "MNN"
    model_files = {"mnn": "model.mnn"}
    main_role = "mnn"
    roles = {"mnn": "mnn model"}

    def deploy_layout(self, artifact: Path, source=None) -> dict:
        meta = read_meta(artifact, self.name)
        inputs, outputs = io_from_meta(meta, source)
        copies = {artifact: "model.mnn", meta_path(artifact): "model.mnn.json"}
        options = {"backend": "CPU", "precision": meta.get("runtime_precision", "normal"), "memory": meta.get("memory", "normal")}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs}

    def bare_files(self, path: Path) -> dict[str, str] | None:
        return sidecar_files(path, self.name, {"mnn": path.name})

    def available(self) -> bool:
        return importlib.util.find_spec("MNN") is not None

    def version(self) -> str:
        return _import_mnn().version()

    def precisions(self) -> tuple[str, ...]:
        return tuple(MNN_PRECISIONS)

    def needs_calibration(self, precision: str) -> bool:
        return precision.startswith("int8")

    def artifact_files(self, artifact: Path) -> list[Path]:
        return [Path(artifact)]

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32",
                calib_feeds: Iterable[Feeds] | None = None, feature_method: str = "KL") -> Path:
        """Write the .mnn model and its .json sidecar. `feature_method`: MNN's activation range method for int8
        (KL, ADMM or EMA)."""
        self.check_precision(precision)
        if not self.available():
            _import_mnn()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        flags, rt_precision, memory = MNN_PRECISIONS[precision]
        inputs, outputs = _onnx_names(model)
        info: dict = {}
        if precision == "int8":
            if calib_feeds is None:
                raise ConversionError("mnn int8 needs calibration feeds. Pass calib_feeds, or use precision w8.")
            model, info = _qdq_int8(model, list(calib_feeds))
        with tempfile.TemporaryDirectory(prefix="edgeslim-mnn-") as d:
            d = Path(d)
            src = d / "model.onnx"
            onnx.save(model, str(src))
            fp = d / "model.mnn"
            run = run_python(_CONVERT, ["-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(fp), "--bizCode",
                                        "edgeslim", *flags], CONVERT_TIMEOUT, cwd=d)
            if not run.ok or not fp.exists():
                raise ConversionError(describe_failure(run, "mnn converter", CONVERT_TIMEOUT) + ".")
            if precision == "int8-mnnquant":
                if calib_feeds is None:
                    raise ConversionError("mnn int8 needs calibration feeds. Pass calib_feeds, or use precision w8.")
                cfg = _calib_images(calib_feeds, inputs[0], d / "calib", method=feature_method)
                cfg_file = d / "quant.json"
                cfg_file.write_text(json.dumps(cfg))
                q = d / "int8.mnn"
                run = run_python(_QUANT, [str(fp), str(q), str(cfg_file)], QUANT_TIMEOUT, cwd=d)
                if not run.ok or not q.exists():
                    raise ConversionError(describe_failure(run, "mnn quantizer", QUANT_TIMEOUT) + ".")
                fp = q
                info["calibration"] = {k: cfg[k] for k in ("used_image_num", "width", "height", "feature_quantize_method")}
            if precision.startswith("int8"):
                info.update(_int8_storage_note(model, fp.stat().st_size))
            shutil.move(str(fp), str(out))
        write_meta(out, {"engine": "mnn", "precision": precision, "inputs": inputs, "outputs": outputs,
                         "runtime_precision": rt_precision, "memory": memory, **info})
        return out

    def load(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> MnnRunner:
        artifact = Path(artifact)
        if not artifact.exists():
            raise EngineError(f"{artifact}: MNN model not found. Convert one with `edgeslim convert --to mnn`.")
        return MnnRunner(artifact, threads, policy)
