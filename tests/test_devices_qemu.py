"""qemu-aarch64 devices: a tiny model's outputs computed by arm64 kernels under emulation match the host's.

The arm64 root is built once per machine (`edgeslim device setup qemu-aarch64`: debootstrap + the aarch64 wheels,
about 7 minutes and 650 MB on 2 cores) and reused from the edgeslim cache; when it is missing, the session fixture
builds it. Needs root and Debian's qemu-user-static, binfmt-support and debootstrap.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_ort, tiny_conv_model
from edgeslim.bench import BenchSpec
from edgeslim.deploy import export
from edgeslim.devices import evaluate_on, parse_device
from edgeslim.errors import EdgeslimError
from edgeslim.tasks import get_task


@pytest.fixture(scope="session")
def qemu_root():
    from edgeslim.devices.qemu import setup

    return setup()  # returns at once when the cached root is complete


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    m = tiny_conv_model(d / "tiny.onnx")
    task = get_task("raw").bind(m)
    export(d / "deploy", d / "tiny.onnx", "ort", "fp32", task, 1, "shared")
    return m, d / "deploy", task


@pytest.mark.parametrize("cpu", ["cortex-a76", "cortex-a53"])
def test_outputs_match_host(qemu_root, tiny, cpu):
    m, folder, task = tiny
    dev = parse_device(f"qemu-aarch64:{cpu}")
    d = dev.describe()
    assert d["arch"] == "aarch64" and d["qemu_cpu"] == cpu and d["packages"]["onnxruntime"]
    assert d["cpu"] == {"cortex-a76": "Cortex-A76", "cortex-a53": "Cortex-A53"}[cpu]
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(n, 3, 8, 8)).astype(np.float32)} for n in (1, 4)]
    for f, o in zip(feeds, dev.run_outputs(folder, feeds)):
        # arm64 NEON kernels sum in another order than x86 AVX ones: equal to float32 rounding, not bitwise
        np.testing.assert_allclose(o[0], run_ort(m, f)[0], rtol=1e-5, atol=1e-5)
    preds, nonfinite = evaluate_on(dev, folder, task, [{"x": f["x"][:1]} for f in feeds])
    assert nonfinite == 0 and len(preds) == 2


def test_emulation_never_times(tiny):
    _, folder, _ = tiny
    with pytest.raises(EdgeslimError, match="speed is never taken from emulation"):
        parse_device("qemu-aarch64:cortex-a53").bench_rounds([BenchSpec(id="a", engine="ort", artifact=str(folder))],
                                                             {"x": np.zeros((1, 3, 8, 8), np.float32)}, threads=1)


def test_unknown_cpu():
    with pytest.raises(EdgeslimError, match="unknown CPU"):
        parse_device("qemu-aarch64:cortex-a99")
