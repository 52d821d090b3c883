import numpy as np
import onnx
import pytest

from edgeslim.errors import InvalidParameterError
from edgeslim.recipes import RecipeContext, get_recipe, list_recipes
from edgeslim.recipes.float import from_bfloat16_bits, to_bfloat16_bits
from edgeslim.recipes.weight_only import quantize_weight
from edgeslim.graph import prepare
from edgeslim.tasks.raw import cosine

from conftest import run_ort, tiny_conv_model

# cosine of each recipe's output with fp32 that it must at least reach on the tiny model
FLOOR = {"original": 0.99999, "fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "w8": 0.999, "w4": 0.95,
         "int8": 0.98, "int8-dynamic": 0.95, "mixed": 0.98,
         "int8-transformer": 0.98}  # int8 MatMul weights only here: the tiny model has no Gather or attention


def _ctx():
    original = tiny_conv_model()
    prepared, rewrites = prepare(original)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    ref = [run_ort(original, f)[0] for f in calib]

    def calib_drop(m):
        outs = [run_ort(m, f)[0] for f in calib]
        cos = float(np.mean([cosine(a, b) for a, b in zip(outs, ref)]))
        return 1 - cos, {"exact_match": float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(outs, ref)])), "metric_vs_fp32": 1 - cos}

    return RecipeContext(model=prepared, original=original, calib_feeds=lambda: iter(calib), calib_drop=calib_drop,
                         budget=0.01, rewrites=rewrites)


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_every_recipe_contract(name):
    assert name in list_recipes()
    ctx = _ctx()
    r = get_recipe(name)
    out = r.apply(ctx)
    onnx.checker.check_model(out.model)
    x = np.random.default_rng(9).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    ref = run_ort(ctx.original, {"x": x})[0]
    got = run_ort(out.model, {"x": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert cosine(got, ref) >= FLOOR[name]
    # the spec round-trips through the parser
    assert get_recipe(r.spec).spec == r.spec


def test_every_registered_recipe_has_a_floor():
    assert set(list_recipes()) <= set(FLOOR)


def test_int8_is_per_channel_qdq_at_opset_13_plus():
    out = get_recipe("int8:calibrator=minmax").apply(_ctx())
    dq = [n for n in out.model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq, "no QDQ nodes"
    init = {t.name: t for t in out.model.graph.initializer}
    per_channel = [n for n in dq if n.input[1] in init and len(init[n.input[1]].dims) == 1 and init[n.input[1]].dims[0] > 1]
    assert per_channel, "weights are not per-channel"
    assert max(i.version for i in out.model.opset_import if i.domain in ("", "ai.onnx")) >= 13


def test_mixed_reports_sensitivity_table():
    out = get_recipe("mixed").apply(_ctx())
    table = out.info["sensitivity"]
    assert {r["node"] for r in table} == {"conv1", "conv2", "fc"}
    assert [r["output_sqnr_db"] for r in table] == sorted(r["output_sqnr_db"] for r in table)
    assert all(r["sqnr_db"] > 10 and r["output_sqnr_db"] > 10 for r in table)
    assert all(isinstance(r["kept_fp32"], bool) for r in table)


def test_recipe_options_are_checked():
    assert get_recipe("int8:calibrator=mse").config.calibrator == "mse"
    with pytest.raises(InvalidParameterError, match="not valid for 'int8'"):
        get_recipe("int8:bogus=1")


def test_bf16_rounding_and_w4_range():
    x = np.array([1.0, 1.00390625, -2.5, 3.14159, 0.0], np.float32)
    y = from_bfloat16_bits(to_bfloat16_bits(x))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2**-8)
    # round to nearest, ties to even (truncation would give 1.0 for all three): bf16's step at 1.0 is 2^-7
    x = np.array([1 + 0.75 * 2**-7, 1 + 0.5 * 2**-7, 1 + 1.5 * 2**-7, -(1 + 0.75 * 2**-7)], np.float32)
    y = from_bfloat16_bits(to_bfloat16_bits(x))
    assert y.tolist() == [1 + 2**-7, 1.0, 1 + 2 * 2**-7, -(1 + 2**-7)]
    q, s = quantize_weight(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), 4, 0)
    assert q.min() >= -8 and q.max() <= 7 and s.shape == (4,)


def test_weight_only_recipes_quantize_real_sized_weights():
    """The contract test's tiny model has no weight above the 1024-element threshold; this one does."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.05, (64, 32, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.05, (64, 32)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["r"]),
                           helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["f"]),
                           helper.make_node("MatMul", ["f", "w2"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32)
    ctx = RecipeContext(model=m, original=m, calib_feeds=lambda: iter([{"x": x}]))
    ref = run_ort(m, {"x": x})[0]
    fp32 = len(m.SerializeToString())
    cos = {}
    for spec, ratio, floor in (("w8", 0.3, 0.9999), ("w4", 0.2, 0.99), ("w4:block=32", 0.25, 0.99)):
        out = get_recipe(spec).apply(ctx)
        assert out.info["quantized_weights"] == 2, spec
        assert len(out.model.SerializeToString()) < ratio * fp32, spec
        cos[spec] = cosine(run_ort(out.model, {"x": x})[0], ref)
        assert cos[spec] >= floor, spec
    assert cos["w4:block=32"] > cos["w4"]  # finer scales, closer outputs


def test_fp16_keeps_the_nodes_fp16_breaks():
    """x -> *1e5 (a constant beyond fp16's 65504) -> Relu -> *1e-3 -> Relu -> *10 -> y. Plain fp16 clamps the
    constant to 65504 (outputs 34% low); keep=auto keeps that node (and its constant) in fp32 and agrees with fp32."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.recipes import RecipeContext, get_recipe

    c = {k: numpy_helper.from_array(np.array([v], np.float32), k) for k, v in (("a", 1e5), ("b", 1e-3), ("c", 10.0))}
    g = helper.make_graph([helper.make_node("Mul", ["x", "a"], ["t1"], name="m1"),
                           helper.make_node("Relu", ["t1"], ["r1"], name="r1"),
                           helper.make_node("Mul", ["r1", "b"], ["t2"], name="m2"),
                           helper.make_node("Relu", ["t2"], ["r2"], name="r2"),
                           helper.make_node("Mul", ["r2", "c"], ["y"], name="m3")], "ovf",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], list(c.values()))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.random.default_rng(0).uniform(0.5, 1.0, (1, 64)).astype(np.float32)
    ctx = RecipeContext(model=m, original=m, calib_feeds=lambda: iter([{"x": x}]))
    plain = get_recipe("fp16:keep=none").apply(ctx).model
    assert np.abs(run_ort(plain, {"x": x})[0] / (1e3 * x) - 1).max() > 0.3
    out = get_recipe("fp16").apply(ctx)
    # the producer of the 1e5-sized tensors and their readers stay fp32; the last Mul runs in fp16
    assert {"m1", "r1", "m2"} <= set(out.info["fp32_nodes"]) and "m3" not in out.info["fp32_nodes"]
    np.testing.assert_allclose(run_ort(out.model, {"x": x})[0], 1e3 * x, rtol=2e-3)


def test_absorb_affine_into_quantize_keeps_padding_exact():
    """Q(a*x + b) == Q'(x) with scale s/a and zero point z + b/s: a zero-padded int8 conv after it pads with the
    zero point, i.e. 0 in the affine's output domain, as the float model does. Outputs agree within one step."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.quant.passes import absorb_affine_into_quantize

    rng = np.random.default_rng(0)
    C = 4
    a, b = 1.7, 0.3
    s, z = np.float32(0.02), np.uint8(40)
    inits = [numpy_helper.from_array(np.full(C, a, np.float32), "g"), numpy_helper.from_array(np.full(C, b, np.float32), "be"),
             numpy_helper.from_array(np.zeros(C, np.float32), "mu"), numpy_helper.from_array(np.full(C, 1 - 1e-5, np.float32), "var"),
             numpy_helper.from_array(np.array(s), "s"), numpy_helper.from_array(np.array(z), "z"),
             numpy_helper.from_array(rng.normal(0, 0.3, (C, 1, 3, 3)).astype(np.float32), "w")]
    g = helper.make_graph([
        helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["aff"], name="lab"),
        helper.make_node("QuantizeLinear", ["aff", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
        helper.make_node("Conv", ["dq", "w"], ["y"], group=C, kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="dw")], "lab",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.uniform(0, 1.5, (1, C, 6, 6)).astype(np.float32)
    before = run_ort(m, {"x": x})[0]
    m2, info = absorb_affine_into_quantize(onnx.load_from_string(m.SerializeToString()))
    assert info["absorbed"] == 1 and 0 <= info["max_shift_steps"] <= 0.5
    assert [n.op_type for n in m2.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Conv"]
    after = run_ort(m2, {"x": x})[0]
    wsum = np.abs(numpy_helper.to_array(inits[-1])).reshape(C, -1).sum(1).max()
    assert np.abs(after - before).max() <= float(s) * wsum * 1.01  # at most one quantization step per tap
    # a per-channel (non-scalar) affine, or one with a < 0, is left alone
    inits[0] = numpy_helper.from_array(np.array([1.0, 2.0, 1.0, 1.0], np.float32), "g")
    del m.graph.initializer[0]
    m.graph.initializer.insert(0, inits[0])
    assert absorb_affine_into_quantize(m)[1]["absorbed"] == 0


def test_blockwise_weights_match_dequantizelinear_21():
    """w4:block=32: one scale per 32 input channels; onnxruntime's blocked DequantizeLinear reads the same values
    back, each within half a step of the fp32 weight."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.recipes.weight_only import _int4_tensor, quantize_weight_blocked

    w = np.random.default_rng(0).normal(0, 0.2, (6, 70, 3, 3)).astype(np.float32)  # 70 = 2 full blocks + 6
    q, scale = quantize_weight_blocked(w, 4, 1, 32)
    assert q.shape == w.shape and scale.shape == (6, 3, 3, 3) and q.min() >= -8 and q.max() <= 7
    want = q.astype(np.float32) * np.repeat(scale, 32, axis=1)[:, :70]
    assert np.abs(want - w).max() <= np.repeat(scale, 32, axis=1)[:, :70].max() / 2 + 1e-7
    g = helper.make_graph([helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=32)], "dq", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(w.shape))],
                          [_int4_tensor("q", q), numpy_helper.from_array(scale, "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    np.testing.assert_allclose(run_ort(m, {})[0], want, rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidParameterError, match="power of two"):
        get_recipe("w4:block=24")


def test_bias_correction_matches_fp32_channel_means():
    """After correction each quantized conv's per-channel output mean on the calibration samples is closer to fp32's,
    only int32 bias values change (same graph, same int8 fusions), and a model without quantized biases is untouched."""
    from edgeslim.quant.bias_correction import _channel_means, conv_bias_sites, correct_bias
    from edgeslim.recipes.int8 import quantize_qdq

    m = tiny_conv_model(opset=13)  # per-channel DequantizeLinear (int32 bias) needs opset >= 13
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0.3, 1.0, (2, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    # coarse activation ranges (a wide range = big steps) so rounding visibly shifts the channel means
    ranges = {k: (-8.0, 8.0) for k in ("x", "c1", "p2", "c2", "f", "y")}
    q = quantize_qdq(m, ranges, per_channel=False)
    sites = conv_bias_sites(q)
    assert set(sites) == {"c1", "c2"}
    before = _channel_means(q, ["c2"], feeds, 1)["c2"]
    ref = _channel_means(m, ["c2"], feeds, 1)["c2"]
    qc, info = correct_bias(q, m, lambda: iter(feeds), threads=1)
    after = _channel_means(qc, ["c2"], feeds, 1)["c2"]
    assert info["corrected"] == 2
    assert np.abs(after - ref).mean() < 0.5 * np.abs(before - ref).mean()
    assert info["mean_abs_channel_shift"]["after"] < info["mean_abs_channel_shift"]["before"]
    assert [n.op_type for n in qc.graph.node] == [n.op_type for n in q.graph.node]
    changed = {t.name for t, u in zip(q.graph.initializer, qc.graph.initializer) if t.SerializeToString() != u.SerializeToString()}
    assert changed and changed <= {v[0] for v in sites.values()}
    assert correct_bias(m, m, lambda: iter(feeds))[1]["corrected"] == 0
    # the recipe option runs it
    ctx = RecipeContext(model=m, original=m, calib_feeds=lambda: iter(feeds), threads=1)
    out = get_recipe("int8:calibrator=minmax,bias_correction=true").apply(ctx)
    assert out.info["bias_correction"]["corrected"] == 2
