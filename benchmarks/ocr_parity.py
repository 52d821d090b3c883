"""edgeslim's OCR pre/post-processing vs RapidOCR's on the same models: every bundled generated photo, both at
RapidOCR's detector policy (shorter side >= 736), same threads.

    python benchmarks/ocr_parity.py

Per photo: the number of lines each finds, whether every line's text is identical (in reading order), the largest
corner distance between matched boxes (px) and the largest score difference. Prints
`RESULT photos= identical= max_box_px= max_score_diff=` and writes benchmarks/results/ocr_parity.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from rapidocr_onnxruntime import RapidOCR

    from edgeslim.apps.ocr.pipeline import DetResize, OcrPipeline
    from edgeslim.bench import machine_info
    from edgeslim.tasks.ocr_det import BUNDLED_PHOTOS

    zoo = OcrPipeline.load()
    ours = OcrPipeline(zoo.models, replace(zoo.config, det_resize=DetResize(limit=736, mode="min")))
    rapid = RapidOCR(intra_op_num_threads=2, inter_op_num_threads=1)
    photos = sorted(p for p in (Path(BUNDLED_PHOTOS) / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rows = []
    for p in photos:
        ref = rapid(str(p))[0] or []
        got = ours.read(p).lines
        same_count = len(ref) == len(got)
        texts_equal = same_count and all(l.text == t for (_, t, _), l in zip(ref, got))
        box_px = max((float(np.abs(np.asarray(b, np.float32) - np.asarray(l.quad, np.float32)).max())
                      for (b, _, _), l in zip(ref, got)), default=0.0)
        score = max((abs(float(s) - l.score) for (_, _, s), l in zip(ref, got)), default=0.0)
        rows.append({"photo": p.name, "rapidocr_lines": len(ref), "edgeslim_lines": len(got), "identical_text": texts_equal,
                     "max_box_px": round(box_px, 2), "max_score_diff": round(score, 4),
                     "rapidocr_text": [t for _, t, _ in ref], "edgeslim_text": [l.text for l in got]})
        print(f"{p.name}: lines {len(ref)} / {len(got)}, identical text {texts_equal}, box {box_px:.1f} px", flush=True)
    same = [r for r in rows if r["identical_text"]]
    out = {"photos": len(rows), "identical": len(same), "max_box_px_identical": max((r["max_box_px"] for r in same), default=0.0),
           "max_score_diff_identical": max((r["max_score_diff"] for r in same), default=0.0), "per_photo": rows,
           "det_policy": "min:736 (both)", "threads": 2, "machine": machine_info(2),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    line = (f"RESULT photos={out['photos']} identical={out['identical']} max_box_px={out['max_box_px_identical']} "
            f"max_score_diff={out['max_score_diff_identical']}")
    out["result_line"] = line
    path = ROOT / "benchmarks" / "results" / "ocr_parity.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
