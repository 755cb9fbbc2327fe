"""What happens to a job when a task exits, and when its run time is up.

:func:`after_exit` is the requeue/restart policy: the job's fault or not, restarts left or
not. :class:`Deadlines` finds the running jobs past their ``max_runtime`` without walking
every unfinished job.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum

from cplat.live.spec import JobSpec

__all__ = ["AGENT_STOPS", "Deadlines", "ExitAction", "ExitDecision", "after_exit"]

#: Exit reasons of tasks stopped with their agent (or by it, when it lost its lease): not the
#: job's fault, so the job is requeued, not failed.
AGENT_STOPS = frozenset({"agent stopped", "agent restarted", "lease expired"})


class ExitAction(str, Enum):
    """What a task's exit does to its job."""

    #: The task succeeded; the job succeeds once every task has.
    DONE = "done"
    #: Queue the job again (not its fault, or a restart it has left).
    REQUEUE = "requeue"
    #: The job failed.
    FAIL = "fail"


@dataclass(frozen=True)
class ExitDecision:
    """A task exit's consequence for its job, and the words for its events."""

    action: ExitAction
    why: str
    #: Whether this requeue uses up one of the job's restarts.
    restart: bool = False


def after_exit(
    spec: JobSpec, rank: int, exit_code: int | None, reason: str, failures: int
) -> ExitDecision:
    """Decide what task ``rank``'s exit does to its job.

    Parameters
    ----------
    spec
        The job's spec (its failure policy).
    rank
        The task.
    exit_code
        Its exit status (None: unknown, as for a task that could not be started).
    reason
        The agent's words for the exit (empty for a plain exit).
    failures
        Restarts the job has used so far.
    """
    if reason in AGENT_STOPS:
        return ExitDecision(ExitAction.REQUEUE, f"task {rank} stopped: {reason}")
    if exit_code == 0:
        return ExitDecision(ExitAction.DONE, "all tasks exited 0")
    why = reason or f"exit code {exit_code}"
    if spec.restarts_on_failure and failures < spec.max_restarts:
        return ExitDecision(
            ExitAction.REQUEUE,
            f"task {rank} failed ({why}); restart {failures + 1}/{spec.max_restarts}",
            restart=True,
        )
    return ExitDecision(ExitAction.FAIL, f"task {rank} failed ({why})")


class Deadlines:
    """When each running job's attempt must end: a heap of (deadline, job, attempt).

    Entries of attempts that ended early are not removed; :meth:`due` returns them and the
    caller skips those no longer running.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []

    def track(self, job_id: int, attempt: int, started_at: float, max_runtime: int) -> None:
        """Note that ``attempt`` of ``job_id`` started at ``started_at``."""
        heapq.heappush(self._heap, (started_at + max_runtime, job_id, attempt))

    def due(self, now: float) -> list[tuple[int, int]]:
        """Pop the (job, attempt) pairs whose deadline lies before ``now``.

        A job may run until its deadline inclusive: one started at 100 with a limit of 10 s
        that ends at 110 ends in time.
        """
        out: list[tuple[int, int]] = []
        while self._heap and self._heap[0][0] < now:
            _, job_id, attempt = heapq.heappop(self._heap)
            out.append((job_id, attempt))
        return out

    def __len__(self) -> int:
        return len(self._heap)
