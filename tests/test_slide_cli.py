"""`slide train` CLI sub-app."""

import json

import pytest
from typer.testing import CliRunner

from edgeslim.research.slide.cli import app
from edgeslim.research.slide.data import SyntheticConfig, make_synthetic_xmc, save_xmc


def test_train_synthetic_with_baselines_writes_history_and_plot(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    r = CliRunner().invoke(app, [
        "train", "--synthetic-labels", "300", "--synthetic-train", "400", "--synthetic-features", "200",
        "--hidden", "16", "--epochs", "1", "--eval-every", "1000", "--eval-samples", "100", "-K", "4", "-L", "4",
        "--max-active", "30", "--n-random", "10", "--center", "--baselines", "--out", str(out)])
    assert r.exit_code == 0, r.output
    hist = json.loads((out / "history.json").read_text())
    assert set(hist) == {"slide", "dense", "sampled", "uniform"}  # --n-random adds SLIDE with the LSH off
    assert hist["slide"]["history"][-1]["samples"] == 400
    assert hist["uniform"]["history"][-1]["samples"] == 400
    assert (out / "p1_vs_time.png").stat().st_size > 1000


def test_train_reads_xmc_files_and_reports_bad_lines(tmp_path):
    tr, te = make_synthetic_xmc(SyntheticConfig(n_train=100, n_test=30, n_features=50, n_labels=40))
    save_xmc(tr, tmp_path / "train.txt")
    save_xmc(te, tmp_path / "test.txt")
    args = ["train", "--data", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt"),
            "--hidden", "8", "--epochs", "1", "-K", "3", "-L", "2", "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (tmp_path / "test.txt").write_text("1 50 40\n3 oops\n")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "test.txt:2" in r.output
