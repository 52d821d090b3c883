"""What a newcomer reads: report.html rendered from the same Markdown as report.md (every section, no Markdown
syntax left), the selection's reasons for every other timed candidate, and speed classes."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

from edgeslim.candidate import Candidate, Status
from edgeslim.report import write_report
from edgeslim.select import select
from edgeslim.study import StudyConfig, optimize

from conftest import tiny_conv_model


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.h2, self.tags, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "h2":
            self.h2.append(data.strip())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    model, data = tmp / "tiny.onnx", tmp / "in.npz"
    tiny_conv_model(model)
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32))
    res = optimize(StudyConfig(model=str(model), task="raw", data=str(data), recipes=("fp32", "bf16", "w8"),
                               engines=("ort",), rounds=2, confirm_top=2, cache=False), tmp / "w")
    return res, write_report(res, tmp / "w")


def test_html_has_every_section_and_no_markdown_left(finished):
    res, paths = finished
    md_sections = re.findall(r"^#{2,3} (.+)$", paths["md"].read_text(), flags=re.M)
    page = _Text()
    page.feed(paths["html"].read_text())
    text = "".join(page.text)
    for title in md_sections:  # the same sections, as headings
        assert title.replace("`", "") in text, title
    assert "How the selection was made" in page.h2 and "Telemetry during benchmarking" in page.h2
    assert {"table", "h1", "h2", "img", "code"} <= set(page.tags)
    for syntax in ("## ", "|---", "![", "`", "**"):  # Markdown that was not rendered
        assert syntax not in text, syntax
    assert 'src="data:image/png;base64,' in paths["html"].read_text()  # the plot travels inside the page
    assert "[" in text and "x [" in text  # speedup ranges in the table


def test_every_other_timed_candidate_says_why_it_lost(finished):
    res, paths = finished
    lost = res.selection["lost"]
    timed = [c for c in res.candidates if c.status == Status.OK and c.ratios and c.id != res.selected]
    assert timed and set(lost) >= {c.id for c in timed}
    assert all(isinstance(v, str) and v for v in lost.values())
    md = paths["md"].read_text()
    for cid in lost:
        assert f"`{cid}` lost: " in md
    bf16 = res.candidate("ort/bf16")
    assert bf16.info["same_compute_as"] == "ort/fp32"  # the study knows bf16 weights run the fp32 graph


def _c(cid, speedup, fid, size, **info):
    rng = np.random.default_rng(abs(hash(cid)) % 2**32)
    ratios = list(speedup * (1 + rng.uniform(-0.01, 0.01, 7)))
    return Candidate(id=cid, recipe=cid.split("/")[1], engine="ort", speedup=speedup, ratios=ratios,
                     fidelity={"exact_match": fid}, size_bytes=size, info=dict(info))


def test_same_compute_never_wins_on_speed_alone():
    base = _c("ort/original", 1.0, 1.0, 10_000_000)
    fp32 = _c("ort/fp32", 1.29, 1.0, 10_000_000)
    bf16 = _c("ort/bf16", 1.51, 0.953, 5_000_000, same_compute_as="ort/fp32")
    pick, how = select([base, fp32, bf16], base)
    assert pick is fp32  # bf16's lead over fp32 is noise: one speed class, the tie goes to fidelity
    assert "same compute as ort/fp32" in how["lost"]["ort/bf16"] and "lower fidelity" in how["lost"]["ort/bf16"]
    # the contrast: the same figures without the declared twin, and bf16's measured lead decides
    bf16.info.clear()
    pick, how = select([base, fp32, bf16], base)
    assert pick is bf16 and "beats it" in how["lost"]["ort/fp32"]


def test_lost_reasons_name_margin_fidelity_and_size():
    base = _c("ort/original", 1.0, 1.0, 10)
    a = _c("ort/a", 2.0, 1.0, 5)
    b = _c("ort/b", 1.98, 0.9, 5)   # tied on speed, lower fidelity
    c = _c("ort/c", 2.01, 1.0, 8)   # tied, same fidelity, larger
    d = _c("ort/d", 1.2, 1.0, 1)    # slower by a supported margin
    e = _c("ort/e", 0.8, 1.0, 1)    # slower than the original
    pick, how = select([base, a, b, c, d, e], base)
    assert pick is a
    lost = how["lost"]
    assert "lower fidelity" in lost["ort/b"] and "larger" in lost["ort/c"]
    assert "beats it by" in lost["ort/d"] and "slower than the original" in lost["ort/e"]


def test_a_fidelity_gap_within_sampling_noise_is_a_tie_that_size_breaks():
    # the PP-OCRv4 case: OpenVINO int8 (140 of 150 lines as the original's) ties bf16 (143) on speed and is smaller
    base = _c("ort/original", 1.0, 1.0, 10_860_000)
    bf16 = _c("openvino/bf16", 2.89, 143 / 150, 5_720_000)
    int8 = _c("openvino/int8", 2.87, 140 / 150, 4_700_000)
    for c in (base, bf16, int8):
        c.fidelity["samples"] = 150
    pick, how = select([base, bf16, int8], base)
    assert pick is int8 and "within sampling noise" in how["lost"]["openvino/bf16"]
    # the same shares over 15 times as many samples: the gap is real, fidelity decides
    for c in (base, bf16, int8):
        c.fidelity["samples"] = 2250
    pick, how = select([base, bf16, int8], base)
    assert pick is bf16 and "lower fidelity" in how["lost"]["openvino/int8"]
    # a gap well beyond the noise of 150 samples (0.90 vs 1.00) decides as well
    bf16.fidelity.update(exact_match=1.0, samples=150)
    int8.fidelity.update(exact_match=0.90, samples=150)
    pick, _ = select([base, bf16, int8], base)
    assert pick is bf16
