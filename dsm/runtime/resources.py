"""What a job asks of the cluster, checked against the cluster (never against the driver's machine).

Every command that runs on Ray (``dsm train``, ``dsm tune``, ``dsm score``, ``dsm normalize --gpu``)
describes its workers or actors as a :class:`Demand` and calls :func:`secure` once Ray is joined:

1. **Can the cluster ever hold it?** The nodes alive now, plus what its autoscaler may add when
   Ray tells (the node groups and ``max_count`` of the cluster config that the autoscaler
   publishes in the GCS). If not, one line naming what is missing (:class:`ClusterShortage`),
   before anything starts.
2. **Wait until it can be placed.** A placement group of the job's bundles is the request
   that makes an autoscaler add nodes, and its readiness is the answer. While it is pending,
   one line says what is awaited; after ``timeout_s`` one line names what never came
   (:class:`ResourceTimeout`). The group is removed at once: the job then places its own
   workers (Ray Train's, Ray Data's), on the nodes that are now there.
3. **Do the GPUs work?** For bundles with GPUs, a probe task in each bundle asks torch for
   CUDA on that node. A node that gives a logical GPU but no CUDA fails the job in one line
   naming the node and what it saw (:class:`WorkerDeviceError`): a job never falls back to the
   CPU silently.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dsm.plumbing.config import ConfigError

DEFAULT_TIMEOUT_S = 900.0  # a cloud GPU node takes minutes to boot and pull its image
RESOURCE_TIMEOUT_FLAG = "--resource-timeout"  # the timeout's option on commands without a training config
QUIET_WAIT_S = 2.0  # placement that takes longer than this is announced
GIB = 1024**3


class ClusterShortage(ConfigError):
    """The cluster can never hold the job (exit status 2: the request is at fault)."""


class ResourceTimeout(RuntimeError):
    """The cluster could grow to hold the job, but did not within the timeout."""

    exit_status = 1


class WorkerDeviceError(RuntimeError):
    """A node that gives a job a GPU has no usable CUDA."""

    exit_status = 1


@dataclass(frozen=True)
class Demand:
    """``count`` bundles of ``per`` each (Ray resource names: ``CPU``, ``GPU``, ``memory`` in
    bytes), of which ``at_least`` must fit for the job to start (a scoring pool may run with
    fewer actors than asked; a training run needs them all). ``unit``: what one bundle is
    ("worker", "actor", "trial"); ``timeout_field``: the setting that bounds the wait, for messages."""

    per: dict[str, float]
    count: int
    unit: str = "worker"
    at_least: int | None = None
    timeout_field: str = "scaling.resource_timeout_s"
    extra: list[dict[str, float]] = field(default_factory=list)  # bundles beside them (a trial's function)

    @property
    def needed(self) -> int:
        return self.count if self.at_least is None else self.at_least

    def bundles(self, n: int | None = None) -> list[dict[str, float]]:
        """Ray placement-group bundles: ``n`` (default :attr:`needed`) of ``per``, then ``extra``;
        zero amounts dropped (Ray refuses them) and empty bundles left out."""
        one = {k: float(v) for k, v in self.per.items() if v}
        out = [dict(one) for _ in range(self.needed if n is None else n)] + [
            {k: float(v) for k, v in b.items() if v} for b in self.extra]
        return [b for b in out if b]

    @property
    def gpu(self) -> bool:
        return self.per.get("GPU", 0) > 0


@dataclass(frozen=True)
class Capacity:
    """The cluster's resources: ``now`` (alive nodes), ``ceiling`` (what it can reach: ``now``
    when no autoscaler tells more), ``node_max`` (the most one node has or can have, per
    resource) and whether an autoscaler publishes node groups (``grows``)."""

    now: dict[str, float]
    ceiling: dict[str, float]
    node_max: dict[str, float]
    grows: bool


def capacity() -> Capacity:
    """The joined cluster's :class:`Capacity`."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    now = _sum(nodes)
    node_max = _max(nodes)
    groups, limits = autoscaler_groups()
    ceiling = dict(now)
    if groups:
        grown = _sum([{k: v * n for k, v in res.items()} for res, n in groups])
        for k, v in grown.items():
            ceiling[k] = max(now.get(k, 0.0), min(v, limits.get(k, math.inf)))
        node_max = _max([node_max, *[res for res, _ in groups]])
    return Capacity(now, ceiling, node_max, bool(groups))


def autoscaler_groups() -> tuple[list[tuple[dict[str, float], float]], dict[str, float]]:
    """The autoscaler's node groups as (resources of one node, most nodes: inf when unbounded),
    and the cluster-wide limits; ([], {}) when no autoscaler has published a config (a fixed
    cluster, a local Ray). Ray exposes this only through its GCS key-value store, which Ray
    Train reads the same way (ray._private.state), so a failure to read it means "no config"."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private interface: absent or changed means "unknown", not an error
        return [], {}
    if config is None:
        return [], {}
    groups = [({k: float(v) for k, v in g.resources.items()}, math.inf if g.max_count < 0 else float(g.max_count))
              for g in config.node_group_configs if g.max_count != 0]
    return groups, {k: float(v) for k, v in config.max_resources.items()}


def _sum(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _max(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = max(out.get(k, 0.0), float(v))
    return out


def amount(resource: str, value: float) -> str:
    """``2 GPUs``, ``1.5 CPUs``, ``8 GiB memory``."""
    if resource == "memory":
        return f"{value / GIB:g} GiB memory"
    return f"{value:g} {resource}{'' if value == 1 else 's'}"


def describe(per: dict[str, float]) -> str:
    return " + ".join(amount(k, v) for k, v in per.items() if v) or "nothing"


def how_many_fit(demand: Demand, totals: dict[str, float]) -> int:
    """How many of the demand's bundles (at most ``count``) the resource ``totals`` hold (a
    Capacity's ``ceiling`` or ``now``); by totals only: that a bundle fits one node is
    :func:`shortage`'s check."""
    extra = _sum(demand.extra)
    fits = demand.count
    for k, v in demand.per.items():
        if v > 0:
            fits = min(fits, math.floor((totals.get(k, 0.0) - extra.get(k, 0.0) + 1e-9) / v))
    return max(fits, 0)


def shortage(demand: Demand, cap: Capacity) -> str | None:
    """Why the cluster can never hold ``demand.needed`` bundles, in words; None when it can.
    Totals first (no GPU at all reads better as such), then whether one bundle fits one node."""
    if how_many_fit(demand, cap.ceiling) < demand.needed:
        short = {k: v for k, v in _sum(demand.bundles()).items() if v > cap.ceiling.get(k, 0.0) + 1e-9}
        has = "the cluster has " + " and ".join(amount(k, cap.now.get(k, 0.0)) for k in short)
        has += (" and its autoscaler can reach " + " and ".join(amount(k, cap.ceiling.get(k, 0.0)) for k in short)
                if cap.grows else " and no autoscaler that could add more")
        need = " and ".join(amount(k, v) for k, v in short.items())
        return f"{demand.needed} {demand.unit}(s) x {describe(demand.per)} need {need}, but {has}"
    for bundle in [demand.per, *demand.extra]:
        for k, v in bundle.items():
            if v > cap.node_max.get(k, 0.0) + 1e-9:
                where = "any node has or its autoscaler can add" if cap.grows else "any node has"
                return (f"one {demand.unit} needs {amount(k, v)}, more than {where} "
                        f"(the largest: {amount(k, cap.node_max.get(k, 0.0))})")
    return None


def secure(command: str, demand: Demand, timeout_s: float, say: Callable[[str], None] | None = None) -> int:
    """Steps 1 to 3 of the module docstring; returns how many bundles the cluster can hold (from
    ``demand.needed`` to ``demand.count``). Raises ClusterShortage, ResourceTimeout or
    WorkerDeviceError, each with one line that starts with ``scaling:``-style field names."""
    say = say or (lambda line: print(f"dsm {command}: {line}", file=sys.stderr, flush=True))
    cap = capacity()
    why = shortage(demand, cap)
    if why is not None:
        raise ClusterShortage(f"{why}; lower the request or give --address of a larger cluster")
    bundles = demand.bundles()
    if bundles:
        _placed(demand, bundles, cap, timeout_s, say)
    return how_many_fit(demand, capacity().ceiling)


def _placed(demand: Demand, bundles: list[dict[str, float]], cap: Capacity, timeout_s: float,
            say: Callable[[str], None]) -> None:
    """Reserve ``bundles`` as one placement group until Ray places it (or ``timeout_s`` passes),
    probe CUDA in its GPU bundles, and give the group back."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy="PACK")
    try:
        t0 = time.monotonic()
        ready, _ = ray.wait([pg.ready()], timeout=min(QUIET_WAIT_S, timeout_s))
        if not ready:
            say(f"waiting up to {timeout_s:g} s ({demand.timeout_field}) for {_awaited(demand, cap)}")
            left = max(0.0, timeout_s - (time.monotonic() - t0))
            ready, _ = ray.wait([pg.ready()], timeout=left)
        if not ready:
            raise ResourceTimeout(f"{demand.timeout_field}: after {timeout_s:g} s the cluster had still not "
                                  f"provided {_awaited(demand, capacity())}")
        if demand.gpu:
            check_cuda(pg, [i for i, b in enumerate(bundles) if b.get("GPU")])
    finally:
        remove_placement_group(pg)


def _awaited(demand: Demand, cap: Capacity) -> str:
    """What the job waits for, with what the cluster has now."""
    need = _sum(demand.bundles())
    have = ", ".join(f"{cap.now.get(k, 0.0) / (GIB if k == 'memory' else 1):g} of {amount(k, v)}"
                     for k, v in need.items())
    grow = "; its autoscaler may add nodes" if cap.grows else "; the rest is in use"
    return f"{demand.needed} {demand.unit}(s) x {describe(demand.per)} (the cluster has {have}{grow})"


def device_report() -> dict:
    """What a process given GPUs sees: its node, Ray's GPU ids, CUDA_VISIBLE_DEVICES and torch's CUDA."""
    import os

    import ray
    import torch

    return {"node": ray.util.get_node_ip_address(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "available": torch.cuda.is_available(),
            "count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "torch": torch.__version__, "built_with_cuda": torch.version.cuda}


def cuda_problem(seen: dict) -> str | None:
    """One line naming the node and what it saw, when a process given GPUs cannot use CUDA."""
    if seen["available"] and seen["count"] > 0:
        return None
    build = f"torch {seen['torch']}" + ("" if seen["built_with_cuda"] else ", built without CUDA")
    return (f"node {seen['node']} gave a GPU (Ray GPU ids {seen['gpu_ids']}) but torch there sees no CUDA: "
            f"CUDA_VISIBLE_DEVICES={seen['visible']!r}, torch.cuda.is_available()={seen['available']} ({build})")


def check_cuda(pg, indices: list[int]) -> None:
    """Run :func:`device_report` in each GPU bundle of ``pg``; raise WorkerDeviceError naming the first
    node whose CUDA is unusable."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    probe = ray.remote(device_report)
    refs = [probe.options(num_cpus=0, num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=i)).remote() for i in indices]
    for seen in ray.get(refs):
        problem = cuda_problem(seen)
        if problem is not None:
            raise WorkerDeviceError(f"scaling.gpu: {problem}")
