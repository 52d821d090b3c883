"""The deliverable: an output folder a user ships with the engine's own runtime and nothing else.

`export` copies every file the selected engine needs under names that say the engine (`model.onnx` | `model.mnn` |
`model.ncnn.param` + `model.ncnn.bin`) and writes `deploy.json`: engine and version, precision, runtime options
(threads, thread-pool policy, the engine's precision flags: ncnn's `use_bf16_storage` lives only in the runtime, not
in the model files), input/output names (ncnn's blob names beside the ONNX names) and shapes, and the task's pre- and
post-processing. The OCR charset (6,600+ entries, among them the space classes ' ' and U+3000) goes to
`charset.txt`, one entry per line, never stripped.

`load` reads the same folder back and runs it with edgeslim's engine runners, predicting exactly as evaluation did;
`snippet` writes a short program that does the same with only the engine's Python package, numpy and OpenCV.

>>> info = export(Path("out"), Path("cand/ncnn-bf16.ncnn.bin"), "ncnn", "bf16", task, 2, "dedicated")  # doctest: +SKIP
>>> load("out").predict(["line.png"])                                                                 # doctest: +SKIP
['DESIGN']
>>> print(snippet("out"))                                                                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeslimError, UnknownNameError

__all__ = ["export", "load", "snippet", "Deployed", "DeployError", "DEPLOY_FILE", "SCHEMA"]

SCHEMA = 1
DEPLOY_FILE = "deploy.json"
SNIPPET_FILE = "predict.py"
CHARSET_TXT = "charset.txt"
CHARSET_JSON = "charset.json"
# The model files of each engine in an output folder, by role. ncnn's runtime finds the .param by replacing the
# .bin's last suffix, so the pair must keep the `model.ncnn.` stem.
MODEL_FILES = {"ort": {"onnx": "model.onnx"}, "mnn": {"mnn": "model.mnn"},
               "ncnn": {"param": "model.ncnn.param", "bin": "model.ncnn.bin"}}
_MAIN = {"ort": "onnx", "mnn": "mnn", "ncnn": "bin"}
_PACKAGES = {"ort": "onnxruntime", "mnn": "MNN", "ncnn": "ncnn"}


class DeployError(EdgeslimError, ValueError):
    """An output folder or model file cannot be exported or loaded as a deployment."""


# ---- export ---------------------------------------------------------------------------------------------------

def _sha256(p: Path) -> str:
    from .cache import file_sha256

    return file_sha256(p)


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise DeployError(f"{src}: file not found, but the deployment needs it. Build the candidate again.")
    if dst.exists() and dst.resolve() == src.resolve():
        return
    shutil.copyfile(src, dst)


def _onnx_value_infos(model) -> tuple[list[dict], list[dict]]:
    """Names, shapes (a fixed dim as int, a dynamic one as its symbol or None) and dtypes of an ONNX graph's I/O."""
    from onnx import helper

    def info(v) -> dict:
        tt = v.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        except Exception:
            dtype = None
        return {"name": v.name, "shape": shape, "dtype": dtype}

    inits = {t.name for t in model.graph.initializer}
    return [info(i) for i in model.graph.input if i.name not in inits], [info(o) for o in model.graph.output]


def _load_onnx_header(path_or_model):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    return onnx.load(str(path_or_model), load_external_data=False)


def _external_data_files(model) -> list[str]:
    """Files holding tensors stored outside the .onnx (models over 2 GB), as their relative locations."""
    from onnx import TensorProto

    names: list[str] = []

    def tensors(g):
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from tensors(a.g)
                for sub in a.graphs:
                    yield from tensors(sub)

    for t in tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in names:
                names.append(loc)
    return names


def _io_from_meta(meta: dict, source: Any | None) -> tuple[list[dict], list[dict]]:
    """mnn/ncnn: names from the engine's sidecar; shapes and dtypes from the source ONNX where given."""
    by_name: dict[str, dict] = {}
    if source is not None:
        ins, outs = _onnx_value_infos(_load_onnx_header(source))
        by_name = {d["name"]: d for d in ins + outs}

    def rows(names: list[str], blobs: list[str] | None) -> list[dict]:
        out = []
        for j, n in enumerate(names):
            d = {"name": n, "shape": by_name.get(n, {}).get("shape"), "dtype": by_name.get(n, {}).get("dtype", "float32")}
            if blobs is not None:
                d["ncnn_blob"] = blobs[j]
            out.append(d)
        return out

    return (rows(list(meta["inputs"]), meta.get("ncnn_inputs")), rows(list(meta["outputs"]), meta.get("ncnn_outputs")))


def _layout(engine: str, artifact: Path, source: Any | None) -> dict:
    """For one engine: {src -> dst name}, engine options, inputs, outputs."""
    from .engines.base import meta_path, read_meta

    names = MODEL_FILES[engine]
    if engine == "ort":
        model = _load_onnx_header(artifact)
        copies = {artifact: names["onnx"]}
        for loc in _external_data_files(model):  # big models keep weights beside the graph, under their own names
            copies[artifact.parent / loc] = loc
        inputs, outputs = _onnx_value_infos(model)
        options = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "ORT_ENABLE_ALL",
                   "inter_op_num_threads": 1}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs}
    meta = read_meta(artifact, engine)
    inputs, outputs = _io_from_meta(meta, source)
    if engine == "mnn":
        copies = {artifact: names["mnn"], meta_path(artifact): names["mnn"] + ".json"}
        options = {"backend": "CPU", "precision": meta.get("runtime_precision", "normal"), "memory": meta.get("memory", "normal")}
    else:
        copies = {artifact: names["bin"], artifact.with_suffix(".param"): names["param"],
                  meta_path(artifact): names["bin"] + ".json"}
        options = {"use_vulkan_compute": False, **{k: bool(v) for k, v in meta.get("options", {}).items()}}
    return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs}


def _charset_out(post: dict, outdir: Path | None) -> dict:
    """Move the charset list out of the spec into its own file (written when `outdir` is given)."""
    charset = list(post["charset"])
    # One entry per line reads back exactly unless an entry holds a line break: then a JSON list.
    as_lines = all("\n" not in c and "\r" not in c for c in charset)
    name = CHARSET_TXT if as_lines else CHARSET_JSON
    if outdir is not None:
        if as_lines:
            with (outdir / name).open("w", encoding="utf-8", newline="\n") as f:
                f.write("".join(c + "\n" for c in charset))
        else:
            (outdir / name).write_text(json.dumps(charset, ensure_ascii=False), encoding="utf-8")
    how = ("UTF-8, one entry per line: split on '\\n' and drop the empty string after the last one; never strip "
           "(' ' and '\\u3000' are classes)" if as_lines else "UTF-8 JSON list of strings")
    return {**post, "charset": {"file": name, "format": "lines" if as_lines else "json", "entries": len(charset),
                                "blank_index": post.get("blank", 0), "read": how}}


def _read_charset(root: Path, ref: dict) -> list[str]:
    p = root / ref["file"]
    if not p.is_file():
        raise DeployError(f"{p}: charset file not found, but deploy.json names it. Copy it with the folder or export again.")
    if ref.get("format", "lines") == "lines":
        with p.open(encoding="utf-8", newline="\n") as f:
            charset = f.read().split("\n")[:-1]
    else:
        charset = json.loads(p.read_text(encoding="utf-8"))
    if len(charset) != ref.get("entries", len(charset)):
        raise DeployError(f"{p}: {len(charset)} entries, deploy.json says {ref['entries']}. The file was edited "
                          "(a stripped or merged line?): export the folder again.")
    return charset


def _engine_version(engine: str) -> str:
    from .engines import get_engine

    try:
        return str(get_engine(engine).version())
    except Exception:
        return "?"


def _describe(engine: str, precision: str, task_spec: dict, threads: int, policy: str, layout: dict,
              model_files: dict, files: list[dict], info: dict | None) -> dict:
    from .engines.base import thread_policy

    from . import __version__

    d = {
        "schema": SCHEMA,
        "created_by": f"edgeslim {__version__}",
        "engine": engine,
        "engine_package": _PACKAGES[engine],
        "engine_version": _engine_version(engine),
        "precision": precision,
        "model_files": model_files,
        "files": files,
        "runtime": {"threads": int(threads), "thread_policy": thread_policy(policy), "options": layout["options"]},
        "inputs": layout["inputs"],
        "outputs": layout["outputs"],
        "task": task_spec,
    }
    if engine == "ncnn":
        d["runtime"]["note"] = ("ncnn has no batch axis: feed each sample's CHW array to the ncnn_blob of each input, "
                                "read outputs from the ncnn_blob of each output")
    if info:
        d["info"] = info
    return d


def _role(engine: str, name: str) -> str:
    roles = {"onnx": "onnx model", "mnn": "mnn model", "param": "ncnn graph (.param)", "bin": "ncnn weights (.bin)"}
    by_name = {v: roles[k] for k, v in MODEL_FILES[engine].items()}
    if name in by_name:
        return by_name[name]
    if name.startswith("charset."):
        return "charset"
    if name.endswith(".json"):
        return "edgeslim engine sidecar (for edgeslim's own runner)"
    return "external weights"


def export(outdir: Path, artifact: Path, engine: str, precision: str, task, threads: int, policy: str,
           extra: dict | None = None) -> dict:
    """Write the deployable model into `outdir`: the engine's files, `deploy.json`, the charset (OCR) and
    `predict.py` (the `snippet`). Returns the deploy.json content.

    `artifact` is a candidate's main file: an `.onnx` (ort), an `.mnn` or an `.ncnn.bin` (its `.ncnn.param` and the
    `.json` sidecar beside it). `task` is the bound task the candidate was evaluated with; `policy` a thread-pool
    policy of `edgeslim.engines.base.thread_policy`. `extra`: `source_model` (the ONNX path or ModelProto the
    candidate came from; mnn/ncnn files do not carry input/output shapes, so without it their shapes are null)
    and any other JSON-able facts, recorded under `info` (candidate id, metric...).
    """
    from .engines.base import thread_policy

    outdir, artifact = Path(outdir), Path(artifact)
    if engine not in MODEL_FILES:
        raise DeployError(f"engine {engine!r} has no deployment layout (known: {', '.join(MODEL_FILES)}).")
    if not artifact.is_file():
        raise DeployError(f"{artifact}: model file not found. Pass the candidate's artifact as written by the study.")
    thread_policy(policy)  # an unknown policy fails before anything is written
    extra = dict(extra or {})
    source = extra.pop("source_model", None)
    layout = _layout(engine, artifact, source)
    spec = task.deploy_spec()
    outdir.mkdir(parents=True, exist_ok=True)
    for src, name in layout["copies"].items():
        _copy(Path(src), outdir / name)
    post = spec.get("postprocess")
    if isinstance(post, dict) and isinstance(post.get("charset"), list):
        spec = {**spec, "postprocess": _charset_out(post, outdir)}
    written = list(layout["copies"].values())
    if isinstance(spec.get("postprocess"), dict) and isinstance(spec["postprocess"].get("charset"), dict):
        written.append(spec["postprocess"]["charset"]["file"])
    files = [{"name": n, "role": _role(engine, n), "bytes": (outdir / n).stat().st_size, "sha256": _sha256(outdir / n)}
             for n in written]
    d = _describe(engine, precision, spec, threads, policy, layout, dict(MODEL_FILES[engine]), files,
                  {k: v for k, v in extra.items()} or None)
    code = snippet(d)
    (outdir / SNIPPET_FILE).write_text(code, encoding="utf-8")
    d["files"].append({"name": SNIPPET_FILE, "role": "example program (engine's own Python API)",
                       "bytes": len(code.encode()), "sha256": hashlib.sha256(code.encode()).hexdigest()})
    (outdir / DEPLOY_FILE).write_text(json.dumps(d, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return d


# ---- load -----------------------------------------------------------------------------------------------------

@dataclass
class Deployed:
    """A deployed model loaded with edgeslim's engine runner; `spec` is its deploy.json content."""

    root: Path
    spec: dict
    task: Any
    runner: Any

    @property
    def engine(self) -> str:
        return self.spec["engine"]

    @property
    def model_path(self) -> Path:
        """The engine's main model file (ncnn: the .bin, its .param beside it)."""
        engine = self.spec["engine"]
        return self.root / self.spec["model_files"].get(_MAIN[engine], MODEL_FILES[engine][_MAIN[engine]])

    @property
    def precision(self) -> str:
        return self.spec["precision"]

    @property
    def input_names(self) -> list[str]:
        return list(self.runner.input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self.runner.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs (in `output_names` order) for named input arrays."""
        return self.runner.run(feeds)

    def predict(self, inputs: Any) -> Any:
        """OCR: image paths or BGR arrays -> list of strings; classify: -> per image the top-5 (class index, score)
        pairs; raw: an .npz path or a dict of arrays -> dict of output arrays. Computed as evaluation computes it."""
        return self.task.predict(self.runner, inputs)


def _load_runner(engine: str, path: Path, threads: int, policy: str):
    from .engines import get_engine

    eng = get_engine(engine)
    try:
        return eng.load(path, threads, policy)
    except EdgeslimError:
        raise
    except Exception as e:  # a damaged model file: one line naming it
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DeployError(f"{path}: {engine} cannot load it ({first}). Copy the folder again, or export it again.") from None


def _bare(path: Path, task, threads: int, policy: str) -> tuple[dict, Any]:
    """deploy.json's content for a model file outside an output folder (its task from `task`, else raw)."""
    from .engines.base import meta_path
    from .tasks import TASKS, get_task

    if path.suffix == ".onnx":
        engine, precision = "ort", "fp32"
        files = {"onnx": path.name}
    else:
        mp = meta_path(path)
        if not mp.is_file():
            raise DeployError(f"{path}: not an .onnx file and no {mp.name} beside it. Pass an output folder (with "
                              "deploy.json), an .onnx file, or an .mnn/.ncnn.bin converted by edgeslim (with its .json).")
        try:
            meta = json.loads(mp.read_text())
        except ValueError as e:
            raise DeployError(f"{mp}: not valid JSON ({e}). Convert the model again.") from None
        engine, precision = meta.get("engine"), meta.get("precision", "fp32")
        if engine not in ("mnn", "ncnn"):
            raise DeployError(f"{mp}: names engine {engine!r}; expected mnn or ncnn. Convert the model again.")
        files = {"mnn": path.name} if engine == "mnn" else {"bin": path.name, "param": path.with_suffix(".param").name}
    layout = _layout(engine, path, None)
    if task is None or isinstance(task, str):
        name = task or "raw"
        t = TASKS.get(name)  # unknown names fail listing close matches
        if engine == "ort":
            bound = get_task(name).bind(_load_onnx_header(path))
        elif name == "raw":
            bound = t.from_deploy_spec({"name": "raw", "inputs": [d["name"] for d in layout["inputs"]]})
        else:
            raise DeployError(f"{path}: a bare {engine} model cannot tell the {name} task its input name or charset. "
                              "Load its output folder (with deploy.json), or pass a bound Task as task=.")
        task = bound
    d = _describe(engine, precision, task.deploy_spec(), threads, policy, layout, files, [], None)
    return d, task


def load(path: str | Path, *, task: Any = None, threads: int | None = None, policy: str | None = None) -> Deployed:
    """A deployment from an output folder (reads deploy.json) or a bare model file (`.onnx` runs on ort fp32;
    `.mnn`/`.ncnn.bin` need edgeslim's .json sidecar beside them). `task` (bare files only): a task name or a bound
    `Task` (default raw). `threads`/`policy` override deploy.json's.

    >>> load("edgeslim-out").predict(["line.png"])  # doctest: +SKIP
    """
    from .tasks import TASKS

    path = Path(path)
    if path.is_dir():
        f = path / DEPLOY_FILE
        if not f.is_file():
            raise DeployError(f"{path}: no {DEPLOY_FILE} in this folder. Pass an edgeslim output folder or a model file.")
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DeployError(f"{f}: not valid JSON ({e}). Export the folder again.") from None
        if d.get("schema") != SCHEMA:
            raise DeployError(f"{f}: schema {d.get('schema')!r}; this edgeslim reads schema {SCHEMA}. Export it again "
                              "with this version.")
        root = path
        try:
            spec = dict(d["task"])
            post = spec.get("postprocess")
            if isinstance(post, dict) and isinstance(post.get("charset"), dict):
                spec["postprocess"] = {**post, "charset": _read_charset(root, post["charset"])}
            t = task if task is not None and not isinstance(task, str) else TASKS.get(spec["name"]).from_deploy_spec(spec)
            engine, main = d["engine"], d["model_files"][_MAIN[d["engine"]]]
            rt = d["runtime"]
            n_threads = threads or int(rt["threads"])
            pol = policy or rt["thread_policy"]["policy"]
            if not isinstance(d["inputs"], list) or not all("name" in i for i in d["inputs"]):
                raise TypeError("inputs")
        except UnknownNameError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise DeployError(f"{f}: missing or malformed entry {e}. Export the folder again.") from None
        missing = [n for n in d["model_files"].values() if not (root / n).is_file()]
        if missing:
            raise DeployError(f"{root / missing[0]}: missing from the output folder. Copy the whole folder, or export it again.")
        runner = _load_runner(engine, root / main, n_threads, pol)
        return Deployed(root, d, t, runner)
    if not path.is_file():
        raise DeployError(f"{path}: not found. Pass an edgeslim output folder (with deploy.json) or a model file.")
    n_threads, pol = threads or 2, policy or "dedicated"
    d, t = _bare(path, task, n_threads, pol)
    return Deployed(path.parent, d, t, _load_runner(d["engine"], path, n_threads, pol))


# ---- snippet --------------------------------------------------------------------------------------------------

_HEAD = '''"""Run the {engine} {precision} model of an edgeslim output folder ({task}) with {package} alone.
Usage: python predict.py OUTDIR {usage}
Needs: {needs}."""
import json
import math
import os
import sys

import cv2
import numpy as np

ROOT = sys.argv[1]
with open(os.path.join(ROOT, "deploy.json"), encoding="utf-8") as f:
    D = json.load(f)
RT = D["runtime"]
INPUTS = [t["name"] for t in D["inputs"]]
OUTPUTS = [t["name"] for t in D["outputs"]]
# OpenMP reads its idle policy once, when the engine's library loads: set it before the import.
os.environ["OMP_WAIT_POLICY"] = RT["thread_policy"]["OMP_WAIT_POLICY"]
'''

_ENGINES = {
    "ort": '''
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = RT["threads"]
so.inter_op_num_threads = RT["options"]["inter_op_num_threads"]
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, RT["options"]["graph_optimization_level"])
for key, value in RT["thread_policy"]["ort_session_config"].items():  # thread-pool spinning
    so.add_session_config_entry(key, str(value))
session = ort.InferenceSession(os.path.join(ROOT, D["model_files"]["onnx"]), so,
                               providers=[RT["options"]["execution_provider"]])


def run(feeds):
    """{input name: float32 array with batch axis} -> list of outputs."""
    return session.run(None, feeds)
''',
    "mnn": '''
import MNN
import MNN.expr as F
import MNN.nn as nn

opts = RT["options"]
config = {"backend": opts["backend"], "precision": opts["precision"], "numThread": RT["threads"]}
if opts["memory"] != "normal":
    config["memory"] = opts["memory"]
runtime = nn.create_runtime_manager((config,))
net = nn.load_module_from_file(os.path.join(ROOT, D["model_files"]["mnn"]), INPUTS, OUTPUTS,
                               runtime_manager=runtime, shape_mutable=True)


def run(feeds):
    """{input name: float32 array with batch axis} -> list of outputs."""
    xs = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in INPUTS]
    outs = net.forward([F.const(x, list(x.shape), F.NCHW) for x in xs])
    res = []
    for o in outs:
        if o.data_format == F.NC4HW4:
            o = F.convert(o, F.NCHW)
        res.append(np.array(o.read(), dtype=np.float32, copy=True))
    return res
''',
    "ncnn": '''
import ncnn

net = ncnn.Net()
net.opt.num_threads = RT["threads"]
if hasattr(net.opt, "openmp_blocktime"):  # LLVM/Intel OpenMP builds; GCC's libgomp follows OMP_WAIT_POLICY
    net.opt.openmp_blocktime = RT["thread_policy"]["ncnn_openmp_blocktime"]
for key, value in RT["options"].items():  # precision flags (use_bf16_storage, ...) live in the runtime, not the files
    setattr(net.opt, key, value)
if net.load_param(os.path.join(ROOT, D["model_files"]["param"])) != 0 or \\
        net.load_model(os.path.join(ROOT, D["model_files"]["bin"])) != 0:
    sys.exit("ncnn could not load the model files")
IN_BLOBS = [t["ncnn_blob"] for t in D["inputs"]]
OUT_BLOBS = [t["ncnn_blob"] for t in D["outputs"]]


def run(feeds):
    """{input name: float32 array with batch axis} -> list of outputs. ncnn has no batch axis: one sample at a time."""
    n = len(feeds[INPUTS[0]])
    outs = [[] for _ in OUT_BLOBS]
    for i in range(n):
        ex = net.create_extractor()
        xs = [np.ascontiguousarray(feeds[name][i], dtype=np.float32) for name in INPUTS]
        mats = [ncnn.Mat(x) for x in xs]  # they wrap the numpy buffers: keep both alive until extraction
        for blob, m in zip(IN_BLOBS, mats):
            ex.input(blob, m)
        for j, blob in enumerate(OUT_BLOBS):
            ret, m = ex.extract(blob)
            if ret != 0:
                sys.exit(f"ncnn failed to compute {blob} (code {ret})")
            outs[j].append(np.array(m, dtype=np.float32, copy=True))
        del ex, mats
    return [np.stack(o) for o in outs]
''',
}

_TASKS = {
    "embed": ('SENTENCE [SENTENCE ...]', '''
from tokenizers import Tokenizer

PRE = D["task"]["preprocess"]
TOK = Tokenizer.from_str(PRE["tokenizer_json"])
TOK.no_padding()
TOK.enable_truncation(PRE["max_length"])
PAD = TOK.token_to_id("[PAD]") or 0


def encode(sentences):
    """WordPiece ids and attention mask, padded to the longest sentence (int64)."""
    enc = TOK.encode_batch(sentences)
    n = max(len(e.ids) for e in enc)
    ids = np.full((len(enc), n), PAD, np.int64)
    mask = np.zeros((len(enc), n), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in INPUTS:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


sentences = sys.argv[2:]
emb = run(encode(sentences))[0]  # L2-normalised inside the model: cosine = dot product
for s, e in zip(sentences, emb):
    print(f"{s}\\t{np.array2string(e[:6], precision=4)} ...")
for j in range(1, len(sentences)):
    print(f"cosine(1, {j + 1})\\t{float(emb[0] @ emb[j]):.4f}")
'''),
    "ocr-rec": ('IMAGE [IMAGE ...]', '''
PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
CS = POST["charset"]
with open(os.path.join(ROOT, CS["file"]), encoding="utf-8", newline="\\n") as f:
    # One entry per line, never stripped: ' ' and '\\u3000' are classes. Index 0 is the CTC blank.
    CHARSET = f.read().split("\\n")[:-1] if CS["format"] == "lines" else json.loads(f.read())
HEIGHT, MAX_W = PRE["resize"]["height"], PRE["resize"]["max_width"]
MIN_W, MULTIPLE = PRE["pad"]["min_width"], PRE["pad"]["multiple"]
DIV = PRE["normalize"]["divide_by"]
MEAN = np.array(PRE["normalize"]["mean"], np.float32).reshape(3, 1, 1)
STD = np.array(PRE["normalize"]["std"], np.float32).reshape(3, 1, 1)


def preprocess(path):
    """Height 48 keeping the aspect ratio, BGR as decoded, (x/255 - 0.5)/0.5, zero padding on the right."""
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"{path}: cannot decode the image")
    h, w = img.shape[:2]
    rw = int(min(MAX_W, max(1, math.ceil(HEIGHT * w / max(h, 1)))))
    x = cv2.resize(img, (rw, HEIGHT)).astype(np.float32).transpose(2, 0, 1)
    x = (x / DIV - MEAN) / STD
    width = max(MIN_W, int(math.ceil(rw / MULTIPLE) * MULTIPLE))
    batch = np.zeros((1, 3, HEIGHT, width), np.float32)
    batch[0, :, :, :rw] = x
    return batch


def ctc_greedy(probs):
    """Argmax per time step, merge repeats, drop the blank."""
    idx = probs.argmax(axis=-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != POST["blank"]
    return "".join(CHARSET[i] for i in idx[keep] if i < len(CHARSET))


for path in sys.argv[2:]:
    probs = run({PRE["input"]: preprocess(path)})[POST["output"]][0]
    print(f"{path}\\t{ctc_greedy(probs)}")
'''),
    "classify": ('IMAGE [IMAGE ...]', '''
PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
H, W = PRE["resize"]["height"], PRE["resize"]["width"]
DIV = PRE["normalize"]["divide_by"]
MEAN = np.array(PRE["normalize"]["mean"], np.float32).reshape(3, 1, 1)
STD = np.array(PRE["normalize"]["std"], np.float32).reshape(3, 1, 1)
CLASSES = POST.get("classes")


def preprocess(path):
    """Resize, BGR -> RGB, x/255, (x - mean)/std."""
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"{path}: cannot decode the image")
    x = cv2.resize(img, (W, H))[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / DIV
    return ((x - MEAN) / STD)[None].astype(np.float32)


for path in sys.argv[2:]:
    scores = run({PRE["input"]: preprocess(path)})[POST["output"]].reshape(-1)
    top = np.argsort(-scores, kind="stable")[: POST["k"]]
    print(path + "\\t" + ", ".join(f"{CLASSES[c] if CLASSES else c}={scores[c]:.4f}" for c in top))
'''),
    "raw": ('INPUTS.npz', '''
z = np.load(sys.argv[2])
outs = run({name: z[name] for name in INPUTS})
for name, y in zip(OUTPUTS, outs):
    print(f"{name}\\t{list(y.shape)}\\t{y.ravel()[:8]}")
'''),
}


def snippet(outdir_or_deploy: str | Path | dict) -> str:
    """A short runnable Python program for the deployed engine that uses only the engine's own package, numpy and
    OpenCV: it reads deploy.json, applies threads, thread policy and engine options, preprocesses its inputs as the
    task does, runs the model and decodes (OCR: CTC greedy with the charset). Run: `python predict.py OUTDIR IMAGE...`.
    """
    d = outdir_or_deploy
    if not isinstance(d, dict):
        f = Path(d) / DEPLOY_FILE
        if not f.is_file():
            raise DeployError(f"{Path(d)}: no {DEPLOY_FILE}. Pass an edgeslim output folder or its deploy.json content.")
        d = json.loads(f.read_text(encoding="utf-8"))
    engine, task = d.get("engine"), (d.get("task") or {}).get("name")
    if engine not in _ENGINES:
        raise DeployError(f"no example program for engine {engine!r} (known: {', '.join(_ENGINES)}).")
    from .tasks import TASKS

    # a task that keeps its program beside its own code (a long decode) declares it as `deploy_program`
    program = _TASKS.get(task) or (getattr(TASKS.get(task), "deploy_program", None) if task in TASKS.names() else None)
    if program is None:
        raise DeployError(f"no example program for task {task!r} (known: {', '.join(_TASKS)} and the tasks that "
                          "declare deploy_program).")
    usage, body = program
    package = _PACKAGES[engine]
    head = _HEAD.format(engine=engine, precision=d.get("precision", "?"), task=task, package=package, usage=usage,
                        needs=f"{package} {d.get('engine_version', '')}".strip() + ", numpy, opencv-python-headless")
    return head + _ENGINES[engine] + body
