"""``edgeslim nas search`` as a library call: CARS search, random-search ablation at the same budget, fine-tuning of
the front and of the hand-designed baseline, a final interleaved timing of both, and the output folder
(``front/*.onnx``, ``results.json``, ``front.png``)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import InvalidParameterError
from .search import HV_REF, SearchConfig, SearchResult, _finetune_task, _Ray, baseline_model, init_ray, search
from .space import SearchSpace, mnist_space

__all__ = ["NasConfig", "run_nas", "write_outputs", "plot_front"]


@dataclass(frozen=True, kw_only=True)
class NasConfig:
    """A whole ``nas search``: the CARS run, the random ablation, fine-tuning and the final timing."""

    budget_minutes: float = 30.0
    search_share: float = 0.35  # of the budget, for the CARS run; the ablation runs as many generations
    ablation: bool = True
    finetune_epochs: int = 8
    # None: the baseline trains as many epochs as each front member is fine-tuned, so accuracy compares at equal
    # training budgets (the members also had the supernet's steps before)
    baseline_epochs: int | None = None
    max_front: int = 6
    final_rounds: int = 7
    search: SearchConfig = field(default_factory=lambda: SearchConfig(generations=None, budget_s=1.0))
    ray_address: str | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if self.budget_minutes <= 0 or not 0 < self.search_share < 1 or self.finetune_epochs < 0 or self.max_front < 1:
            raise InvalidParameterError("NasConfig needs budget_minutes > 0, 0 < search_share < 1, finetune_epochs >= 0 "
                                        "and max_front >= 1.")


def _onnx_of(model, space: SearchSpace, batch: int | None = 1) -> bytes:
    import torch

    model.eval()
    f = io.BytesIO()
    dyn = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(model, (torch.zeros(batch or 1, space.in_channels, space.image_size, space.image_size),), f,
                      dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"], dynamic_axes=dyn)
    return f.getvalue()


def _train_baseline(space_dict: dict, data: dict, epochs: int) -> dict:
    import torch

    from ..train.loop import FitConfig, evaluate, fit
    from .space import SearchSpace

    torch.set_num_threads(1)
    space = SearchSpace.from_dict(space_dict)
    torch.manual_seed(0)
    m = baseline_model(space)
    x = torch.from_numpy(np.concatenate([data["x_train"], data["x_val"]]))[:, :1]
    y = torch.from_numpy(np.concatenate([data["y_train"], data["y_val"]]))
    # the same optimizer settings as benchmarks/bnn_mnist.py's fp32 model; it reads the grey channel only
    fit(m.net, x, y, FitConfig(epochs=epochs, lr=2e-3, batch_size=64, seed=0))
    acc = evaluate(m.net, torch.from_numpy(data["x_test"])[:, :1], torch.from_numpy(data["y_test"]))
    rgb = m.rgb()
    return {"test_acc": acc, "onnx": _onnx_of(rgb, space, 1), "onnx_dynamic": _onnx_of(rgb, space, None),
            "params": sum(p.numel() for p in m.net.parameters())}


def _spread(front: list, k: int) -> list:
    """Up to ``k`` front members evenly spread along latency (the front is sorted by latency)."""
    if len(front) <= k:
        return list(front)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(front) - 1, k)})
    return [front[i] for i in idx]


def run_nas(data_dir: str | Path, config: NasConfig, *, progress: Callable[[str], None] | None = None) -> dict:
    """Search, ablate, fine-tune and time; returns the results (``results.json`` content) with ONNX bytes under
    ``_onnx`` (member name -> bytes) for :func:`write_outputs`."""
    import ray

    from ...bench import machine_info
    from .data import load_data

    t0 = time.monotonic()
    say = progress or (lambda m: None)
    data = load_data(data_dir)
    space = mnist_space(num_classes=data.num_classes)
    info = init_ray(config.ray_address, config.workers)
    say(f"ray: {info}")
    rt = _Ray(info)
    ref_onnx = _onnx_of(baseline_model(space).rgb(), space, config.search.latency.batch)
    budget_s = config.budget_minutes * 60.0
    cache: dict = {}
    cars = search(space, data, replace(config.search, method="cars", generations=None,
                                       budget_s=config.search_share * budget_s),
                  ref_onnx, ray_info=info, latency_cache=cache, progress=say)
    rand: SearchResult | None = None
    if config.ablation:
        rand = search(space, data, replace(config.search, method="random", generations=cars.generations, budget_s=None),
                      ref_onnx, ray_info=info, latency_cache=cache, progress=say)
    members = _spread(cars.front, config.max_front)
    base_epochs = config.finetune_epochs if config.baseline_epochs is None else config.baseline_epochs
    say(f"fine-tuning {len(members)} front members and the baseline ({config.finetune_epochs} / "
        f"{base_epochs} epochs) as Ray tasks")
    dref = ray.put({k: getattr(data, k) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")})
    sref = ray.put(cars.state_dict)
    ft = ray.remote(num_cpus=1)(_finetune_task)
    bt = ray.remote(num_cpus=1)(_train_baseline)
    base_fut = bt.remote(space.to_dict(), dref, base_epochs)
    futs = [ft.remote(space.to_dict(), sref, list(c.arch), dref, config.finetune_epochs, 2e-3, config.search.seed,
                      config.search.latency.batch) for c in members]
    tuned = ray.get(futs)
    base = ray.get(base_fut)
    say("final timing: front members against the trained baseline, interleaved")
    lat_cfg = replace(config.search.latency, rounds=config.final_rounds, target_round_s=0.3)
    models = {f"m{i}": t["onnx"] for i, t in enumerate(tuned)}
    final, tel = rt.latency(models, base["onnx"], (lat_cfg.batch, space.in_channels, space.image_size,
                                                   space.image_size), lat_cfg)
    onnx_out = {"baseline.onnx": base["onnx_dynamic"]}
    front = []
    for i, (c, t) in enumerate(zip(members, tuned)):
        name = f"front/member{i}.onnx"
        onnx_out[name] = _dynamic_copy(t["onnx"])
        lat = final[f"m{i}"]
        front.append({"name": name, "arch": list(c.arch), "describe": c.describe, "params": c.params,
                      "val_acc_shared_weights": c.val_acc, "search_latency_ratio": c.latency_ratio,
                      "test_acc": t["test_acc"], "latency_ratio": lat.ratio, "latency_p50_ms": lat.p50_ms,
                      "latency_ok": lat.ok})
    ok = [m for m in front if m["latency_ok"]]
    at_base = [m for m in ok if m["test_acc"] >= base["test_acc"]]
    at_98 = [m for m in ok if m["test_acc"] >= 0.98]
    res = {
        "schema": 1, "kind": "nas", "task": "classify", "data": str(data_dir), "split": data.split,
        "sizes": {"train": len(data.x_train), "val": len(data.x_val), "test": len(data.x_test)},
        "engine": lat_cfg.engine, "threads": lat_cfg.threads, "batch": lat_cfg.batch,
        "space": space.to_dict(), "ray": info, "budget_minutes": config.budget_minutes,
        "baseline": {"name": "baseline.onnx", "model": "MnistBNN('fp32', widths 16-32-32-64-64), 3-channel stem",
                     "test_acc": base["test_acc"], "params": base["params"],
                     "latency_p50_ms": tel.get("reference_p50_ms"), "epochs": base_epochs},
        "front": front,
        "best_acc": max((m["test_acc"] for m in front), default=None),
        "fastest_at_98": min((m["latency_ratio"] for m in at_98), default=None),
        "baseline_ms_ratio": min((m["latency_ratio"] for m in at_base), default=None),
        "hv_ref": list(HV_REF), "hv_cars": cars.hypervolume, "hv_random": rand.hypervolume if rand else None,
        "cars": cars.to_dict(), "random": rand.to_dict() if rand else None,
        "final_timing": {k: tel.get(k) for k in ("noisy", "noise_reasons", "other_load_cores", "loadavg_before",
                                                  "loadavg_after", "policy", "threads", "reference_p50_ms")},
        "machine": machine_info(lat_cfg.threads),
        "config": {"budget_minutes": config.budget_minutes, "search_share": config.search_share,
                   "finetune_epochs": config.finetune_epochs, "baseline_epochs": base_epochs,
                   "search": {**asdict(config.search), "latency": asdict(config.search.latency)}},
        "minutes": round((time.monotonic() - t0) / 60.0, 2),
    }
    res["_onnx"] = onnx_out
    return res


def _dynamic_copy(blob: bytes) -> bytes:
    """The same model with a symbolic batch dimension (``edgeslim optimize`` evaluates in batches)."""
    import onnx

    m = onnx.load_from_string(blob)
    for v in list(m.graph.input) + list(m.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = "batch"
    return m.SerializeToString()


def plot_front(res: dict, path: Path) -> None:
    """front.png: every CARS / random candidate (validation accuracy, shared weights) and the fine-tuned front
    (test accuracy) against measured latency relative to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for key, color, label in (("random", "#bbbbbb", "random search (val, shared weights)"),
                              ("cars", "#7fb2e5", "CARS population (val, shared weights)")):
        run = res.get(key)
        if run:
            c = [x for x in run["candidates"] if np.isfinite(x["latency_ratio"])]
            ax.scatter([x["latency_ratio"] for x in c], [x["val_acc"] for x in c], s=14, c=color, label=label)
    fr = sorted(res["front"], key=lambda m: m["latency_ratio"])
    ax.plot([m["latency_ratio"] for m in fr], [m["test_acc"] for m in fr], "o-", c="#d62728",
            label="front, fine-tuned (test)")
    ax.scatter([1.0], [res["baseline"]["test_acc"]], marker="*", s=160, c="k", label="hand-designed CNN (test)")
    ax.set_xlabel(f"latency / baseline latency ({res['engine']}, {res['threads']} thread(s), batch {res['batch']})")
    ax.set_ylabel("top-1 accuracy")
    lo = min([res["baseline"]["test_acc"]] + [m["test_acc"] for m in fr])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(res: dict, out: str | Path, *, force: bool = False, inputs: tuple = ()) -> Path:
    """Write ``front/*.onnx``, ``baseline.onnx``, ``results.json`` and ``front.png`` into ``out`` atomically."""
    from ...outdir import OutputDir

    with OutputDir(Path(out), force=force, inputs=inputs) as od:
        (od.tmp / "front").mkdir()
        for name, blob in res["_onnx"].items():
            (od.tmp / name).write_bytes(blob)
        body = {k: v for k, v in res.items() if k != "_onnx"}
        (od.tmp / "results.json").write_text(json.dumps(_finite(body), indent=1, allow_nan=False))
        plot_front(body, od.tmp / "front.png")
        return od.commit()


def _finite(o):
    """JSON-safe copy: NumPy scalars as Python numbers, non-finite floats (a model that failed to time) as null."""
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o
