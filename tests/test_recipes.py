import numpy as np
import onnx
import pytest

from edgeslim.errors import InvalidParameterError
from edgeslim.recipes import RecipeContext, get_recipe, list_recipes
from edgeslim.recipes.float import from_bfloat16_bits, to_bfloat16_bits
from edgeslim.recipes.weight_only import quantize_weight
from edgeslim.study import prepare
from edgeslim.tasks.raw import cosine

from conftest import run_ort, tiny_conv_model

# cosine of each recipe's output with fp32 that it must at least reach on the tiny model
FLOOR = {"original": 0.99999, "fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "w8": 0.999, "w4": 0.95,
         "int8": 0.98, "int8-dynamic": 0.95, "mixed": 0.98}


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
                         budget=0.01, cache={"rewrites": rewrites})


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
    q, s = quantize_weight(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), 4, 0)
    assert q.min() >= -8 and q.max() <= 7 and s.shape == (4,)
