"""The search driver: CARS continuous evolution (Yang et al., CVPR 2020) and random search at the same budget, with
subnet evaluation, fine-tuning and latency measurement as Ray tasks.

CARS, as run here: the supernet is warmed up with uniformly sampled subnets; then each generation (1) trains the
shared weights on mini-batches, each drawn for a member of the current population (parents survive across
generations, so the weights keep improving for the architectures that are kept), (2) breeds offspring by stage-wise
crossover and mutation, (3) scores parents and offspring with the shared weights (Ray tasks), (4) times the new
architectures on the engine (a Ray task on the designated latency node), (5) keeps a population by pNSGA-III on
(validation error, latency ratio, size) and (accuracy growth, size). Random search trains the supernet with uniformly
sampled subnets for the same number of steps and draws as many architectures as CARS timed.

Ray: the driver trains; Ray tasks evaluate (``num_cpus=1`` each, one torch thread, so results do not depend on the
number of workers) and time. Timing runs on the node that offers the custom resource ``edgeslim_latency`` and asks for
all of its CPUs, so no other Ray work shares its cores while it runs; the driver waits for every evaluation before it
starts timing. A local instance (the default) offers the resource itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ...errors import InvalidParameterError
from .data import SearchData
from .evolution import hypervolume_2d, non_dominated_sort, pnsga3_select
from .latency import Latency, LatencyConfig, measure
from .space import Arch, SearchSpace

__all__ = ["SearchConfig", "Candidate", "SearchResult", "search", "init_ray", "LATENCY_RESOURCE", "HV_REF",
           "baseline_model", "finetune_and_score"]

LATENCY_RESOURCE = "edgeslim_latency"
# Hypervolume reference point in (validation error, latency / reference latency): a front member counts where it is
# more accurate than 50 % and faster than twice the reference (the hand-designed CNN). Loose on purpose: the fronts are
# scored with shared weights after a short search, whose accuracies sit well below a trained model's.
HV_REF = (0.5, 2.0)
METHODS = ("cars", "random")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """One search run. ``generations=None`` runs generations until ``budget_s`` of wall time is spent."""

    method: str = "cars"
    population: int = 8
    offspring: int = 8
    generations: int | None = 6
    budget_s: float | None = None
    warmup_steps: int = 60
    steps_per_generation: int = 40
    batch_size: int = 128
    lr: float = 3e-3
    mutation_rate: float = 0.15
    crossover_prob: float = 0.5
    calib_size: int = 512
    train_threads: int = 2
    seed: int = 0
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidParameterError(f"method={self.method!r} is not one of {METHODS}.")
        if self.population < 2 or self.offspring < 1 or self.batch_size < 1 or self.steps_per_generation < 0 \
                or self.warmup_steps < 0 or self.calib_size < 1:
            raise InvalidParameterError("SearchConfig needs population >= 2, offspring >= 1, batch_size >= 1, "
                                        "calib_size >= 1 and non-negative step counts.")
        if self.generations is None and self.budget_s is None:
            raise InvalidParameterError("SearchConfig needs generations or budget_s.")
        if self.generations is not None and self.generations < 1:
            raise InvalidParameterError(f"generations must be >= 1; got {self.generations}.")


@dataclass
class Candidate:
    """One evaluated architecture: validation accuracy with the shared weights, measured latency, size."""

    arch: Arch
    describe: str
    val_acc: float
    latency_ratio: float
    latency_p50_ms: float
    params: int
    growth: float = 0.0

    def objectives(self) -> list[float]:
        return [1.0 - self.val_acc, self.latency_ratio, self.params / 1e3]

    def to_dict(self) -> dict:
        return {**asdict(self), "arch": list(self.arch)}


@dataclass
class SearchResult:
    """What a run found: its final population (or samples), the front, the history per generation."""

    method: str
    seed: int
    generations: int
    candidates: list[Candidate]
    front: list[Candidate]
    hypervolume: float
    history: list[dict]
    latency_conditions: list[dict]
    seconds: float
    state_dict: dict | None = None

    def to_dict(self) -> dict:
        return {"method": self.method, "seed": self.seed, "generations": self.generations,
                "hypervolume": self.hypervolume, "seconds": round(self.seconds, 1),
                "front": [c.to_dict() for c in self.front], "candidates": [c.to_dict() for c in self.candidates],
                "history": self.history, "latency_conditions": self.latency_conditions}


# ---------------------------------------------------------------------------------------------------------- Ray
def init_ray(address: str | None = None, workers: int = 2) -> dict:
    """Connect to Ray: ``address`` ``auto`` or ``HOST:PORT`` joins a running cluster, ``None`` starts a local instance
    with ``workers`` CPUs that offers the latency resource. Returns {"workers", "latency_cpus", "address"}."""
    import ray

    if workers < 1:
        raise InvalidParameterError(f"workers must be >= 1; got {workers}.")
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise InvalidParameterError(f"cannot connect to the Ray cluster at {address!r} ({str(e).splitlines()[0]}"
                                            "). Start one with `ray start --head` or drop --ray-address for a local "
                                            "instance.") from None
        else:
            ray.init(num_cpus=workers, resources={LATENCY_RESOURCE: 1}, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(LATENCY_RESOURCE)]
    if not nodes:
        raise InvalidParameterError(f"no node of the Ray cluster offers the {LATENCY_RESOURCE!r} resource. Start the node "
                                    f"that should time models with `ray start ... --resources='{{\"{LATENCY_RESOURCE}\": "
                                    "1}'`.")
    cpus = int(ray.cluster_resources().get("CPU", workers))
    return {"workers": cpus, "latency_cpus": int(nodes[0]["Resources"].get("CPU", 1)),
            "address": address or "local"}


def _eval_chunk(space_dict: dict, state: dict, x_calib, x_val, y_val, archs: list) -> list[float]:
    import torch

    from .space import SearchSpace
    from .supernet import SuperNet, evaluate_arch

    torch.set_num_threads(1)  # one thread: the same arithmetic on any worker, whatever the chunking
    net = SuperNet(SearchSpace.from_dict(space_dict))
    net.load_state_dict(state)
    xc, xv, yv = (torch.from_numpy(a) for a in (x_calib, x_val, y_val))
    return [evaluate_arch(net, tuple(a), xc, xv, yv) for a in archs]


def _measure_task(models: dict, reference: bytes, shape: tuple, config: LatencyConfig):
    return measure(models, reference, shape, config)


def _finetune_task(space_dict: dict, state: dict, arch: list, data: dict, epochs: int, lr: float, seed: int,
                   batch: int | None) -> dict:
    return finetune_and_score(space_dict, state, tuple(arch), data, epochs=epochs, lr=lr, seed=seed, batch=batch)


class _Ray:
    """The Ray side of one search: remote functions, shared objects, deterministic gathering."""

    def __init__(self, info: dict) -> None:
        import ray

        self.ray = ray
        self.info = info
        self.eval = ray.remote(num_cpus=1)(_eval_chunk)
        self.lat = ray.remote(num_cpus=max(1, info["latency_cpus"]), resources={LATENCY_RESOURCE: 1})(_measure_task)

    def evaluate(self, space: SearchSpace, state: dict, data_refs: tuple, archs: list[Arch]) -> list[float]:
        if not archs:
            return []
        ray = self.ray
        state_ref = ray.put(state)
        n = max(1, min(len(archs), self.info["workers"]))
        chunks = [archs[i::n] for i in range(n)]  # strided: large and small subnets spread over the workers
        futs = [self.eval.remote(space.to_dict(), state_ref, *data_refs, [list(a) for a in c]) for c in chunks]
        res = ray.get(futs)
        out = [0.0] * len(archs)
        for i in range(n):
            for j, acc in enumerate(res[i]):
                out[i + j * n] = acc
        return out

    def latency(self, models: dict, reference: bytes, shape: tuple, config: LatencyConfig):
        return self.ray.get(self.lat.remote(models, reference, shape, config))


# -------------------------------------------------------------------------------------------------------- driver
def baseline_model(space: SearchSpace):
    """The hand-designed reference: the fp32 CNN of ``benchmarks/bnn_mnist.py`` (``MnistBNN('fp32')``, widths
    16-32-32-64-64), its stem taking the classify task's 3-channel input (the grey digit replicated: the stem's
    weights for channels 1 and 2 are zero), so it reads the same feeds as every subnet."""
    import torch
    from torch import nn

    from ..train.bnn import MnistBNN

    class _RGBInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = MnistBNN("fp32", widths=(16, 32, 32, 64, 64), num_classes=space.num_classes)

        def rgb(self) -> nn.Module:
            """The trained 1-channel model with a 3-channel stem (channels 1, 2 zero-weighted), for timing/export."""
            w = self.net.stem.weight.detach()
            stem = nn.Conv2d(space.in_channels, w.shape[0], 3, padding=1, bias=False)
            with torch.no_grad():
                stem.weight.zero_()
                stem.weight[:, :1] = w
            self.net.stem = stem
            return self.net

    return _RGBInput()


def _train_steps(net, opt, data: SearchData, rng: np.random.Generator, archs_for_step: Callable[[int], Arch],
                 steps: int, batch: int, xt, yt) -> float:
    import torch

    net.train()
    total = 0.0
    for s in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(xt), batch))
        arch = archs_for_step(s)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt[idx], arch), yt[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach())
    return total / max(1, steps)


def _front(cands: list[Candidate]) -> list[Candidate]:
    if not cands:
        return []
    F = [[1.0 - c.val_acc, c.latency_ratio] for c in cands]
    return sorted((cands[i] for i in non_dominated_sort(F)[0]), key=lambda c: c.latency_ratio)


def hypervolume(cands: list[Candidate]) -> float:
    return hypervolume_2d([[1.0 - c.val_acc, c.latency_ratio] for c in cands if math.isfinite(c.latency_ratio)],
                          HV_REF) if cands else 0.0


def search(space: SearchSpace, data: SearchData, config: SearchConfig, reference_onnx: bytes, *,
           ray_info: dict | None = None, latency_cache: dict[Arch, Latency] | None = None,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """Run one CARS or random search; Ray must be initialized (:func:`init_ray`).

    ``reference_onnx`` is the model every latency is a ratio to. ``latency_cache`` (arch -> Latency) is read and
    filled: an architecture is timed once per cache. Returns the final candidates, the front on (validation error,
    latency ratio) and its hypervolume against :data:`HV_REF`.
    """
    import torch

    from .supernet import SuperNet, count_params, export_onnx, SubNet

    t0 = time.monotonic()
    say = progress or (lambda msg: None)
    ray_info = ray_info or init_ray(None)
    rt = _Ray(ray_info)
    cache = latency_cache if latency_cache is not None else {}
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.train_threads)
    net = SuperNet(space)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    calib = data.x_train[np.random.default_rng(config.seed + 1).permutation(len(data.x_train))[:config.calib_size]]
    refs = tuple(rt.ray.put(a) for a in (calib, data.x_val, data.y_val))
    shape = (config.latency.batch, space.in_channels, space.image_size, space.image_size)
    lat_conditions: list[dict] = []

    def time_new(archs: list[Arch]) -> None:
        new = [a for a in dict.fromkeys(archs) if a not in cache]
        if not new:
            return
        models = {f"a{i}": export_onnx(SubNet(net, a), space, config.latency.batch) for i, a in enumerate(new)}
        res, tel = rt.latency(models, reference_onnx, shape, config.latency)
        for i, a in enumerate(new):
            cache[a] = res[f"a{i}"]
        lat_conditions.append({k: tel.get(k) for k in ("reference_p50_ms", "noisy", "noise_reasons",
                                                        "other_load_cores", "loadavg_before", "threads")}
                              | {"models": len(new)})

    def evaluate(archs: list[Arch], prev: dict[Arch, float]) -> list[Candidate]:
        accs = rt.evaluate(space, {k: v.detach().clone() for k, v in net.state_dict().items()}, refs, archs)
        time_new(archs)
        return [Candidate(arch=a, describe=space.describe(a), val_acc=acc, latency_ratio=cache[a].ratio,
                          latency_p50_ms=cache[a].p50_ms, params=count_params(space, a),
                          growth=(acc - prev[a]) if a in prev else 0.0) for a, acc in zip(archs, accs)]

    def sample_unique(n: int, seen: set) -> list[Arch]:
        out: list[Arch] = []
        for _ in range(1000 * n):
            if len(out) == n:
                break
            a = space.sample(rng)
            if a not in seen:
                seen.add(a)
                out.append(a)
        return out

    say(f"{config.method}: warm-up, {config.warmup_steps} steps")
    _train_steps(net, opt, data, rng, lambda s: space.sample(rng), config.warmup_steps, config.batch_size, xt, yt)
    seen: set[Arch] = set()
    history: list[dict] = []
    pop = sample_unique(config.population, seen)
    prev: dict[Arch, float] = {}
    cands: list[Candidate] = []
    random_pool = list(pop)
    gen, gen_s = 0, 0.0
    while True:
        if config.generations is not None and gen >= config.generations:
            break
        if config.generations is None and gen >= 1 and time.monotonic() - t0 + gen_s > config.budget_s:
            break
        g0 = time.monotonic()
        gen += 1
        if config.method == "cars":
            members = list(pop)
            loss = _train_steps(net, opt, data, rng, lambda s, members=members: members[int(rng.integers(len(members)))],
                                config.steps_per_generation, config.batch_size, xt, yt)
            kids: list[Arch] = []
            for _ in range(1000 * config.offspring):
                if len(kids) == config.offspring:
                    break
                a = members[int(rng.integers(len(members)))]
                if rng.random() < config.crossover_prob:
                    a = space.crossover(a, members[int(rng.integers(len(members)))], rng)
                child = space.mutate(a, rng, config.mutation_rate)
                if child not in members and child not in kids:
                    kids.append(child)
            pool = members + kids
            cands = evaluate(pool, prev)
            F = [c.objectives() for c in cands]
            keep = pnsga3_select(F, [c.growth for c in cands], [c.params for c in cands], config.population)
            pop = [cands[i].arch for i in keep]
            prev = {c.arch: c.val_acc for c in cands}
            cands = [cands[i] for i in keep]
            seen.update(kids)
        else:
            loss = _train_steps(net, opt, data, rng, lambda s: space.sample(rng), config.steps_per_generation,
                                config.batch_size, xt, yt)
            kids = sample_unique(config.offspring, seen)
            random_pool += kids
            time_new(random_pool)
        best = max((c.val_acc for c in cands), default=float("nan"))
        history.append({"generation": gen, "train_loss": round(loss, 4), "seconds": round(time.monotonic() - t0, 1),
                        "best_val_acc": best, "timed": len(cache)})
        gen_s = time.monotonic() - g0
        say(f"{config.method}: generation {gen}, loss {loss:.3f}, best val acc {best:.4f}, {gen_s:.0f} s")
    if config.method == "random":
        cands = evaluate(random_pool, {})
    front = _front(cands)
    return SearchResult(method=config.method, seed=config.seed, generations=gen, candidates=cands, front=front,
                        hypervolume=round(hypervolume(front), 6), history=history, latency_conditions=lat_conditions,
                        seconds=time.monotonic() - t0,
                        state_dict={k: v.detach().clone() for k, v in net.state_dict().items()})


def finetune_and_score(space_dict: dict, state: dict, arch: Arch, data: dict, *, epochs: int, lr: float = 2e-3,
                       seed: int = 0, batch: int | None = None) -> dict:
    """Train one subnet on its own, starting from the supernet's weights (BN recalibrated), on train+validation;
    score it on test. Returns {"arch", "test_acc", "onnx" (bytes, batch ``batch``; None: dynamic)}."""
    import torch

    from ..train.loop import FitConfig, evaluate, fit
    from .space import SearchSpace
    from .supernet import SubNet, SuperNet, calibrate_bn, export_onnx

    torch.set_num_threads(1)
    space = SearchSpace.from_dict(space_dict)
    net = SuperNet(space)
    net.load_state_dict(state)
    x = torch.from_numpy(np.concatenate([data["x_train"], data["x_val"]]))
    y = torch.from_numpy(np.concatenate([data["y_train"], data["y_val"]]))
    calibrate_bn(net, arch, x[:512])
    sub = SubNet(net, arch)
    if epochs > 0:
        fit(sub, x, y, FitConfig(epochs=epochs, lr=lr, batch_size=64, seed=seed))
    acc = evaluate(sub, torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]))
    return {"arch": list(arch), "test_acc": acc, "onnx": export_onnx(sub, space, batch)}
