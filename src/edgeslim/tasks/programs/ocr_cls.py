"""The ocr-cls program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""

import math
import sys

import cv2
import numpy as np

USAGE = 'LINE_IMAGE [LINE_IMAGE ...]'


def main(run, D, ROOT, argv):
    PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
    H, W = PRE["resize"]["height"], PRE["resize"]["max_width"]

    def preprocess(img):
        h, w = img.shape[:2]
        rw = min(W, int(math.ceil(H * w / h)))
        x = (cv2.resize(img, (rw, H)).astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        out = np.zeros((1, 3, H, W), np.float32)
        out[0, :, :, :rw] = x
        return out

    for path in argv:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"{path}: cannot decode the image")
        p = run({PRE["input"]: preprocess(img)})[POST["output"]][0]
        print(f"{path}\t{POST['labels'][int(np.argmax(p))]}\t{float(np.max(p)):.4f}")
