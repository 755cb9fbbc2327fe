"""Node failures in a replay: the failure model and which jobs run on which node.

Nodes fail independently, with exponential times between failures and to repair, drawn from
one seeded stream in a fixed order (every node's first failure up front, then one draw per
failure and per repair as they happen), so the same seed gives the same failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FaultModel", "NodeFaults"]

I32 = npt.NDArray[np.int32]
_EMPTY = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class FaultModel:
    """Independent node failures: exponential time between failures and to repair (seconds)."""

    mtbf: float
    mttr: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mtbf <= 0 or self.mttr <= 0:
            raise ValueError("mtbf and mttr must be positive")


class NodeFaults:
    """Draws failure and repair times and knows the jobs on each node (to requeue them).

    Parameters
    ----------
    model
        The failure model.
    num_nodes
        Nodes of the cluster.
    """

    def __init__(self, model: FaultModel, num_nodes: int) -> None:
        self.model = model
        self.rng = np.random.Generator(np.random.PCG64(model.seed))
        self.on_node: list[set[int]] = [set() for _ in range(num_nodes)]
        self.placed: dict[int, I32] = {}  # running job -> its nodes
        self.failures = 0

    def first_failures(self) -> list[tuple[int, int]]:
        """Return ``(time, node)`` of every node's first failure."""
        first = self.rng.exponential(self.model.mtbf, size=len(self.on_node))
        return [(int(t), node) for node, t in enumerate(first)]

    def repair_time(self, now: int) -> int:
        """Count a failure at ``now`` and return when the node is back (at least 1 s later)."""
        self.failures += 1
        return now + max(1, int(self.rng.exponential(self.model.mttr)))

    def next_failure(self, now: int) -> int:
        """Return when a node repaired at ``now`` fails next (at least 1 s later)."""
        return now + max(1, int(self.rng.exponential(self.model.mtbf)))

    def place(self, job: int, nodes: I32) -> None:
        """Record that ``job`` now runs on ``nodes`` (replacing where it ran before)."""
        self.release(job)
        self.placed[job] = nodes
        for node in set(nodes.tolist()):
            self.on_node[node].add(job)

    def release(self, job: int) -> None:
        """Record that ``job`` runs nowhere."""
        for node in self.placed.pop(job, _EMPTY).tolist():
            self.on_node[node].discard(job)

    def jobs_on(self, node: int) -> list[int]:
        """Return the jobs running on ``node``, in index order."""
        return sorted(self.on_node[node])
