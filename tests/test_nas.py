"""edgeslim.research.nas: selection against hand-worked fronts, the search space, weight sharing, subnet export, and a tiny
2-worker Ray search that gives the same result with 1 worker."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgeslim.errors import InvalidParameterError
from edgeslim.research.nas.evolution import (dominates, hypervolume_2d, non_dominated_sort, nsga3_select, pnsga3_select,
                                    reference_points)
from edgeslim.research.nas.space import mnist_space

from conftest import SHARED


# ------------------------------------------------------------------------------------------------ selection
def test_non_dominated_sort_hand_worked_2d():
    # minimize both: (1,5) (2,3) (4,1) trade off; (3,4) is dominated by (2,3) only; (5,5) by everything else
    F = [[1, 5], [2, 3], [3, 4], [4, 1], [5, 5]]
    assert non_dominated_sort(F) == [[0, 1, 3], [2], [4]]
    assert dominates(F[1], F[2]) and not dominates(F[0], F[3]) and not dominates(F[0], F[0])


def test_non_dominated_sort_hand_worked_3d_with_ties():
    # (error, latency, size). 0 and 4 are equal (neither dominates the other: same front); 2 is dominated by 0 (worse
    # in latency, equal elsewhere); 3 is dominated by 2 and so by 0 (a third front); 1 trades size for error.
    F = [[0.02, 1.0, 10], [0.05, 1.0, 5], [0.02, 2.0, 10], [0.03, 2.0, 10], [0.02, 1.0, 10]]
    assert non_dominated_sort(F) == [[0, 1, 4], [2], [3]]


def test_nsga3_keeps_whole_fronts_then_niches_the_last():
    F = [[1, 5], [2, 3], [3, 4], [4, 1], [5, 5]]
    assert nsga3_select(F, 4) == [0, 1, 2, 3]  # front 1 and front 2 fit whole
    assert nsga3_select(F, 3) == [0, 1, 3]
    # one front, k=2: A and B crowd the same reference line (0, 1); C sits alone on (1, 0). Niching keeps one of the
    # crowded pair (the one nearer the line, A) and the lone point.
    G = [[0.0, 1.0], [0.01, 0.99], [1.0, 0.0]]
    assert nsga3_select(G, 2) == [0, 2]
    assert len(reference_points(3, 4)) == 15  # C(4 + 2, 2) Das-Dennis points
    with pytest.raises(InvalidParameterError):
        nsga3_select(F, 6)


def test_pnsga3_protects_a_slow_learning_large_model():
    # (error, size): 3 is the worst on both, so NSGA-III drops it; its accuracy grew 4 points in the last generation
    # (others 0): on (-growth, size) it is non-dominated, so pNSGA-III's merged first front holds it and it survives
    F = [[0.02, 1.0], [0.03, 0.5], [0.05, 0.2], [0.06, 2.0]]
    growth, size = [0.0, 0.0, 0.0, 0.04], [1.0, 0.5, 0.2, 2.0]
    assert 3 not in nsga3_select(F, 3)
    kept = pnsga3_select(F, growth, size, 3)
    assert 3 in kept and len(kept) == 3
    # without growth the protection has nothing to protect: the same point goes
    assert 3 not in pnsga3_select(F, [0.0] * 4, size, 3)


def test_hypervolume_hand_worked():
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1]], [4, 4]) == 6.0
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1], [3, 3]], [4, 4]) == 6.0  # a dominated point adds nothing
    assert hypervolume_2d([[5, 1], [1, 5]], [4, 4]) == 0.0  # outside the reference box
    assert hypervolume_2d([[0.02, 0.5]], [0.1, 1.0]) == pytest.approx(0.08 * 0.5)


# ------------------------------------------------------------------------------------------------ space
def test_space_encoding_sampling_and_variation():
    space = mnist_space()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(50)]
    assert len(set(archs)) > 40
    for a in archs:
        assert space.canonical(a) == a
        blocks = space.blocks(a)
        assert [len(s) >= 1 for s in blocks] == [True] * len(space.stages)
        assert blocks[0][0].cin == space.stem_width and all(b.kernel in (3, 5, 7) for s in blocks for b in s)
        child = space.mutate(a, rng)
        assert child != a and space.canonical(child) == child
    # crossover takes each stage whole from one parent
    a, b = archs[0], archs[1]
    c = space.crossover(a, b, rng)
    off = 0
    for st in space.stages:
        n = 2 + 2 * st.max_depth
        assert c[off:off + n] in (a[off:off + n], b[off:off + n])
        off += n
    # genes of skipped blocks do not matter: the canonical form ignores them
    g = list(a)
    g[1] = 1  # stage 0 depth 1: its block 2 is skipped
    g[4], g[5] = 2, 2
    assert space.canonical(tuple(g))[4:6] == (0, 0)
    with pytest.raises(InvalidParameterError):
        space.validate((0,) * 3)


# ------------------------------------------------------------------------------------------------ supernet
torch = pytest.importorskip("torch")


def _arch(space, rng, kernel_index=None):
    a = list(space.sample(rng))
    a[1] = 2  # stage 0 at full depth
    if kernel_index is not None:
        a[2] = kernel_index
    a[3] = 2  # expansion 6: the 1x1 expand conv is used
    return space.canonical(tuple(a))


def test_subnet_weights_are_views_of_the_supernet():
    from edgeslim.research.nas.supernet import SuperNet

    torch.manual_seed(0)
    space = mnist_space()
    net = SuperNet(space)
    arch = _arch(space, np.random.default_rng(1), kernel_index=0)  # first block: 3x3 depthwise
    w = net.subnet_weights(arch)
    blk, sup = w["blocks"][0][0], net.blocks[0][0]
    for view, param in ((blk.expand, sup.expand), (blk.dw, sup.dw), (blk.project, sup.project),
                        (w["fc_w"], net.fc_w), (blk.bn2.mean, sup.bn2.running_mean)):
        assert view.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    # the 3x3 kernel is the centre of the shared 7x7 one; writing the supernet shows through the view
    with torch.no_grad():
        sup.dw[0, 0, 3, 3] = 123.0
    assert float(blk.dw[0, 0, 1, 1]) == 123.0
    # training the subnet trains the shared weights, and only the part it uses
    net.train()
    net(torch.randn(4, 3, 28, 28), arch).sum().backward()
    g = sup.dw.grad[:blk.dw.shape[0]]
    assert float(g[:, :, 2:5, 2:5].abs().sum()) > 0
    assert float(g.abs().sum()) == pytest.approx(float(g[:, :, 2:5, 2:5].abs().sum()))
    assert float(sup.dw.grad[blk.dw.shape[0]:].abs().sum()) == 0.0


def test_exported_subnet_equals_the_supernet_path():
    import onnxruntime as ort

    from edgeslim.research.nas.supernet import SubNet, SuperNet, calibrate_bn, count_params, export_onnx

    torch.manual_seed(0)
    space = mnist_space()
    net = SuperNet(space)
    arch = _arch(space, np.random.default_rng(2), kernel_index=1)
    x = torch.randn(64, 3, 28, 28)
    calibrate_bn(net, arch, x)
    net.eval()
    with torch.no_grad():
        ref = net(x[:8], arch).numpy()
        sub = SubNet(net, arch).eval()
        assert np.array_equal(sub(x[:8]).numpy(), ref)
    blob = export_onnx(sub, space, batch=None)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x[:8].numpy()})[0]
    assert out.shape == (8, space.num_classes)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert count_params(space, arch) == sum(p.numel() for n, p in sub.named_parameters() if "_bn" not in n or
                                            n.endswith("_b"))


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def mnist_small():
    from edgeslim.research.nas.data import SearchData, load_data

    d = load_data(SHARED / "data" / "mnist")
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (7000, 1000, 2000)
    # the test split is the one benchmarks/bnn_mnist.py scores on; the search never reads it
    return SearchData(x_train=d.x_train[:2000], y_train=d.y_train[:2000], x_val=d.x_val[:150], y_val=d.y_val[:150],
                      x_test=d.x_test[:10], y_test=d.y_test[:10], classes=d.classes, source=d.source, split=d.split)


def test_tiny_search_on_two_ray_workers_matches_one_worker(mnist_small):
    pytest.importorskip("ray")
    import ray

    from edgeslim.research.nas.latency import LatencyConfig
    from edgeslim.research.nas.search import SearchConfig, baseline_model, init_ray, search

    space = mnist_space()
    ref = baseline_model(space).rgb().eval()
    f = io.BytesIO()
    torch.onnx.export(ref, (torch.zeros(1, 3, 28, 28),), f, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"])
    cfg = SearchConfig(population=3, offspring=2, generations=2, warmup_steps=4, steps_per_generation=4,
                       batch_size=32, calib_size=64, train_threads=1,
                       latency=LatencyConfig(rounds=1, target_round_s=0.01))
    try:
        ray.shutdown()
        info = init_ray(None, workers=2)
        assert info["workers"] == 2
        cache: dict = {}
        two = search(space, mnist_small, cfg, f.getvalue(), ray_info=info, latency_cache=cache)
        # every architecture was timed for real on the engine, against the reference in the same rounds
        assert cache and all(v.ok and v.p50_ms > 0 and v.ratio > 0 for v in cache.values())  # (the ratio's meaning:
        # test_latency_ratio_orders_models_by_their_cost)
        assert len(two.candidates) == 3 and two.front
        assert all(0.0 <= c.val_acc <= 1.0 for c in two.candidates)
        n_timed = len(cache)
        one = search(space, mnist_small, cfg, f.getvalue(), ray_info={**info, "workers": 1}, latency_cache=cache)
        assert len(cache) == n_timed  # the same architectures came up: nothing new to time
        assert [c.to_dict() for c in one.candidates] == [c.to_dict() for c in two.candidates]
        assert one.hypervolume == two.hypervolume
    finally:
        ray.shutdown()


def test_cli_bad_data_is_one_line_exit_2(tmp_path, capsys):
    from edgeslim.cli import main

    with pytest.raises(SystemExit) as e:
        main(["nas", "search", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "missing" in err and "--data" in err
    assert not (tmp_path / "out").exists()


def _conv_stack(channels: int, depth: int) -> bytes:
    """A 3x3 conv stack on 1x3x56x56 as ONNX bytes; its compute grows with channels squared times depth."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels)
    nodes, inits, prev, cin = [], [], "input", 3
    for i in range(depth):
        w = numpy_helper.from_array(rng.normal(0, 0.1, (channels, cin, 3, 3)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", channels
    g = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 56, 56])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, channels, 56, 56])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_latency_ratio_orders_models_by_their_cost():
    """The search's latency objective: the reference's own copy times near 1, a model with 32x its convolution work
    well above, one with a quarter of it below, all measured in the same rounds."""
    from edgeslim.research.nas.latency import LatencyConfig, measure

    ref = _conv_stack(16, 2)
    lat, tel = measure({"same": ref, "heavy": _conv_stack(64, 4), "light": _conv_stack(8, 1)}, ref, (1, 3, 56, 56),
                       LatencyConfig(rounds=3, target_round_s=0.05))
    assert all(v.ok for v in lat.values()) and tel["reference_p50_ms"] > 0
    assert 0.5 < lat["same"].ratio < 2.0
    assert lat["heavy"].ratio > 3.0 and lat["light"].ratio < 0.9
    assert lat["light"].ratio < lat["same"].ratio < lat["heavy"].ratio
