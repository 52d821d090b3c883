"""The detect program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""

import math
import sys

import cv2
import numpy as np

USAGE = 'IMAGE [IMAGE ...]'


def main(run, D, ROOT, argv):
    PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
    SIZE = PRE["input_size"]  # [h, w] of a fixed-size model, None for a dynamic one
    NAMES = POST["outputs"] if set(POST["outputs"]) >= {f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)} \
        else [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]

    def preprocess(img):
        """Scale down to fit a fixed input (never up), pad right/bottom with zeros to it (or to a multiple of 32)."""
        h, w = img.shape[:2]
        if SIZE is None:
            scale, ph, pw = 1.0, math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        else:
            (ph, pw), scale = SIZE, min(1.0, SIZE[0] / h, SIZE[1] / w)
            if scale < 1.0:
                img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))))
        x = np.zeros((1, 3, ph, pw), np.float32)
        x[0, :, : img.shape[0], : img.shape[1]] = img.transpose(2, 0, 1)
        return x, scale

    def nms(boxes, scores, thr):
        """Greedy NMS on truncated integer x y w h boxes, best score first."""
        order, b = np.argsort(-scores, kind="stable"), np.trunc(boxes)
        keep = []
        while order.size:
            i, rest = order[0], order[1:]
            keep.append(i)
            iw = np.clip(np.minimum(b[i, 0] + b[i, 2], b[rest, 0] + b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
            ih = np.clip(np.minimum(b[i, 1] + b[i, 3], b[rest, 1] + b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
            inter = iw * ih
            union = b[i, 2] * b[i, 3] + b[rest, 2] * b[rest, 3] - inter
            order = rest[np.where(union > 0, inter / np.where(union > 0, union, 1), 0) <= thr]
        return np.array(keep, int)

    def detect(img):
        x, scale = preprocess(img)
        out = dict(zip(NAMES, run({PRE["input"]: x})))
        ph, pw = x.shape[2:]
        rows = []
        for s in (8, 16, 32):
            r, c = np.divmod(np.arange((ph // s) * (pw // s)), pw // s)
            score = np.sqrt(np.clip(out[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{s}"][0, :, 0], 0, 1))
            k = score >= POST["score_threshold"]
            bb, kp, r, c = out[f"bbox_{s}"][0][k], out[f"kps_{s}"][0][k], r[k], c[k]
            w, h = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
            box = np.stack([(c + bb[:, 0]) * s - w / 2, (r + bb[:, 1]) * s - h / 2, w, h], 1)
            lm = np.stack([(kp[:, 0::2] + c[:, None]) * s, (kp[:, 1::2] + r[:, None]) * s], 2)
            rows += [(box[i], lm[i], score[k][i]) for i in range(len(box))]
        if not rows:
            return []
        keep = nms(np.array([q[0] for q in rows]), np.array([q[2] for q in rows]), POST["nms_threshold"])
        return [(rows[i][0] / scale, rows[i][1] / scale, float(rows[i][2])) for i in keep]

    for path in argv:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"{path}: cannot decode the image")
        for k, (box, _lm, score) in enumerate(detect(img)):
            print(f"{path}\tface {k}\tscore {score:.3f}\tbox " + ",".join(f"{v:.1f}" for v in box))
