"""The head of a delivered predict.py: read deploy.json and set the thread policy before any engine loads.

`edgeslim.deploy.snippet` writes this, then the engine's `make_runner` (edgeslim/engines/templates/), then the task's
`main` (edgeslim/tasks/programs/), then the call that joins them. The program needs only the engine's package, numpy
and OpenCV.
"""

import json
import os
import sys


def read_deploy(ROOT):
    with open(os.path.join(ROOT, "deploy.json"), encoding="utf-8") as f:
        D = json.load(f)
    # OpenMP reads its idle policy once, when the engine's library loads: set it before the engine's import.
    os.environ["OMP_WAIT_POLICY"] = D["runtime"]["thread_policy"]["OMP_WAIT_POLICY"]
    return D


def arguments(usage):
    """(OUTDIR, the inputs) from the command line; the usage line and exit code 2 when OUTDIR is missing."""
    if len(sys.argv) < 2:
        sys.stderr.write(usage.strip() + "\n")
        sys.exit(2)
    return sys.argv[1], sys.argv[2:]
