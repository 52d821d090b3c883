"""XMC loader / writer and the synthetic generator."""

import numpy as np
import pytest

from edgeslim.errors import DataError, InvalidParameterError
from edgeslim.research.slide.data import SyntheticConfig, load_xmc, make_synthetic_xmc, save_xmc


def _write(tmp_path, text, name="d.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_reads_the_format_including_empty_label_lines(tmp_path):
    p = _write(tmp_path, "3 10 5\n0,4 1:0.5 7:2\n 3:1.0\n2 9:0.25\n")
    d = load_xmc(p)
    assert (d.n_samples, d.n_features, d.n_labels) == (3, 10, 5)
    assert d.labels(0).tolist() == [0, 4] and d.labels(1).tolist() == [] and d.labels(2).tolist() == [2]
    f, v = d.features(0)
    assert f.tolist() == [1, 7] and v.tolist() == [0.5, 2.0]
    assert d.features(1)[0].tolist() == [3]


def test_save_load_round_trip(tmp_path):
    train, _ = make_synthetic_xmc(SyntheticConfig(n_train=50, n_test=5, n_features=80, n_labels=40))
    p = tmp_path / "rt.txt"
    save_xmc(train, p)
    back = load_xmc(p)
    for a in ("x_indptr", "x_idx", "y_indptr", "y_idx"):
        np.testing.assert_array_equal(getattr(back, a), getattr(train, a))
    np.testing.assert_allclose(back.x_val, train.x_val, rtol=1e-5)


@pytest.mark.parametrize("text, line, what", [
    ("2 10 5\n0 1:0.5\n1,x 2:1\n", 3, "labels"),
    ("2 10 5\n0 1:0.5\n1 2-1\n", 3, "feature token"),
    ("2 10 5\n0 1:abc\n1 2:1\n", 2, "feature token"),
    ("2 10 5\n7 1:0.5\n1 2:1\n", 2, "label 7"),
    ("2 10 5\n0 1:0.5\n1 12:1\n", 3, "feature 12"),
    ("2 ten 5\n0 1:0.5\n", 1, "header"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, line, what):
    p = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_xmc(p)
    msg = str(e.value)
    assert f"{p}:{line}:" in msg and what in msg


def test_sample_count_mismatch_and_missing_file(tmp_path):
    p = _write(tmp_path, "3 10 5\n0 1:0.5\n")
    with pytest.raises(DataError, match="header says 3 samples but the file has 1"):
        load_xmc(p)
    with pytest.raises(DataError, match="no such file"):
        load_xmc(tmp_path / "nope.txt")


def test_synthetic_is_seeded_power_law_and_label_correlated():
    cfg = SyntheticConfig(n_train=3000, n_test=10, n_features=5000, n_labels=2000, seed=3)
    a, _ = make_synthetic_xmc(cfg)
    b, _ = make_synthetic_xmc(cfg)
    c, _ = make_synthetic_xmc(SyntheticConfig(n_train=3000, n_test=10, n_features=5000, n_labels=2000, seed=4))
    np.testing.assert_array_equal(a.x_idx, b.x_idx)
    assert not np.array_equal(a.y_idx[:100], c.y_idx[:100])
    counts = np.sort(a.label_counts())[::-1]
    # power law: the top 1% of labels carry a large share, most labels are rare
    assert counts[:20].sum() / counts.sum() > 0.25
    assert (counts <= 1).mean() > 0.5
    # features are label-correlated: samples sharing their first label share far more features
    by_label = {}
    for i in range(a.n_samples):
        by_label.setdefault(int(a.labels(i)[0]), []).append(i)
    same = [v for v in by_label.values() if len(v) >= 2][:50]
    ov_same = np.mean([np.intersect1d(a.features(s[0])[0], a.features(s[1])[0]).size for s in same])
    ov_rand = np.mean([np.intersect1d(a.features(i)[0], a.features(i + 1)[0]).size for i in range(0, 200, 2)])
    assert ov_same > 2.0 and ov_same > 5 * ov_rand
    norms = [np.linalg.norm(a.features(i)[1]) for i in range(20)]
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    with pytest.raises(InvalidParameterError):
        SyntheticConfig(n_labels=0).validate()
