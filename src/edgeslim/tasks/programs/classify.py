"""The classify program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""

import sys

import cv2
import numpy as np

USAGE = 'IMAGE [IMAGE ...]'


def main(run, D, ROOT, argv):
    PRE, POST = D["task"]["preprocess"], D["task"]["postprocess"]
    H, W = PRE["resize"]["height"], PRE["resize"]["width"]
    DIV = PRE["normalize"]["divide_by"]
    MEAN = np.array(PRE["normalize"]["mean"], np.float32).reshape(3, 1, 1)
    STD = np.array(PRE["normalize"]["std"], np.float32).reshape(3, 1, 1)
    CLASSES = POST.get("classes")

    def preprocess(path):
        """Resize, BGR -> RGB, x/255, (x - mean)/std."""
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"{path}: cannot decode the image")
        x = cv2.resize(img, (W, H))[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / DIV
        return ((x - MEAN) / STD)[None].astype(np.float32)

    for path in argv:
        scores = run({PRE["input"]: preprocess(path)})[POST["output"]].reshape(-1)
        top = np.argsort(-scores, kind="stable")[: POST["k"]]
        print(path + "\t" + ", ".join(f"{CLASSES[c] if CLASSES else c}={scores[c]:.4f}" for c in top))
