import numpy as np
import pytest

from edgeslim.errors import DataError
from edgeslim.tasks import get_task
from edgeslim.tasks.ocr_rec import cer, ctc_greedy, edit_distance, read_labels


def test_edit_distance_and_cer():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert cer(["abc", "xy"], ["abd", "xyz"]) == pytest.approx(2 / 6)


def test_ctc_greedy_merges_repeats_and_drops_blank():
    charset = ["<blank>", "a", "b"]
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 2]
    probs = np.eye(3)[seq][None]
    assert ctc_greedy(probs, charset) == ["aabb"]


def _write_png(path, h=20, w=60):
    import cv2

    cv2.imwrite(str(path), np.full((h, w, 3), 200, np.uint8))


def test_ocr_data_errors(tmp_path):
    t = get_task("ocr-rec", charset=["<blank>", "a"])
    with pytest.raises(DataError, match="not found"):
        t.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        t.load(empty)
    d = tmp_path / "d"
    d.mkdir()
    _write_png(d / "a.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n garbage")
    (d / "labels.tsv").write_text("a.png\tabc\nno tab here\n")
    with pytest.raises(DataError, match=r"labels.tsv:2: expected 'filename<TAB>text'"):
        t.load(d)
    (d / "labels.tsv").write_text("a.png\tabc\na.png\tabc\nbad.png\txyz\n")
    with pytest.raises(DataError, match=r"labels.tsv:3: .*bad.png: cannot decode"):
        t.load(d)
    (d / "labels.tsv").write_text("a.png\tabc\nmissing.png\txyz\n")
    with pytest.raises(DataError, match=r"missing.png: image file not found"):
        t.load(d)


def test_ocr_user_data_split_and_batches(tmp_path):
    for i in range(6):
        _write_png(tmp_path / f"{i}.png", w=40 + 30 * i)
    (tmp_path / "labels.tsv").write_text("".join(f"{i}.png\tline {i}\n" for i in range(6)))
    t = get_task("ocr-rec", charset=["<blank>", "a"], calib_size=2)
    calib, ev = t.load(tmp_path)
    assert [s.name for s in calib] == ["0.png", "1.png"] and len(ev) == 4
    seen = []
    for b in t.batches(ev, 3):
        x = b.feeds["x"]
        assert x.shape[1:3] == (3, 48) and x.shape[3] >= 320 and x.shape[3] % 32 == 0
        seen += b.index
    assert sorted(seen) == [0, 1, 2, 3]


def test_bundled_set_split_is_disjoint():
    import json

    from edgeslim.tasks.ocr_rec import BUNDLED

    split = json.loads((BUNDLED / "split.json").read_text())
    assert not set(split["calib"]) & set(split["eval"])
    assert len(split["calib"]) <= 100 and len(split["calib"]) + len(split["eval"]) >= 600
    rows = read_labels(BUNDLED / "labels.tsv")
    assert all(2 <= len(text) <= 25 for _, _, text in rows)


def test_classify_and_raw_errors(tmp_path):
    c = get_task("classify")
    with pytest.raises(DataError, match="no class sub-folders"):
        c.load(tmp_path)
    r = get_task("raw")
    r.input_names = ["x"]
    np.savez(tmp_path / "in.npz", y=np.zeros((4, 3)))
    with pytest.raises(DataError, match="no array named 'x'"):
        r.load(tmp_path / "in.npz")
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 3), np.float32))
    calib, ev = r.load(tmp_path / "in.npz")
    assert len(calib) == 2 and len(ev) == 2 and ev[0]["x"].shape == (1, 3)


def test_classify_loads_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", 30, 30)
    t = get_task("classify", size=(16, 16))
    calib, ev = t.load(tmp_path)
    assert len(calib) + len(ev) == 6 and {s.label for s in calib + ev} == {0, 1}
    b = next(iter(t.batches(ev, 8)))
    assert b.feeds["input"].shape == (len(ev), 3, 16, 16)
