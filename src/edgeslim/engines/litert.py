"""LiteRT engine (TensorFlow Lite runtime, `ai-edge-litert`, XNNPACK CPU kernels), converting ONNX with onnx2tf.

Conversion runs onnx2tf (ONNX -> TensorFlow -> .tflite) in a child process: TensorFlow takes seconds and gigabytes to
import and can abort the process, so the parent never imports it. onnx2tf needs static shapes (the PP-OCRv4
recognizer's attention MatMul fails on its dynamic width), so the input shape is fixed before conversion: from
`input_shapes=` when given, else from the first calibration feed with batch 1. The model then runs only at that shape:
the runner zero-pads a smaller feed at the end of each axis (right/bottom; the OCR recognizer pads lines to a fixed
width the same way), runs a batch of N as N single-sample invocations, and refuses a larger feed.

onnx2tf transposes channel-first tensors to channel-last and may reorder outputs; the sidecar records, for each ONNX
input and output, its tflite tensor and the transpose between the two layouts, found by running the converted model
against onnxruntime on the first calibration feed, so outputs come back in the ONNX model's order and layout.

onnx2tf downloads a sample-image file from the internet to validate 4-D image models and to calibrate int8 when not
given data; the child hands it edgeslim's calibration feeds instead and refuses every network connection.

Precisions: `fp32`; `fp16` (fp16 weights, dequantized at load: XNNPACK computes in fp32 unless the CPU has fp16
arithmetic); `dr-int8` (dynamic-range: int8 weights, activations quantized on the fly); `int8` (full integer kernels
calibrated on edgeslim's feeds, float32 input and output; it may collapse a model's accuracy, which the task metric
then rejects). One onnx2tf run writes fp32, fp16 and dr-int8 together, so converting the same model at several of
them reuses that run within a process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from . import register_engine
from ._io import io_from_meta
from ._subprocess import call_function
from .base import (ConversionError, Engine, EngineError, EngineUnavailableError, Feeds, meta_path, read_meta, sidecar_files,
                   thread_policy, write_meta)

__all__ = ["LiteRtEngine", "LiteRtRunner", "LITERT_PRECISIONS"]

# precision -> the file suffix onnx2tf gives that variant
LITERT_PRECISIONS: dict[str, str] = {
    "fp32": "float32",
    "fp16": "float16",
    "dr-int8": "dynamic_range_quant",
    "int8": "integer_quant",  # int8 kernels with float32 I/O (onnx2tf's `full_integer_quant` also makes the I/O int8)
}
CONVERT_TIMEOUT = 1200.0
CALIB_LIMIT = 64
INSTALL = "pip install 'edgeslim[litert]'"
RUNTIME_NOTE = ("static input shape: zero-pad each input at the end of every axis (right/bottom) up to fixed_shape, "
                "run one sample per invocation, transpose inputs by tflite_perm (ONNX -> tflite layout) and outputs by "
                "tflite_perm (tflite -> ONNX layout)")


def _import_litert():
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise EngineUnavailableError(f"engine litert needs the ai-edge-litert package, which is not installed. Run {INSTALL}.")
    from ai_edge_litert import interpreter

    return interpreter


def _onnx_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _fixed_shapes(model: onnx.ModelProto, inputs: list[str], given: dict | None, sample: Feeds | None) -> dict[str, list[int]]:
    by_name = {i.name: i for i in model.graph.input}
    shapes = {}
    for name in inputs:
        dims = [d.dim_value if d.dim_value > 0 else None for d in by_name[name].type.tensor_type.shape.dim]
        if given and name in given:
            shape = [int(s) for s in given[name]]
        elif sample is not None and name in sample:
            shape = [1, *[int(s) for s in np.shape(sample[name])[1:]]]
        elif all(d is not None for d in dims):
            shape = list(dims)
        else:
            raise ConversionError(f"litert needs a static shape for input {name!r} (ONNX shape {dims}). Pass calib_feeds "
                                  "(the first one fixes the shape) or input_shapes={name: [1, ...]}.")
        if dims and dims[0] not in (None, 1):
            raise ConversionError(f"litert runs one sample per invocation, but input {name!r} has a fixed batch of "
                                  f"{dims[0]}. Export the ONNX model with batch 1 or a dynamic batch.")
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], shape[1:])):
            raise ConversionError(f"litert: shape {shape} for input {name!r} does not fit the model's {dims}. "
                                  "Pass a shape of the model's rank with its fixed dims.")
        shapes[name] = shape
    return shapes


def pad_to(x: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    """Zero-pad `x` at the end of each axis up to `shape`; a larger or other-rank `x` is an EngineError."""
    if list(x.shape) == list(shape):
        return x
    if x.ndim != len(shape) or any(a > b for a, b in zip(x.shape, shape)):
        raise EngineError(f"litert: input {name!r} has shape {list(x.shape)} but this model was converted at the fixed "
                          f"shape {list(shape)}. Convert it at a larger shape (input_shapes={{{name!r}: [...]}}).")
    return np.pad(x, [(0, b - a) for a, b in zip(x.shape, shape)])


def _calib_arrays(feeds: list[Feeds], shapes: dict[str, list[int]]) -> tuple[dict[str, np.ndarray], int]:
    """Per input, the calibration samples padded to the fixed shape (samples larger than it are left out)."""
    rows: dict[str, list[np.ndarray]] = {n: [] for n in shapes}
    for f in feeds:
        xs = {n: np.asarray(f[n]) for n in shapes}
        for i in range(len(next(iter(xs.values())))):
            try:
                padded = {n: pad_to(x[i : i + 1], shapes[n], n) for n, x in xs.items()}
            except EngineError:
                continue
            for n, p in padded.items():
                rows[n].append(p)
        if len(rows[next(iter(shapes))]) >= CALIB_LIMIT:
            break
    count = len(rows[next(iter(shapes))])
    return {n: np.concatenate(r) for n, r in rows.items() if r}, count


def _channel_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1] if rank >= 3 else list(range(rank))


# ---- child process side -------------------------------------------------------------------------------------------

_NETWORK_ATTEMPTS: list[str] = []


def _block_network() -> None:
    """onnx2tf fetches sample data with `requests` when it lacks data of its own: fail any such attempt at once (and
    count it: the result reports attempts, so a test can tell a patched-away download from a blocked one)."""
    import socket

    def refuse(self, *a, **k):
        if self.family != getattr(socket, "AF_UNIX", None):
            _NETWORK_ATTEMPTS.append(repr(a[:1]))
            raise OSError("edgeslim: network access is blocked during litert conversion")
        return _connect(self, *a, **k)

    _connect = socket.socket.connect
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse


def _perms(src: list[int], dst: list[int]) -> list[list[int]]:
    """Axis orders p with [src[i] for i in p] == dst."""
    return [list(p) for p in itertools.permutations(range(len(src))) if [src[i] for i in p] == list(dst)]


def _io_map(tflite: str, onnx_path: str, feed: dict[str, np.ndarray]) -> dict:
    """Which tflite tensor (and transpose) is each ONNX input and output: inputs by name (layout: onnx2tf's
    channel-last where the shape allows), outputs by comparing with onnxruntime on `feed`."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_in = [i.name for i in sess.get_inputs()]
    ref = sess.run(None, feed)
    it = Interpreter(model_path=tflite, num_threads=1)
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != len(onnx_in) or len(outs) != len(ref):
        raise RuntimeError(f"the tflite model has {len(ins)} inputs / {len(outs)} outputs, the ONNX model "
                           f"{len(onnx_in)} / {len(ref)}")
    names = [d["name"].removeprefix("serving_default_").split(":")[0] for d in ins]
    inputs = []
    for j, name in enumerate(onnx_in):
        k = names.index(name) if name in names else j
        x = feed[name]
        shape = [int(s) for s in ins[k]["shape"]]
        perms = _perms(list(x.shape), shape)
        if not perms:
            raise RuntimeError(f"input {name}: tflite shape {shape} is no transpose of {list(x.shape)}")
        perm = _channel_last(x.ndim) if _channel_last(x.ndim) in perms else perms[0]
        it.set_tensor(ins[k]["index"], np.ascontiguousarray(x.transpose(perm)).astype(ins[k]["dtype"]))
        inputs.append({"name": name, "tensor": k, "perm": perm, "shape": list(x.shape)})
    it.invoke()
    got = [it.get_tensor(d["index"]).astype(np.float32) for d in outs]
    scored = []
    for j, r in enumerate(ref):
        for k, g in enumerate(got):
            for q in _perms(list(g.shape), list(r.shape)):
                d = g.transpose(q).astype(np.float64) - r
                scored.append((float(np.linalg.norm(d) / (np.linalg.norm(r) + 1e-12)), j, k, q, float(np.abs(d).max())))
    outputs: dict[int, dict] = {}
    used: set[int] = set()
    for err, j, k, q, max_abs in sorted(scored, key=lambda s: s[0]):
        if j not in outputs and k not in used:
            outputs[j] = {"name": sess.get_outputs()[j].name, "tensor": k, "perm": q, "rel_err": err, "max_abs_err": max_abs}
            used.add(k)
    if len(outputs) != len(ref):
        missing = [sess.get_outputs()[j].name for j in range(len(ref)) if j not in outputs]
        raise RuntimeError(f"no tflite output matches the shape of ONNX output(s) {missing}")
    return {"inputs": inputs, "outputs": [outputs[j] for j in range(len(ref))]}


def convert_child(onnx_path: str, workdir: str, shapes: dict, calib: dict, int8: bool) -> dict:
    """Run in a child process: onnx2tf on `onnx_path` at `shapes`; return each variant's file and I/O map, or
    {"error": one line}. `calib`: {input name: .npy of samples in the ONNX layout at the fixed shape}."""
    import contextlib
    import io
    import os
    import re
    import sys
    import traceback

    _block_network()
    os.chdir(workdir)  # onnx2tf writes beside its working directory
    # onnx2tf simplifies with the `onnxsim` command, found on PATH: the one installed beside this interpreter, also
    # when its environment is not activated
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    data = {n: np.load(p) for n, p in calib.items()}
    first = {n: a[:1] for n, a in data.items()}
    # onnx2tf takes data in the TensorFlow model's layout (channel-last)
    tf_files = []
    for n, a in data.items():
        f = os.path.join(workdir, f"calib_tf_{len(tf_files)}.npy")
        np.save(f, np.ascontiguousarray(a.transpose(_channel_last(a.ndim))))
        tf_files.append([n, f, 0.0, 1.0])
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            import onnx2tf
            import onnx2tf.onnx2tf as o2t
            from onnx2tf.utils import common_functions

            sample = tf_files[0][1]
            # its validation and auto-calibration sample images, replaced by the caller's data
            o2t.download_test_image_data = common_functions.download_test_image_data = lambda: np.load(sample)
            out = os.path.join(workdir, "tf")
            o2t.convert(input_onnx_file_path=onnx_path, output_folder_path=out,
                        overwrite_input_shape=[f"{n}:{','.join(str(s) for s in shape)}" for n, shape in shapes.items()],
                        output_dynamic_range_quantized_tflite=True, output_integer_quantized_tflite=int8,
                        custom_input_op_name_np_data_path=tf_files, non_verbose=True)
    except BaseException as e:  # onnx2tf reports an unconvertible op by printing it and calling sys.exit(1)
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.getvalue())
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line or "Error" in line or "not" in line.lower()]
        detail = next((line for line in reversed(errors) if "onnx_op_name" in line or "OP" in line), None)
        reason = str(e).strip().splitlines()[0] if not isinstance(e, SystemExit) and str(e).strip() else ""
        if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("onnx2tf.ops."):  # its per-op modules
            reason = f"it has no converter for ONNX op {e.name.rsplit('.', 1)[1]}"
        reason = reason or (detail or (errors[-1] if errors else (lines[-1] if lines else type(e).__name__)))
        tail = traceback.format_exception_only(type(e), e)[-1].strip()
        return {"error": reason[:300], "log_tail": lines[-15:], "exception": tail[:300],
                "network_attempts": list(_NETWORK_ATTEMPTS)}
    stem = Path(onnx_path).stem
    res: dict = {"onnx2tf": onnx2tf.__version__, "variants": {}, "network_attempts": list(_NETWORK_ATTEMPTS)}
    import tensorflow as tf

    res["tensorflow"] = tf.__version__
    for precision, suffix in LITERT_PRECISIONS.items():
        f = os.path.join(out, f"{stem}_{suffix}.tflite")
        if not os.path.isfile(f):
            continue
        try:
            res["variants"][precision] = {"file": f, **_io_map(f, onnx_path, first)}
        except Exception as e:
            res["variants"][precision] = {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
    return res


# ---- parent side ----------------------------------------------------------------------------------------------------

class LiteRtRunner:
    """Runs a .tflite at its fixed input shape: feeds padded up to it, one sample per invocation."""

    def __init__(self, artifact: Path, threads: int, policy: str = "dedicated") -> None:
        # XNNPACK's thread pool (pthreadpool) spin-waits a bounded number of iterations, then sleeps; LiteRT exposes no
        # setting for it, so the policy is validated and recorded only.
        thread_policy(policy)
        self.policy = policy
        interpreter = _import_litert()
        meta = read_meta(artifact, "litert")
        self.meta = meta
        self.input_names, self.output_names = list(meta["inputs"]), list(meta["outputs"])
        # the default (BUILTIN) op resolver applies XNNPACK as its default delegate
        self._it = interpreter.Interpreter(model_path=str(artifact), num_threads=int(threads),
                                           experimental_op_resolver_type=interpreter.OpResolverType.BUILTIN)
        self._it.allocate_tensors()
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        self._ins = [(t["name"], t["shape"], t["perm"], ins[t["tensor"]]["index"], ins[t["tensor"]]["dtype"])
                     for t in meta["tflite_inputs"]]
        self._outs = [(outs[t["tensor"]]["index"], t["perm"]) for t in meta["tflite_outputs"]]

    def _run_one(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        it = self._it
        for name, shape, perm, index, dtype in self._ins:
            x = pad_to(sample[name], shape, name)
            it.set_tensor(index, np.ascontiguousarray(x.transpose(perm), dtype=dtype))
        it.invoke()
        return [it.get_tensor(index).transpose(perm).astype(np.float32, copy=True) for index, perm in self._outs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        xs = {n: np.asarray(feeds[n]) for n in self.input_names}  # cast to each tensor's own dtype when set
        n = len(xs[self.input_names[0]])
        per = [self._run_one({k: x[i : i + 1] for k, x in xs.items()}) for i in range(n)]
        return [np.concatenate([p[j] for p in per]) for j in range(len(self._outs))]


def _digest(model: onnx.ModelProto, shapes: dict, calib: dict[str, np.ndarray] | None) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update(json.dumps(shapes, sort_keys=True).encode())
    for n in sorted(calib or {}):
        h.update(n.encode())
        h.update(np.ascontiguousarray(calib[n]).tobytes())
    return h.hexdigest()


@register_engine("litert")
class LiteRtEngine(Engine):
    name = "litert"
    suffix = ".tflite"
    default_precisions = ("fp32", "fp16", "dr-int8")
    static_shapes = True
    # not in the default search: its conversion takes 44 s (onnx2tf + TensorFlow) and, converted at the widest line of
    # the data, it ran 1.14x the original on the main job where ncnn and OpenVINO ran 2-3.5x (BENCHMARKS.md, main job):
    # it would cost a default run a minute and never be picked. Ask for it with --engines litert.
    in_default_search = False
    package = "ai-edge-litert"
    model_files = {"tflite": "model.tflite"}
    main_role = "tflite"
    roles = {"tflite": "LiteRT / TensorFlow Lite model (.tflite)"}

    # one onnx2tf run per (model, fixed shape[, calibration data]) in this process: {digest: (result, its folder)}
    _runs: dict[str, tuple[dict, tempfile.TemporaryDirectory]] = {}

    def deploy_layout(self, artifact: Path, source=None) -> dict:
        meta = read_meta(artifact, self.name)
        inputs, outputs = io_from_meta(meta, source)
        for row, t in zip(inputs, meta["tflite_inputs"]):
            row.update({"fixed_shape": t["shape"], "tflite_tensor": t["tensor"], "tflite_perm": t["perm"]})
        for row, t in zip(outputs, meta["tflite_outputs"]):
            row.update({"tflite_tensor": t["tensor"], "tflite_perm": t["perm"]})
        copies = {artifact: self.model_files["tflite"], meta_path(artifact): self.model_files["tflite"] + ".json"}
        options = {"op_resolver": "BUILTIN", "delegate": "XNNPACK (the BUILTIN resolver's default delegate)",
                   "pad": {"side": "end of every axis (right/bottom)", "value": 0.0, "larger_input": "error"},
                   "batch": "one invocation per sample"}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs, "note": RUNTIME_NOTE}

    def bare_files(self, path: Path) -> dict[str, str] | None:
        return sidecar_files(path, self.name, {"tflite": path.name})

    def available(self) -> bool:
        """The runtime and the converter (as ncnn's `available` asks for pnnx): a study only tries engines it can build."""
        return all(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "onnx2tf", "tensorflow"))

    def version(self) -> str:
        from importlib.metadata import version

        return version("ai-edge-litert")

    def precisions(self) -> tuple[str, ...]:
        return tuple(LITERT_PRECISIONS)

    def needs_calibration(self, precision: str) -> bool:
        return precision == "int8"

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32",
                calib_feeds: Iterable[Feeds] | None = None, input_shapes: dict[str, list[int]] | None = None) -> Path:
        """Write the .tflite and its .json sidecar. `input_shapes` ({input name: shape}) fixes the shape the model
        runs at; by default the first calibration feed's, batch 1."""
        self.check_precision(precision)
        _import_litert()
        for mod in ("onnx2tf", "tensorflow"):
            if importlib.util.find_spec(mod) is None:
                raise EngineUnavailableError(f"converting to litert needs {mod}, which is not installed. Run {INSTALL}.")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        inputs, outputs = _onnx_names(model)
        feeds = list(itertools.islice(calib_feeds, CALIB_LIMIT * 4)) if calib_feeds is not None else []
        shapes = _fixed_shapes(model, inputs, input_shapes, feeds[0] if feeds else None)
        calib, count = _calib_arrays(feeds if precision == "int8" else feeds[:1], shapes)
        if count == 0:  # onnx2tf still needs a sample to validate its conversion with
            calib = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
        if precision == "int8" and count == 0:
            raise ConversionError("litert int8 needs calibration feeds no larger than the fixed input shape "
                                  f"{shapes}. Pass calib_feeds, or use precision dr-int8.")
        int8 = precision == "int8"
        run = self._onnx2tf(model, shapes, calib if int8 else None, calib, int8)
        v = run["variants"].get(precision)
        if v is None:
            raise ConversionError(f"onnx2tf wrote no {precision} model (its {LITERT_PRECISIONS[precision]} variant "
                                  "failed; the TFLite converter rejected the quantization). Use another precision.")
        if "error" in v:
            raise ConversionError(f"litert {precision}: the converted model does not run like the ONNX model "
                                  f"({v['error']}). Use another engine.")
        shutil.copyfile(v["file"], out)
        meta = {"engine": "litert", "precision": precision, "inputs": inputs, "outputs": outputs,
                "input_shapes": shapes, "tflite_inputs": v["inputs"],
                "tflite_outputs": [{k: o[k] for k in ("name", "tensor", "perm")} for o in v["outputs"]],
                "conversion_check": {"max_abs_err": max(o["max_abs_err"] for o in v["outputs"]),
                                     "rel_err": max(o["rel_err"] for o in v["outputs"])},
                "converter": f"onnx2tf {run['onnx2tf']} (tensorflow {run['tensorflow']})",
                "network_attempts": len(run.get("network_attempts", []))}
        if int8:
            meta["calibration"] = {"samples": count, "note": "int8 kernels; float32 input and output"}
        write_meta(out, meta)
        return out

    def _onnx2tf(self, model: onnx.ModelProto, shapes: dict, key_calib: dict | None, calib: dict, int8: bool) -> dict:
        key = _digest(model, shapes, key_calib)
        if key in self._runs:
            res = self._runs[key][0]
            if "failed" in res:  # a model onnx2tf rejected is not converted again for the next precision
                raise ConversionError(res["failed"])
            return res
        folder = tempfile.TemporaryDirectory(prefix="edgeslim-litert-")
        d = Path(folder.name)
        src = d / "model.onnx"  # onnx2tf rewrites its input file (simplified), so it gets a copy
        onnx.save(model, str(src))
        files = {}
        for n, a in calib.items():
            files[n] = str(d / f"calib_{len(files)}.npy")
            np.save(files[n], a)
        try:
            res = call_function("edgeslim.engines.litert:convert_child",
                                {"onnx_path": str(src), "workdir": str(d), "shapes": shapes, "calib": files, "int8": int8},
                                CONVERT_TIMEOUT, d, "onnx2tf converter")
        except ConversionError as e:
            res = {"failed": str(e)}
        if "error" in res:
            res = {"failed": f"onnx2tf cannot convert this model: {res['error'].rstrip('.')}. Use another engine."}
        if "failed" in res:
            folder.cleanup()
            self._runs[key] = (res, folder)
            raise ConversionError(res["failed"])
        self._runs[key] = (res, folder)
        if int8:  # its float variants are those of a plain run
            self._runs.setdefault(_digest(model, shapes, None), (res, folder))
        return res

    def load(self, artifact: Path, threads: int, policy: str = "dedicated") -> LiteRtRunner:
        artifact = Path(artifact)
        if not artifact.exists():
            raise EngineError(f"{artifact}: tflite model not found. Convert one with `edgeslim convert --to litert`.")
        return LiteRtRunner(artifact, threads, policy)
