"""The ocr-rec program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""

import json
import math
import os
import sys

import cv2
import numpy as np

USAGE = 'IMAGE [IMAGE ...]'


def main(run, D, ROOT, argv):
    PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
    CS = POST["charset"]
    with open(os.path.join(ROOT, CS["file"]), encoding="utf-8", newline="\n") as f:
        # One entry per line, never stripped: ' ' and '\u3000' are classes. Index 0 is the CTC blank.
        CHARSET = f.read().split("\n")[:-1] if CS["format"] == "lines" else json.loads(f.read())
    HEIGHT, MAX_W = PRE["resize"]["height"], PRE["resize"]["max_width"]
    MIN_W, MULTIPLE = PRE["pad"]["min_width"], PRE["pad"]["multiple"]
    DIV = PRE["normalize"]["divide_by"]
    MEAN = np.array(PRE["normalize"]["mean"], np.float32).reshape(3, 1, 1)
    STD = np.array(PRE["normalize"]["std"], np.float32).reshape(3, 1, 1)

    def preprocess(path):
        """Height 48 keeping the aspect ratio, BGR as decoded, (x/255 - 0.5)/0.5, zero padding on the right."""
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"{path}: cannot decode the image")
        h, w = img.shape[:2]
        rw = int(min(MAX_W, max(1, math.ceil(HEIGHT * w / max(h, 1)))))
        x = cv2.resize(img, (rw, HEIGHT)).astype(np.float32).transpose(2, 0, 1)
        x = (x / DIV - MEAN) / STD
        width = max(MIN_W, int(math.ceil(rw / MULTIPLE) * MULTIPLE))
        batch = np.zeros((1, 3, HEIGHT, width), np.float32)
        batch[0, :, :, :rw] = x
        return batch

    def ctc_greedy(probs):
        """Argmax per time step, merge repeats, drop the blank."""
        idx = probs.argmax(axis=-1)
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != POST["blank"]
        return "".join(CHARSET[i] for i in idx[keep] if i < len(CHARSET))

    for path in argv:
        probs = run({PRE["input"]: preprocess(path)})[POST["output"]][0]
        print(f"{path}\t{ctc_greedy(probs)}")
