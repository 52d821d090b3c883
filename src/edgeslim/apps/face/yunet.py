"""YuNet as an app: a detector that loads the model (zoo, file or delivered folder) with any engine and returns
faces; the decode it runs is `edgeslim.tasks._yunet` (shared with the detect task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


from ...policy import ThreadPolicy
from ...tasks._yunet import (OUTPUT_NAMES, Face, Letterbox, YunetConfig, canonical_names, check_outputs, decode,
                             faces_to_array, letterbox, to_faces)

__all__ = ["YunetDetector", "draw_faces", "Face", "YunetConfig", "faces_to_array", "canonical_names"]


class YunetDetector:
    """A YuNet model on an engine runner plus this module's pre/post-processing.

    `runner` is any engine runner (`edgeslim.engines`' ort/mnn/ncnn, or a deployed folder's) with `run(feeds)` and
    `output_names`; `input_size` (h, w) for a fixed-size model, None for a dynamic one.
    """

    def __init__(self, runner: Any, *, input_name: str = "input", input_size: tuple[int, int] | None = (640, 640),
                 config: YunetConfig = YunetConfig(), output_names: Sequence[str] | None = None) -> None:
        config.validate()
        self.runner, self.input_name, self.input_size, self.config = runner, input_name, input_size, config
        self.output_names = list(output_names or getattr(runner, "output_names", OUTPUT_NAMES))

    @classmethod
    def from_model(cls, model: str | Path, *, threads: int = 2, config: YunetConfig = YunetConfig(),
                   policy: str = ThreadPolicy.DEDICATED) -> "YunetDetector":
        """Load a YuNet ONNX file (fixed or dynamic input size) on onnxruntime, or an `edgeslim optimize` output
        folder (deploy.json) on the engine it names."""
        from ...model import load_onnx

        path = Path(model)
        if path.is_dir():
            from ... import deploy

            d = deploy.load(path, threads=threads, policy=policy)
            shape = next((i.get("shape") for i in d.spec.get("inputs", [])), None) or []
            size = (int(shape[2]), int(shape[3])) if len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[2:]) else None
            return cls(d.runner, input_name=d.input_names[0], input_size=size, config=config,
                       output_names=canonical_names(d.output_names))
        from ...engines import get_engine

        m = load_onnx(path)
        inits = {t.name for t in m.graph.initializer}
        inp = [i for i in m.graph.input if i.name not in inits][0]
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        outs = [o.name for o in m.graph.output]
        check_outputs([np.zeros(1)] * len(outs), outs)  # a model that is not YuNet fails here, naming the missing output
        size = (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None
        runner = get_engine("ort").load(m.SerializeToString(), threads, policy)
        return cls(runner, input_name=inp.name, input_size=size, config=config, output_names=outs)

    @classmethod
    def from_zoo(cls, name: str = "yunet-s", *, local_dir: str | Path | None = None, threads: int = 2,
                 config: YunetConfig = YunetConfig()) -> "YunetDetector":
        """A zoo YuNet (`yunet-s`, `yunet-n`, `yunet-s-dynamic`), fetched by URL + sha256 or read from `local_dir`."""
        from ...zoo import resolve

        return cls.from_model(resolve(name, local_dir=local_dir), threads=threads, config=config)

    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(img, self.input_size, self.config.divisor)

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, best score first, in the image's pixels."""
        x, lb = self.prepare(img)
        outs = self.runner.run({self.input_name: x})
        dets = decode(outs, lb.height, lb.width, self.config, names=self.output_names)
        return to_faces(dets, lb.scale)


def draw_faces(img: np.ndarray, faces: Sequence[Face], labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of `img` with each face's box, landmarks and score (or `labels`) drawn."""
    import cv2

    out = img.copy()
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]
    t = max(1, int(round(max(img.shape[:2]) / 500)))
    for k, f in enumerate(faces):
        x, y, w, h = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 255, 0), t)
        for (px, py), c in zip(f.landmarks, colours):
            cv2.circle(out, (int(round(px)), int(round(py))), t + 1, c, -1)
        text = labels[k] if labels is not None else f"{f.score:.2f}"
        cv2.putText(out, text, (x, max(0, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, (0, 255, 0), t)
    return out
