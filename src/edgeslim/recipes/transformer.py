"""int8 for transformer encoders: int8 MatMul/Attention weights per channel, 4-bit embedding tables, optional fusions.

Three steps, each one a well-kept tool or a small exact rewrite:
1. `fuse=true`: onnxruntime's transformer optimizer (`onnxruntime.transformers.optimizer`, model type `bert`) folds
   Add + LayerNormalization into `SkipLayerNormalization`, bias + GELU into `BiasGelu`, and, where it recognises the
   pattern, each layer's Q/K/V MatMuls, softmax and mask into one `Attention` op. On the eager-attention export of
   transformers 5 it does not recognise the attention, and the remaining fusions did not make the int8 model
   measurably faster (benchmarks/theseus.py), so it is off by default.
2. int8: onnxruntime's dynamic quantization of `MatMul` and `Attention` weights (int8, per output channel),
   activations quantized per call (no calibration: activation ranges of text vary from sentence to sentence).
3. `embed_bits=4`: the word-embedding table (11.7M of MiniLM-L6's 22.7M weights; in a 3-layer student it is most of
   the file) stored as packed 4-bit codes with an fp16 scale and offset per block of `embed_block` values. A lookup
   gathers the packed rows of the sentence's tokens and unpacks only them, with 13 standard ONNX ops (Gather, Cast,
   Floor, Mul, Sub, Concat, a MatMul that spreads each block's scale and offset over its values, Split, Add). Own
   rewrite because onnxruntime's 4-bit tools need `onnx_ir` and produce the `GatherBlockQuantized` contrib op, and a
   DequantizeLinear in front of the Gather would expand the whole table on every call. `embed_bits=8` leaves the
   table to onnxruntime's int8 Gather; `32` keeps it in fp32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InvalidParameterError, RecipeError
from . import register_recipe
from .base import Recipe, RecipeContext, RecipeOutput
from .int8 import _quiet_root_logger  # onnxruntime's optimizer and quantizer log on the root logger

__all__ = ["Int8Transformer", "fuse_transformer", "quantize_embeddings_4bit", "pack_4bit", "unpack_4bit", "MIN_TABLE_ROWS"]

# Gather tables with at least this many rows go to 4 bits: the vocabulary and BERT's 512 positions; the 2-row
# token-type table stays (the positions are 0.8 MB in fp32: left as they are, a 3-layer MiniLM misses 15% of the
# teacher's size by that much).
MIN_TABLE_ROWS = 512


def fuse_transformer(model: onnx.ModelProto, *, keep_embedding_gather: bool = False) -> tuple[onnx.ModelProto, dict]:
    """onnxruntime's BERT fusions (Attention, SkipLayerNormalization, BiasGelu); returns (model, fused op counts).

    `keep_embedding_gather`: leave the embedding lookups unfused (an `EmbedLayerNormalization` would hide the word
    table from the 4-bit rewrite)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    if keep_embedding_gather:
        opts.enable_embed_layer_norm = False
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="edgeslim-tf-") as d:
        src = Path(d) / "in.onnx"
        onnx.save(model, str(src))
        try:
            # num_heads / hidden_size 0: read from the graph
            opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, optimization_options=opts,
                                 opt_level=0)
        except Exception as e:
            raise RecipeError(f"onnxruntime's transformer optimizer failed: {str(e).splitlines()[0][:200]}") from None
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        out = Path(d) / "fused.onnx"
        opt.save_model_to_file(str(out))  # adds the com.microsoft opset import the fused ops need
        return onnx.load(str(out)), stats


def pack_4bit(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit codes per block of `block` values along the last axis of a [rows, dim] table.

    Returns (packed uint8 [rows, dim / 2]: column j holds element j in its low nibble and element j + dim / 2 in its
    high one, so unpacking is one concatenation; scale fp16 [rows, dim / block]; offset fp16 [rows, dim / block]),
    so that value = code * scale + offset.
    """
    rows, dim = w.shape
    if dim % block or dim % 2:
        raise RecipeError(f"4-bit embeddings: dim {dim} is not an even multiple of the block {block}. Use a block "
                          "that divides it.")
    b = w.reshape(rows, dim // block, block).astype(np.float32)
    lo, hi = b.min(-1), b.max(-1)
    # rounding to fp16 first: the codes are computed against the scale and offset the model will use
    off = lo.astype(np.float16)
    span = hi - off.astype(np.float32)
    scale = np.where(span > 0, span / 15.0, 1.0).astype(np.float16)  # a constant block: every code 0
    s32, o32 = scale.astype(np.float32)[..., None], off.astype(np.float32)[..., None]
    q = np.clip(np.round((b - o32) / s32), 0, 15).astype(np.uint8).reshape(rows, dim)
    half = dim // 2
    packed = (q[:, :half] | (q[:, half:] << 4)).astype(np.uint8)
    return packed, scale, off


def unpack_4bit(packed: np.ndarray, scale: np.ndarray, off: np.ndarray, block: int) -> np.ndarray:
    """The float table `pack_4bit` encodes (NumPy reference of the graph's lookup)."""
    rows, half = packed.shape
    q = np.concatenate([packed & 15, packed >> 4], axis=1).astype(np.float32).reshape(rows, -1, block)
    return (q * scale.astype(np.float32)[..., None] + off.astype(np.float32)[..., None]).reshape(rows, 2 * half)


def _block_expander(n_blocks: int, block: int) -> np.ndarray:
    """[2 nb, 2 nb * block] 0/1 matrix: [scales | offsets] per block @ it = [scale | offset] per element."""
    dim = n_blocks * block
    e = np.zeros((2 * n_blocks, 2 * dim), np.float32)
    for i in range(n_blocks):
        e[i, i * block : (i + 1) * block] = 1.0
        e[n_blocks + i, dim + i * block : dim + (i + 1) * block] = 1.0
    return e


def quantize_embeddings_4bit(model: onnx.ModelProto, block: int = 32, min_rows: int = MIN_TABLE_ROWS) -> tuple[onnx.ModelProto, list[str]]:
    """Replace each embedding `Gather` (an fp32 initializer table of >= `min_rows` rows) by a lookup of packed
    4-bit rows unpacked after the gather (13 small ops on the sentence's rows). Returns (new model, replaced
    table names)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    new_nodes, replaced, drop = [], [], set()
    for n in g.node:
        table = init.get(n.input[0]) if n.op_type == "Gather" and n.input else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if (table is None or axis != 0 or table.data_type != TensorProto.FLOAT or len(table.dims) != 2
                or table.dims[0] < min_rows or table.dims[1] % block or table.dims[1] % 2):
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(table)
        packed, scale, off = pack_4bit(w, block)
        base = n.input[0]
        dim, nb = w.shape[1], w.shape[1] // block
        names = {k: f"{base}_q4_{k}" for k in ("packed", "scale_offset", "expand", "sixteenth", "sixteen", "split")}
        g.initializer.extend([numpy_helper.from_array(packed, names["packed"]),
                              numpy_helper.from_array(np.concatenate([scale, off], axis=1), names["scale_offset"]),
                              numpy_helper.from_array(_block_expander(nb, block), names["expand"]),
                              numpy_helper.from_array(np.array(1 / 16, np.float32), names["sixteenth"]),
                              numpy_helper.from_array(np.array(16.0, np.float32), names["sixteen"]),
                              numpy_helper.from_array(np.array([dim, dim], np.int64), names["split"])])
        ids, out = n.input[1], n.output[0]
        t = lambda s, out=out: f"{out}_q4_{s}"  # noqa: E731
        new_nodes += [
            helper.make_node("Gather", [names["packed"], ids], [t("p")], name=t("gather")),
            helper.make_node("Cast", [t("p")], [t("pf")], to=TensorProto.FLOAT, name=t("cast")),
            helper.make_node("Mul", [t("pf"), names["sixteenth"]], [t("pd")], name=t("div16")),
            helper.make_node("Floor", [t("pd")], [t("hi")], name=t("floor")),  # high nibbles: elements dim/2..
            helper.make_node("Mul", [t("hi"), names["sixteen"]], [t("hi16")], name=t("mul16")),
            helper.make_node("Sub", [t("pf"), t("hi16")], [t("lo")], name=t("sub")),  # low nibbles: elements 0..
            helper.make_node("Concat", [t("lo"), t("hi")], [t("q")], axis=-1, name=t("codes")),
            helper.make_node("Gather", [names["scale_offset"], ids], [t("so16")], name=t("gather_scale")),
            helper.make_node("Cast", [t("so16")], [t("so")], to=TensorProto.FLOAT, name=t("cast_scale")),
            helper.make_node("MatMul", [t("so"), names["expand"]], [t("sof")], name=t("expand")),
            helper.make_node("Split", [t("sof"), names["split"]], [t("s"), t("o")], axis=-1, name=t("split")),
            helper.make_node("Mul", [t("q"), t("s")], [t("qs")], name=t("scale_mul")),
            helper.make_node("Add", [t("qs"), t("o")], [out], name=t("offset_add")),
        ]
        replaced.append(base)
        uses[base] -= 1
        if uses[base] == 0:
            drop.add(base)
    if not replaced:
        return m, []
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m, replaced


def _quantize_dynamic(model: onnx.ModelProto, op_types: list[str], per_channel: bool,
                      exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as d, _quiet_root_logger():
        src, out = Path(d) / "in.onnx", Path(d) / "q.onnx"
        onnx.save(model, str(src))
        try:
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=op_types, nodes_to_exclude=list(exclude),
                             # fused contrib ops defeat shape inference; their outputs are float
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        except Exception as e:
            raise RecipeError(f"quantize_dynamic failed: {str(e).splitlines()[0][:200]}") from None
        return onnx.load(str(out))


@register_recipe("int8-transformer")
class Int8Transformer(Recipe):
    """Transformer encoders: int8 MatMul/Attention weights per channel (dynamic activations), embedding tables in
    4 bits, optionally onnxruntime's transformer fusions (see the module docstring). Needs no calibration data."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        # off by default: on a transformers-5 export of MiniLM the optimizer fuses SkipLayerNormalization and BiasGelu
        # but not the attention, and three runs of benchmarks/theseus.py timed the fused int8 model no faster
        fuse: bool = False
        per_channel: bool = True
        embed_bits: int = 4  # 4 | 8 | 32
        embed_block: int = 32

    def validate(self) -> None:
        if self.config.embed_bits not in (4, 8, 32):
            raise InvalidParameterError(f"recipe option {self.registered_name}:embed_bits={self.config.embed_bits} is "
                                        "not valid: use 4, 8 or 32.")
        b = self.config.embed_block
        if b < 2 or b & (b - 1):
            raise InvalidParameterError(f"recipe option {self.registered_name}:embed_block={b} must be a power of two "
                                        ">= 2, e.g. 32.")

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        c = self.config
        m, info = ctx.model, {}
        if c.fuse:
            m, info["fused"] = fuse_transformer(m, keep_embedding_gather=c.embed_bits == 4)
        if c.embed_bits == 4:
            m, info["embeddings_4bit"] = quantize_embeddings_4bit(m, c.embed_block)
        ops = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if c.embed_bits == 8 else [])
        # the 4-bit lookups' scale-spreading MatMuls are exact in fp32; int8 would round every scale and offset
        keep = tuple(n.name for n in m.graph.node if n.op_type == "MatMul" and n.name.endswith("_q4_expand"))
        m = _quantize_dynamic(m, ops, c.per_channel, keep)
        info["quantized_ops"] = ops
        return RecipeOutput(m, info)
