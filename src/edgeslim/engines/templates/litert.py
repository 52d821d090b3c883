"""The LiteRT part of a delivered predict.py: a runner with deploy.json's threads, fixed input shape and layouts."""

import os
import sys

import numpy as np


def make_runner(ROOT, D):
    """{input name: array with batch axis} -> list of outputs in the ONNX model's order and layout, by
    ai-edge-litert alone. The model has a static input shape: each input is zero-padded at the end of every axis
    (right/bottom) up to its fixed_shape, and a batch runs one sample per invocation."""
    from ai_edge_litert import interpreter

    RT = D["runtime"]
    # the BUILTIN op resolver applies XNNPACK as its default delegate; XNNPACK has no idle-spin setting
    it = interpreter.Interpreter(model_path=os.path.join(ROOT, D["model_files"]["tflite"]), num_threads=RT["threads"],
                                 experimental_op_resolver_type=getattr(interpreter.OpResolverType, RT["options"]["op_resolver"]))
    it.allocate_tensors()
    in_details, out_details = it.get_input_details(), it.get_output_details()
    INPUTS = [(t["name"], t["fixed_shape"], t["tflite_perm"], in_details[t["tflite_tensor"]]) for t in D["inputs"]]
    OUTPUTS = [(out_details[t["tflite_tensor"]]["index"], t["tflite_perm"]) for t in D["outputs"]]

    def pad(x, shape, name):
        if x.ndim != len(shape) or any(a > b for a, b in zip(x.shape, shape)):
            sys.exit(f"input {name} has shape {list(x.shape)}; this model runs at {shape} at most: convert it at a larger shape")
        return np.pad(x, [(0, b - a) for a, b in zip(x.shape, shape)])

    def run(feeds):
        n = len(feeds[INPUTS[0][0]])
        outs = [[] for _ in OUTPUTS]
        for i in range(n):
            for name, shape, perm, detail in INPUTS:
                x = pad(np.asarray(feeds[name][i : i + 1]), shape, name)
                it.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(perm), dtype=detail["dtype"]))
            it.invoke()
            for j, (index, perm) in enumerate(OUTPUTS):
                outs[j].append(it.get_tensor(index).transpose(perm).astype(np.float32))  # a copy: the buffer is reused
        return [np.concatenate(o) for o in outs]

    return run
