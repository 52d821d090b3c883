"""Load, repair and inspect ONNX models.

`load_onnx` turns every way a file can be wrong into one `ModelLoadError` line. `inspect_model` reports what a
deployment engineer asks first: opset, inputs with their dynamic dims, op census, parameter count (weights
stored as `Constant` nodes count too: PP-OCR stores all its weights that way), MACs for an input shape, size.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import ModelLoadError, ShapeError
from .graph import constants_to_initializers, opset_of

__all__ = ["load_onnx", "ModelInfo", "inspect_model", "input_specs", "run_all_tensors", "resolve_shape"]


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; any problem is one `ModelLoadError` naming the file and what to do."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file. Pass the path of an .onnx model.")
    if p.is_dir():
        raise ModelLoadError(f"{p} is a directory. Pass the path of an .onnx model file.")
    data = p.read_bytes()
    if not data:
        raise ModelLoadError(f"{p} is empty (0 bytes). Re-export or re-download the model.")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:
        raise ModelLoadError(
            f"{p} is not an ONNX model (protobuf parse failed: {type(e).__name__}). "
            "Pass an .onnx file exported with opset >= 10; if it was downloaded, the file may be truncated."
        ) from None
    if not model.graph.node or not model.graph.output:
        raise ModelLoadError(
            f"{p} parsed but holds no graph (nodes: {len(model.graph.node)}, outputs: {len(model.graph.output)}); "
            "it is not an ONNX model or it is truncated. Re-export or re-download it."
        )
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise ModelLoadError(f"{p} fails the ONNX checker ({msg}). The file may be truncated or corrupt; re-export it.") from None
    return model


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints for fixed dims, strings for named dynamic dims, None for unknown

    @property
    def dynamic(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int)]


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(vi.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?", tuple(dims))


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    inits = {t.name for t in model.graph.initializer}
    return [_spec(i) for i in model.graph.input if i.name not in inits]


MAX_INPUT_BYTES = 1 << 31  # one input tensor larger than 2 GiB is a typo in a shape, not a benchmark


def _check_size(spec: TensorSpec, shape: tuple[int, ...], given: bool) -> tuple[int, ...]:
    nbytes = int(np.prod([max(d, 0) for d in shape], dtype=np.float64)) * 4
    if nbytes > MAX_INPUT_BYTES:
        src = "the given --shape" if given else "the model's declared shape"
        raise ShapeError(f"input {spec.name!r}: {src} {list(shape)} needs {nbytes / 2**30:.3g} GiB for one tensor. "
                         "Pass a smaller --shape.")
    return shape


def resolve_shape(spec: TensorSpec, shape: tuple[int, ...] | None, default_dynamic: int = 1) -> tuple[int, ...]:
    """A concrete shape for an input: the given one (checked against fixed dims) or fixed dims + defaults."""
    if shape is None:
        return _check_size(spec, tuple(d if isinstance(d, int) and d > 0 else default_dynamic for d in spec.shape), False)
    shape = _check_size(spec, tuple(int(s) for s in shape), True)
    if len(shape) != len(spec.shape):
        raise ShapeError(
            f"input {spec.name!r} has rank {len(spec.shape)} {list(spec.shape)}, the given shape {list(shape)} "
            f"has rank {len(shape)}. Pass --shape with {len(spec.shape)} dims, "
            f"e.g. {'x'.join(str(d if isinstance(d, int) else 1) for d in spec.shape)}."
        )
    for i, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise ShapeError(
                f"input {spec.name!r} fixes dim {i} to {want}, the given shape has {got}. "
                f"Pass --shape with {want} at position {i}."
            )
    return shape


def run_all_tensors(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run the model with every (or the named) intermediate tensor exposed as an output; real shapes, real values."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    wanted = names if names is not None else [o for n in m.graph.node for o in n.output if o]
    for name in wanted:
        if name not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
            have.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
    except Exception as e:
        raise ShapeError(f"the model rejects the input ({str(e).splitlines()[0][:200]}). Check --shape.") from None
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


@dataclass
class ModelInfo:
    path: str
    opset: int
    ir_version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    census: dict[str, int]
    params: int
    size_bytes: int
    macs: int | None = None
    macs_shape: dict[str, list[int]] = field(default_factory=dict)
    metadata: dict[str, int] = field(default_factory=dict)  # key -> value length

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "dynamic_dims": s.dynamic} for s in self.inputs]
        d["outputs"] = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "dynamic_dims": s.dynamic} for s in self.outputs]
        return d


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every float/int weight, whether stored as initializer or as a `Constant` node."""
    n = sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    n += int(np.prod(a.t.dims)) if a.t.dims else 1
    return n


def count_macs(model: onnx.ModelProto, shapes: dict[str, np.ndarray | tuple]) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, MatMul, Gemm at the given input shapes.

    Shapes come from running the model once (onnx shape inference stalls on Shape->Reshape chains).
    """
    m = constants_to_initializers(model)
    specs = {s.name: s for s in input_specs(m)}
    feeds = {}
    for name, spec in specs.items():
        shp = resolve_shape(spec, tuple(shapes[name]) if name in shapes else None)
        feeds[name] = np.zeros(shp, dtype=np.dtype(spec.dtype) if spec.dtype != "?" else np.float32)
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    need = sorted({t for n in convs for t in list(n.input[:2]) + [n.output[0]]})
    init = {t.name: tuple(t.dims) for t in m.graph.initializer}
    vals = run_all_tensors(m, feeds, [t for t in need if t not in init and t not in feeds])
    shape_of = {**{k: v.shape for k, v in vals.items()}, **{k: v.shape for k, v in feeds.items()}, **init}
    total = 0
    for n in convs:
        out = shape_of[n.output[0]]
        w = shape_of[n.input[1]]
        if n.op_type == "Conv":
            total += int(np.prod(out)) * int(np.prod(w[1:]))  # per output: Cin/group * kh * kw
        elif n.op_type == "ConvTranspose":
            x = shape_of[n.input[0]]
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type == "MatMul":
            total += int(np.prod(out)) * int(shape_of[n.input[0]][-1])
        else:  # Gemm
            a = shape_of[n.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            total += int(np.prod(out)) * int(a[0] if trans_a else a[-1])
    return total


def inspect_model(path: str | os.PathLike, shape: dict[str, tuple] | tuple | None = None) -> ModelInfo:
    """What the model is: opset, IO with dynamic dims, op census, params, MACs at a shape, file size.

    >>> info = inspect_model("model.onnx", shape=(1, 3, 48, 320))  # doctest: +SKIP
    >>> info.macs  # doctest: +SKIP
    """
    model = load_onnx(path)
    ins = input_specs(model)
    if isinstance(shape, tuple) and ins:
        shape = {ins[0].name: shape}
    shape = shape or {}
    census = Counter(n.op_type for n in model.graph.node)
    info = ModelInfo(
        path=str(path),
        opset=opset_of(model),
        ir_version=model.ir_version,
        inputs=ins,
        outputs=[_spec(o) for o in model.graph.output],
        census=dict(census.most_common()),
        params=count_params(model),
        size_bytes=os.path.getsize(path),
        metadata={p.key: len(p.value) for p in model.metadata_props},
    )
    all_fixed = all(all(isinstance(d, int) and d > 0 for d in s.shape) for s in ins)
    if shape or all_fixed:
        info.macs = count_macs(model, shape)
        info.macs_shape = {s.name: list(resolve_shape(s, tuple(shape[s.name]) if s.name in shape else None)) for s in ins}
    return info
