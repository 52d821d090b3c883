"""The MNN part of a delivered predict.py: a runner with deploy.json's threads and options."""

import os

import numpy as np


def make_runner(ROOT, D):
    """{input name: array with batch axis (float, or integer ids)} -> list of outputs, by MNN alone."""
    import MNN.expr as F
    import MNN.nn as nn

    RT = D["runtime"]
    INPUTS = [t["name"] for t in D["inputs"]]
    OUTPUTS = [t["name"] for t in D["outputs"]]
    opts = RT["options"]
    config = {"backend": opts["backend"], "precision": opts["precision"], "numThread": RT["threads"]}
    if opts["memory"] != "normal":
        config["memory"] = opts["memory"]
    runtime = nn.create_runtime_manager((config,))
    net = nn.load_module_from_file(os.path.join(ROOT, D["model_files"]["mnn"]), INPUTS, OUTPUTS,
                                   runtime_manager=runtime, shape_mutable=True)

    def run(feeds):
        xs = []
        for n in INPUTS:  # integer inputs (token ids) go in as int32, MNN's integer type; the rest as float32
            x = np.asarray(feeds[n])
            if np.issubdtype(x.dtype, np.integer):
                x = np.ascontiguousarray(x, dtype=np.int32)
                xs.append(F.const(x, list(x.shape), F.NCHW, F.int))
            else:
                x = np.ascontiguousarray(x, dtype=np.float32)
                xs.append(F.const(x, list(x.shape), F.NCHW))
        outs = net.forward(xs)
        res = []
        for o in outs:
            if o.data_format == F.NC4HW4:
                o = F.convert(o, F.NCHW)
            res.append(np.array(o.read(), dtype=np.float32, copy=True))
        return res

    return run
