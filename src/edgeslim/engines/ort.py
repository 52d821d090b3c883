"""onnxruntime CPU engine (the default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..policy import ThreadPolicy
from . import register_engine
from ._io import external_data_files, onnx_header, onnx_value_infos
from .base import Engine, thread_policy


class OrtRunner:
    def __init__(self, artifact: Path | bytes, threads: int, policy: str = ThreadPolicy.DEDICATED) -> None:
        import onnxruntime as ort

        tp = thread_policy(policy)
        self.policy = policy
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        for k, v in tp["ort_session_config"].items():
            so.add_session_config_entry(k, v)
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = artifact if isinstance(artifact, bytes) else str(artifact)
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


@register_engine("ort")
class OrtEngine(Engine):
    name = "ort"
    suffix = ".onnx"
    package = "onnxruntime"
    model_files = {"onnx": "model.onnx"}
    main_role = "onnx"
    roles = {"onnx": "onnx model"}

    def deploy_layout(self, artifact: Path, source=None) -> dict:
        model = onnx_header(artifact)
        copies = {artifact: self.model_files["onnx"]}
        for loc in external_data_files(model):  # big models keep weights beside the graph, under their own names
            copies[artifact.parent / loc] = loc
        inputs, outputs = onnx_value_infos(model)
        options = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "ORT_ENABLE_ALL",
                   "inter_op_num_threads": 1}
        return {"copies": copies, "options": options, "inputs": inputs, "outputs": outputs}

    def bare_files(self, path: Path) -> dict[str, str] | None:
        return {"onnx": path.name} if path.suffix == ".onnx" else None

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32", calib_feeds=None) -> Path:
        # Other precisions of ort are recipes (edgeslim.recipes): they hand this engine a rewritten ONNX model.
        self.check_precision(precision)
        onnx.save(model, str(out))
        return out

    def load(self, artifact: Path | bytes, threads: int, policy: str = ThreadPolicy.DEDICATED) -> OrtRunner:
        return OrtRunner(artifact, threads, policy)
