"""What a deployment records of a model's inputs and outputs, read from ONNX files and engine sidecars."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["onnx_value_infos", "onnx_header", "external_data_files", "io_from_meta"]


def onnx_value_infos(model) -> tuple[list[dict], list[dict]]:
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


def onnx_header(path_or_model):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    return onnx.load(str(path_or_model), load_external_data=False)


def external_data_files(model) -> list[str]:
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


def io_from_meta(meta: dict, source: Any | None) -> tuple[list[dict], list[dict]]:
    """mnn/ncnn: names from the engine's sidecar; shapes and dtypes from the source ONNX where given."""
    by_name: dict[str, dict] = {}
    if source is not None:
        ins, outs = onnx_value_infos(onnx_header(source))
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
