"""States of jobs, tasks and nodes in the live service, as enums.

The store keeps states as text (``JobRecord.state``, ``NodeRecord.state``); these enums are
their values, so ``JobState(rec.state)`` reads one and ``state.value`` writes one back.
"""

from __future__ import annotations

from enum import Enum

from cplat.store.base import JOB_STATES, NODE_STATES


class JobState(str, Enum):
    """Where a job is in its life.

    ``PENDING`` waits for a placement (a job no node could ever take waits too, held with an
    ``unschedulable`` reason); ``SCHEDULED`` is placed and offered to the agents;
    ``RUNNING`` once all of its tasks run. ``PREEMPTED`` is a passing state recorded when a
    placed job is stopped and queued again; a preemption victim with a grace period stays in
    it, placed, while its tasks checkpoint and stop. ``SUCCEEDED``, ``FAILED`` and
    ``CANCELLED`` are final.
    """

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """Whether the job never leaves this state."""
        return self in FINAL_STATES

    @property
    def placed(self) -> bool:
        """Whether the job holds a placement (its tasks are offered or running)."""
        return self in (JobState.SCHEDULED, JobState.RUNNING)


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class TaskState(str, Enum):
    """One task (rank) of a job's current attempt: offered to its agent, running, exited."""

    ASSIGNED = "assigned"
    RUNNING = "running"
    EXITED = "exited"

    def __str__(self) -> str:
        return self.value


class NodeState(str, Enum):
    """A node as operators and heartbeats set it.

    ``down``: silent for too long (no new placements; its tasks are requeued once its lease
    has run out). ``cordoned``: no new placements. ``draining``: no new placements and its
    jobs are requeued.
    """

    UP = "up"
    DOWN = "down"
    CORDONED = "cordoned"
    DRAINING = "draining"

    def __str__(self) -> str:
        return self.value


# The store's text states and these enums must name the same states.
assert tuple(s.value for s in JobState) == JOB_STATES
assert tuple(s.value for s in NodeState) == NODE_STATES
