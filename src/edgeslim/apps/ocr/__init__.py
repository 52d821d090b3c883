"""Whole-image OCR (`edgeslim ocr`): text detection (DB), line direction, CTC recognition of photos.

>>> from edgeslim.apps.ocr import OcrPipeline                         # doctest: +SKIP
>>> for line in OcrPipeline.load().read("photo.jpg").lines:            # doctest: +SKIP
...     print(line.text, line.score, line.quad)

Modules: `pipeline` (det -> cls -> rec; the DB post-processing, quad geometry and input tensors it shares with the
`ocr-det`/`ocr-cls` tasks live in `edgeslim.tasks._ocr_db`, `_ocr_geometry`, `_ocr_photo`),
`draw` (pictures of results), `optimize` (`edgeslim optimize ocr-pipeline`), `cli` (the commands).
"""

from __future__ import annotations

from .pipeline import DetResize, OcrConfig, OcrLine, OcrPipeline, OcrResult

__all__ = ["OcrPipeline", "OcrConfig", "OcrResult", "OcrLine", "DetResize"]
