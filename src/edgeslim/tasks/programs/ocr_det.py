"""The ocr-det program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
It needs only the engine's package, numpy and OpenCV, so the unclip grows the min-area rectangle analytically (each
side moved out by D) instead of calling pyclipper: boxes may differ from edgeslim's by a pixel.
"""

import sys

import cv2
import numpy as np

USAGE = 'IMAGE [IMAGE ...]'


def main(run, D, ROOT, argv):
    PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
    RS = PRE["resize"]

    def preprocess(img):
        h, w = img.shape[:2]
        if RS["mode"] == "max":
            r = min(1.0, RS["limit"] / max(h, w))
        else:
            r = max(1.0, RS["limit"] / min(h, w))
            r = min(r, RS["max_side"] / max(h, w)) if max(h, w) * r > RS["max_side"] else r
        rh, rw = max(32, int(round(int(h * r) / 32) * 32)), max(32, int(round(int(w * r) / 32) * 32))
        x = (cv2.resize(img, (rw, rh)).astype(np.float32) / 255.0 - 0.5) / 0.5
        return x.transpose(2, 0, 1)[None].copy()

    def db_boxes(prob, h, w):
        """Threshold, dilate, contours, min-area boxes scored by mean probability, grown by area*ratio/perimeter."""
        mh, mw = prob.shape
        bitmap = cv2.dilate((prob > POST["thresh"]).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for c in contours[: POST["max_candidates"]]:
            (cx, cy), (bw, bh), angle = cv2.minAreaRect(c)
            if min(bw, bh) < POST["min_size"]:
                continue
            mask = np.zeros_like(bitmap)
            cv2.fillPoly(mask, [cv2.boxPoints(((cx, cy), (bw, bh), angle)).astype(np.int32)], 1)
            if cv2.mean(prob, mask)[0] < POST["box_thresh"]:
                continue
            d = bw * bh * POST["unclip_ratio"] / (2 * (bw + bh))
            box = cv2.boxPoints(((cx, cy), (bw + 2 * d, bh + 2 * d), angle))
            boxes.append(np.round(box * [w / mw, h / mh]).astype(int).tolist())
        return boxes

    for path in argv:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"{path}: cannot decode the image")
        prob = run({PRE["input"]: preprocess(img)})[POST["output"]][0, 0]
        for box in db_boxes(prob, *img.shape[:2]):
            print(f"{path}\t{box}")
