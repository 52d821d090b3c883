"""The ncnn part of a delivered predict.py: a runner with deploy.json's threads, thread policy and precision flags."""

import os
import sys

import numpy as np


def make_runner(ROOT, D):
    """{input name: float32 array with batch axis} -> list of outputs, by ncnn alone. ncnn has no batch axis: one
    sample at a time."""
    import ncnn

    RT = D["runtime"]
    INPUTS = [t["name"] for t in D["inputs"]]
    net = ncnn.Net()
    net.opt.num_threads = RT["threads"]
    if hasattr(net.opt, "openmp_blocktime"):  # LLVM/Intel OpenMP builds; GCC's libgomp follows OMP_WAIT_POLICY
        net.opt.openmp_blocktime = RT["thread_policy"]["ncnn_openmp_blocktime"]
    for key, value in RT["options"].items():  # precision flags (use_bf16_storage, ...) live in the runtime, not the files
        setattr(net.opt, key, value)
    if net.load_param(os.path.join(ROOT, D["model_files"]["param"])) != 0 or \
            net.load_model(os.path.join(ROOT, D["model_files"]["bin"])) != 0:
        sys.exit("ncnn could not load the model files")
    in_blobs = [t["ncnn_blob"] for t in D["inputs"]]
    out_blobs = [t["ncnn_blob"] for t in D["outputs"]]

    def run(feeds):
        n = len(feeds[INPUTS[0]])
        outs = [[] for _ in out_blobs]
        for i in range(n):
            ex = net.create_extractor()
            xs = [np.ascontiguousarray(feeds[name][i], dtype=np.float32) for name in INPUTS]
            mats = [ncnn.Mat(x) for x in xs]  # they wrap the numpy buffers: keep both alive until extraction
            for blob, m in zip(in_blobs, mats):
                ex.input(blob, m)
            for j, blob in enumerate(out_blobs):
                ret, m = ex.extract(blob)
                if ret != 0:
                    sys.exit(f"ncnn failed to compute {blob} (code {ret})")
                outs[j].append(np.array(m, dtype=np.float32, copy=True))
            del ex, mats
        return [np.stack(o) for o in outs]

    return run
