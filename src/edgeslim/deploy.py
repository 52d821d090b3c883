"""The deliverable: an output folder a user ships with the engine's own runtime and nothing else.

`export` copies every file the selected engine needs under names that say the engine (`model.onnx` | `model.mnn` |
`model.ncnn.param` + `model.ncnn.bin`) and writes `deploy.json`: engine and version, precision, runtime options
(threads, thread-pool policy, the engine's precision flags: ncnn's `use_bf16_storage` lives only in the runtime, not
in the model files), input/output names (ncnn's blob names beside the ONNX names) and shapes, and the task's pre- and
post-processing. The OCR charset (6,600+ entries, among them the space classes ' ' and U+3000) goes to
`charset.txt`, one entry per line, never stripped.

`load` reads the same folder back and runs it with edgeslim's engine runners, predicting exactly as evaluation did;
`snippet` writes a short program that does the same with only the engine's Python package, numpy and OpenCV.

>>> info = export(Path("out"), Path(cand.artifact), cand.engine, cand.recipe, task, 2, "dedicated")  # doctest: +SKIP
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

from .cache import file_sha256
from .errors import EdgeslimError, UnknownNameError
from .policy import ThreadPolicy

__all__ = ["export", "load", "snippet", "Deployed", "DeployError", "DEPLOY_FILE", "SCHEMA"]

SCHEMA = 1
DEPLOY_FILE = "deploy.json"
SNIPPET_FILE = "predict.py"
CHARSET_TXT = "charset.txt"
CHARSET_JSON = "charset.json"
# An engine's files in the folder, its package and its predict.py part are the engine's own (`Engine.model_files`,
# `deploy_layout`, `package`, `template_path`); a task's pre/post-processing program is the task's (`Task.program`).


class DeployError(EdgeslimError, ValueError):
    """An output folder or model file cannot be exported or loaded as a deployment."""


# ---- export ---------------------------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise DeployError(f"{src}: file not found, but the deployment needs it. Build the candidate again.")
    if dst.exists() and dst.resolve() == src.resolve():
        return
    shutil.copyfile(src, dst)


def _engine(name: str):
    from .engines import ENGINES, get_engine

    if name not in ENGINES.names():
        raise DeployError(f"engine {name!r} has no deployment layout (known: {', '.join(ENGINES.names())}).")
    return get_engine(name)


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
    try:
        return str(_engine(engine).version())
    except Exception:
        return "?"


def _describe(engine: str, precision: str, task_spec: dict, threads: int, policy: str, layout: dict,
              model_files: dict, files: list[dict], info: dict | None) -> dict:
    from ._version import __version__
    from .policy import ThreadPolicy

    d = {
        "schema": SCHEMA,
        "created_by": f"edgeslim {__version__}",
        "engine": engine,
        "engine_package": _engine(engine).package,
        "engine_version": _engine_version(engine),
        "precision": precision,
        "model_files": model_files,
        "files": files,
        "runtime": {"threads": int(threads), "thread_policy": ThreadPolicy.of(policy).to_dict(), "options": layout["options"]},
        "inputs": layout["inputs"],
        "outputs": layout["outputs"],
        "task": task_spec,
    }
    if layout.get("note"):
        d["runtime"]["note"] = layout["note"]
    if info:
        d["info"] = info
    return d


def _role(engine: str, name: str) -> str:
    eng = _engine(engine)
    by_name = {v: eng.roles[k] for k, v in eng.model_files.items()}
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
    from .policy import ThreadPolicy

    outdir, artifact = Path(outdir), Path(artifact)
    eng = _engine(engine)
    if not artifact.is_file():
        raise DeployError(f"{artifact}: model file not found. Pass the candidate's artifact as written by the study.")
    ThreadPolicy.of(policy)  # an unknown policy fails before anything is written
    extra = dict(extra or {})
    source = extra.pop("source_model", None)
    layout = eng.deploy_layout(artifact, source)
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
    files = [{"name": n, "role": _role(engine, n), "bytes": (outdir / n).stat().st_size, "sha256": file_sha256(outdir / n)}
             for n in written]
    d = _describe(engine, precision, spec, threads, policy, layout, dict(eng.model_files), files,
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
        eng = _engine(self.spec["engine"])
        return self.root / self.spec["model_files"].get(eng.main_role, eng.model_files[eng.main_role])

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
    from .engines import ENGINES, DEFAULT_ENGINE, get_engine
    from .engines._io import onnx_header
    from .engines.base import meta_path
    from .tasks import TASKS, get_task

    claims = [(n, get_engine(n).bare_files(path)) for n in ENGINES.names()]
    engine, files = next(((n, f) for n, f in claims if f is not None), (None, None))
    if engine is None:
        raise DeployError(f"{path}: not an .onnx file and no edgeslim sidecar {meta_path(path).name} beside it naming an "
                          "engine. Pass an output folder (with deploy.json), an .onnx file, or a model converted by "
                          "edgeslim (with its .json).")
    precision = "fp32" if engine == DEFAULT_ENGINE else json.loads(meta_path(path).read_text()).get("precision", "fp32")
    layout = get_engine(engine).deploy_layout(path, None)
    if task is None or isinstance(task, str):
        name = task or "raw"
        t = TASKS.get(name)  # unknown names fail listing close matches
        if path.suffix == ".onnx":
            bound = get_task(name).bind(onnx_header(path))
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
            engine = d["engine"]
            main = d["model_files"][_engine(engine).main_role]
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
    n_threads, pol = threads or 2, policy or ThreadPolicy.DEDICATED.value
    d, t = _bare(path, task, n_threads, pol)
    return Deployed(path.parent, d, t, _load_runner(d["engine"], path, n_threads, pol))


# ---- snippet --------------------------------------------------------------------------------------------------

_DOC = '''"""Run the {engine} {precision} model of an edgeslim output folder ({task}) with {package} alone.
Usage: python predict.py OUTDIR {usage}
Needs: {needs}."""
'''

_FOOT = '''

if __name__ == "__main__":
    ROOT, ARGV = arguments(__doc__)
    D = read_deploy(ROOT)
    main(make_runner(ROOT, D), D, ROOT, ARGV)
'''


def _fragment(path: Path) -> str:
    """A template module's source without its docstring (the program keeps one docstring, its own)."""
    import ast

    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str):
        src = "\n".join(src.splitlines()[first.end_lineno:])
    return src.strip("\n") + "\n"


def snippet(outdir_or_deploy: str | Path | dict) -> str:
    """A short runnable Python program for the deployed engine that uses only the engine's own package, numpy and
    OpenCV: it reads deploy.json, applies threads, thread policy and engine options, preprocesses its inputs as the
    task does, runs the model and decodes (OCR: CTC greedy with the charset). Run: `python predict.py OUTDIR IMAGE...`.

    It joins four real modules: edgeslim/_predict_head.py (deploy.json, thread policy), the engine's template
    (`Engine.template_path`: `make_runner`), the task's program (`Task.program_path`: `main`), and the call.
    """
    from .tasks import TASKS

    d = outdir_or_deploy
    if not isinstance(d, dict):
        f = Path(d) / DEPLOY_FILE
        if not f.is_file():
            raise DeployError(f"{Path(d)}: no {DEPLOY_FILE}. Pass an edgeslim output folder or its deploy.json content.")
        d = json.loads(f.read_text(encoding="utf-8"))
    engine, task = d.get("engine"), (d.get("task") or {}).get("name")
    eng = _engine(engine)
    template = eng.template_path()
    if not template.is_file():
        raise DeployError(f"no example program for engine {engine!r}: {template} is missing.")
    program = TASKS.get(task).program_path() if task in TASKS.names() else None
    if program is None or not program.is_file():
        raise DeployError(f"no example program for task {task!r} (known: "
                          f"{', '.join(n for n in TASKS.names() if TASKS.get(n).program_path().is_file())}).")
    usage = _usage(program)
    doc = _DOC.format(engine=engine, precision=d.get("precision", "?"), task=task, package=eng.package, usage=usage,
                      needs=f"{eng.package} {d.get('engine_version', '')}".strip() + ", numpy, opencv-python-headless")
    head = _fragment(Path(__file__).parent / "_predict_head.py")
    return "\n\n".join([doc.rstrip("\n"), head, _fragment(template), _fragment(program)]).rstrip("\n") + "\n" + _FOOT


def _usage(program: Path) -> str:
    import ast

    for node in ast.parse(program.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "USAGE" for t in node.targets):
            return str(ast.literal_eval(node.value))
    return "INPUT [INPUT ...]"
