"""The onnxruntime part of a delivered predict.py: a runner with deploy.json's threads, thread policy and options."""

import os


def make_runner(ROOT, D):
    """{input name: array with batch axis} -> list of outputs, by onnxruntime alone."""
    import onnxruntime as ort

    RT = D["runtime"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = RT["threads"]
    so.inter_op_num_threads = RT["options"]["inter_op_num_threads"]
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, RT["options"]["graph_optimization_level"])
    for key, value in RT["thread_policy"]["ort_session_config"].items():  # thread-pool spinning
        so.add_session_config_entry(key, str(value))
    session = ort.InferenceSession(os.path.join(ROOT, D["model_files"]["onnx"]), so,
                                   providers=[RT["options"]["execution_provider"]])

    def run(feeds):
        return session.run(None, feeds)

    return run
