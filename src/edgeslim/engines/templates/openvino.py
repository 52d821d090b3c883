"""The OpenVINO part of a delivered predict.py: a runner with deploy.json's threads, thread policy and CPU properties."""

import os

import numpy as np


def make_runner(ROOT, D):
    """{input name: float32 array with batch axis} -> list of outputs in deploy.json's order, by OpenVINO alone."""
    import openvino as ov

    RT = D["runtime"]
    opts = RT["options"]
    INPUTS = [t["name"] for t in D["inputs"]]
    OUTPUTS = [t["name"] for t in D["outputs"]]
    # precision hint, latency hint and streams come from the conversion; pinning/partitioner from the thread policy
    props = dict(opts["properties"], INFERENCE_NUM_THREADS=RT["threads"])
    props.update(opts["policy_properties"][RT["thread_policy"]["policy"]])
    core = ov.Core()
    model = core.read_model(os.path.join(ROOT, D["model_files"]["xml"]), os.path.join(ROOT, D["model_files"]["bin"]))
    compiled = {}

    def compile_for(m):
        cm = core.compile_model(m, opts["device"], props)
        order = [next(j for j, o in enumerate(cm.outputs) if name in o.get_names()) for name in OUTPUTS]
        return cm, cm.create_infer_request(), order

    try:
        dynamic = compile_for(model)
    except RuntimeError:  # no dynamic-shape kernel for some layer here: compile per input shape instead
        dynamic = None
    fixed = all(i.get_partial_shape().is_static for i in model.inputs)
    seen = {}

    def run(feeds):
        xs = {n: np.ascontiguousarray(feeds[n], dtype=np.float32) for n in INPUTS}
        key = tuple(xs[n].shape for n in INPUTS)
        entry = compiled.get(key, dynamic)
        if entry is dynamic and dynamic is not None and not fixed and len(compiled) < 4:
            # a shape seen a second time gets a compilation fixed to it (faster kernels), at most 4 such shapes
            seen[key] = seen.get(key, 0) + 1
            if seen[key] >= 2:
                m = model.clone()
                m.reshape({n: list(xs[n].shape) for n in INPUTS})
                compiled[key] = entry = compile_for(m)
        if entry is None:
            if key not in compiled:
                m = model.clone()
                m.reshape({n: list(xs[n].shape) for n in INPUTS})
                compiled[key] = compile_for(m)
            entry = compiled[key]
        cm, req, order = entry
        res = req.infer(xs)
        return [np.array(res[cm.outputs[j]], copy=True) for j in order]

    return run
