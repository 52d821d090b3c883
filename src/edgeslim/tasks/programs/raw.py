"""The raw program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""


import numpy as np

USAGE = 'INPUTS.npz'


def main(run, D, ROOT, argv):
    INPUTS = [t["name"] for t in D["inputs"]]
    OUTPUTS = [t["name"] for t in D["outputs"]]
    z = np.load(argv[0])
    outs = run({name: z[name] for name in INPUTS})
    for name, y in zip(OUTPUTS, outs):
        print(f"{name}\t{list(y.shape)}\t{y.ravel()[:8]}")
