"""Whether any node could ever run a job: requests the cluster can never satisfy.

A job asking for more than the largest node has (64 CPUs on 2-CPU nodes, 1000 GiB of memory,
a GPU on a cluster without GPUs, a model no node has), or for more tasks of its shape than all
nodes together hold, would wait for ever. The service tells its submitter so, in words that
name the field and the largest node: it rejects the request when the cluster is declared
complete (``unschedulable = "reject"``), or holds the job as ``unschedulable`` until nodes
that fit join (``"hold"``, the default). See :mod:`cplat.live.controller`.

A node counts with everything it has, whatever its state: a node that is down, cordoned, or
has an unhealthy GPU may come back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cplat.live.spec import TaskResources

__all__ = ["ClusterShape", "Infeasible", "NodeShape", "model_selects"]

MILLI = 1000


@dataclass(frozen=True)
class NodeShape:
    """What a node has, as placement counts it."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_model: str

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> NodeShape:
        """Read a node's registered spec (``NodeRecord.spec``)."""
        gpus = spec.get("gpus", [])
        return cls(
            cpu_milli=int(spec.get("cpu_milli", 0)),
            memory_mib=int(spec.get("memory_mib", 0)),
            num_gpu=len(gpus),
            gpu_model=str(gpus[0].get("model", "")) if gpus else "",
        )

    def tasks_of(self, res: TaskResources) -> int:
        """How many tasks of ``res`` fit on an empty node of this shape."""
        fits = []
        if res.cpu_milli:
            fits.append(self.cpu_milli // res.cpu_milli)
        if res.memory_mib:
            fits.append(self.memory_mib // res.memory_mib)
        if res.num_gpu:
            # A GPU share (one GPU, gpu_milli < 1000) packs several tasks on one device.
            per_gpu = MILLI // res.gpu_milli if res.gpu_milli < MILLI else 1
            fits.append(self.num_gpu // res.num_gpu * per_gpu)
        return min(fits) if fits else 1 << 30


def model_selects(wanted: str, model: str) -> bool:
    """Whether a job's model name selects a node's GPU model.

    NVML names models precisely (``A100-SXM4-80GB``); users ask for families (``A100``): a
    name selects the models it equals or that continue it after a dash, ignoring case. (The
    same rule as the live cluster's placement.)
    """
    w, m = wanted.lower(), model.lower()
    return bool(m) and (m == w or m.startswith(w + "-"))


@dataclass(frozen=True)
class Infeasible:
    """Why no node could ever run a job: the field at fault and the words for it."""

    field: str
    message: str


def _cpus(milli: int) -> str:
    n = milli / MILLI
    return f"{n:g} CPU" + ("" if n == 1 else "s")


def _cpu_amount(milli: int) -> str:
    return f"{milli / MILLI:g}"


def _memory_amount(mib: int) -> str:
    return f"{mib / 1024:.4g} GiB" if mib >= 1024 else f"{mib} MiB"


def _memory(mib: int) -> str:
    return f"{_memory_amount(mib)} of memory"


def _gpus(n: int) -> str:
    return f"{n} GPU" + ("" if n == 1 else "s")


class ClusterShape:
    """The registered nodes, grouped by shape, for quick feasibility checks.

    Parameters
    ----------
    nodes
        ``(name, shape)`` of every registered node.
    """

    def __init__(self, nodes: Iterable[tuple[str, NodeShape]]) -> None:
        self.shapes: Counter[NodeShape] = Counter()
        #: A node of each shape, to name in messages (the first registered).
        self.example: dict[NodeShape, str] = {}
        for name, shape in nodes:
            self.shapes[shape] += 1
            self.example.setdefault(shape, name)

    def __bool__(self) -> bool:
        return bool(self.shapes)

    def _largest(self, shapes: Iterable[NodeShape], key: str) -> tuple[int, str]:
        best = max(shapes, key=lambda s: (int(getattr(s, key)), -self._order(s)))
        return int(getattr(best, key)), self.example[best]

    def _order(self, shape: NodeShape) -> int:
        # Ties name the node registered first.
        return list(self.example).index(shape)

    def check(self, res: TaskResources, count: int) -> Infeasible | None:
        """Return why no set of these nodes could ever run ``count`` tasks of ``res``.

        None when they could (or when no node is registered yet: an empty cluster says
        nothing about the nodes to come).
        """
        if not self.shapes:
            return None
        shapes = list(self.shapes)
        if res.gpu_models:
            shapes = [
                s
                for s in shapes
                if s.num_gpu and any(model_selects(m, s.gpu_model) for m in res.gpu_models)
            ]
            if not shapes:
                models = sorted({s.gpu_model for s in self.shapes if s.num_gpu and s.gpu_model})
                have = f"the models here: {', '.join(models)}" if models else "no node has GPUs"
                wanted = " or ".join(res.gpu_models)
                return Infeasible(
                    "tasks.resources.gpu_models", f"no node has GPU model {wanted} ({have})"
                )
        for key, field, amount, words in (
            ("cpu_milli", "tasks.resources.cpu_milli", _cpu_amount, _cpus),
            ("memory_mib", "tasks.resources.memory_mib", _memory_amount, _memory),
            ("num_gpu", "tasks.resources.num_gpu", str, _gpus),
        ):
            need = int(getattr(res, key))
            most, name = self._largest(shapes, key)
            if need > most:
                return Infeasible(
                    field, f"no node has {words(need)}; the largest has {amount(most)} ({name})"
                )
        fits = [s for s in shapes if s.tasks_of(res) > 0]
        if not fits:
            return Infeasible(
                "tasks.resources",
                f"no node has {_cpus(res.cpu_milli)}, {_memory(res.memory_mib)}"
                + (f" and {_gpus(res.num_gpu)}" if res.num_gpu else "")
                + " at once",
            )
        room = sum(min(s.tasks_of(res), count) * self.shapes[s] for s in fits)
        if room < count:
            return Infeasible(
                "tasks.count",
                f"all nodes together hold {room} task(s) of this size at once; "
                f"the job asks for {count}",
            )
        return None
