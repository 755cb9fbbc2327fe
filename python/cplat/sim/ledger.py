"""The job ledger of a replay: when each job ran, on what, and how much work it has left.

Work is counted in seconds at the job's full size. An elastic job running ``c`` of its ``N``
tasks progresses at ``c/N`` of that rate; each run segment starts at ``seg_start`` with ``cur``
tasks. Checkpoints (:class:`~cplat.scheduler.Checkpointing`) decide how much of a stopped
segment's work is kept. A job's *generation* moves on whenever its planned finish no longer
holds (stopped, resized), which makes the finish events planned before stale.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cplat.scheduler import Checkpointing, JobColumns

__all__ = ["JobLedger"]

I32 = npt.NDArray[np.int32]
_EMPTY = np.zeros(0, dtype=np.int32)


class JobLedger:
    """Per-job bookkeeping of one replay (indices are the scheduler's job indices).

    Parameters
    ----------
    cols
        The replayed jobs.
    checkpoint
        The checkpoint rhythm (``None``: jobs never checkpoint).
    """

    def __init__(self, cols: JobColumns, checkpoint: Checkpointing | None) -> None:
        n = len(cols)
        self.ck = checkpoint or Checkpointing(0, 0)
        self.work_left = cols.duration.copy()
        # What a job holds while it runs, for lost-work accounting: GPU-milli or CPU-milli.
        self.weight = np.where(
            cols.num_gpu > 0,
            cols.num_tasks.astype(np.int64) * cols.num_gpu * cols.gpu_milli,
            cols.num_tasks.astype(np.int64) * np.maximum(cols.cpu_milli, 1),
        ).astype(np.float64)
        self.full = cols.num_tasks.astype(np.int64)
        self.cur = self.full.copy()
        self.seg_start = np.full(n, -1, dtype=np.int64)
        self.start = np.full(n, -1, dtype=np.int64)  # of the current run; -1 while waiting
        self.end = np.full(n, -1, dtype=np.int64)
        self.restarts = np.zeros(n, dtype=np.int32)
        self.generation = np.zeros(n, dtype=np.int64)
        self.assigned: list[I32] = [_EMPTY] * n  # nodes of each job's last start
        self.devices: list[I32] = [_EMPTY] * n
        self.finished = 0  # jobs finished so far
        self.lost = 0.0  # resource-seconds of work lost to preemption and failures

    def segment_wall(self, job: int) -> int:
        """Wall time to finish the remaining work with the current tasks, checkpoints included."""
        work = int(self.work_left[job])
        scaled = -(-work * int(self.full[job]) // max(int(self.cur[job]), 1))
        return self.ck.wall_time(scaled)

    def started(self, job: int, now: int, tasks: int, nodes: I32, gpus: I32) -> int:
        """Record a start with ``tasks`` tasks on ``nodes``; return the planned finish time."""
        self.start[job] = now
        self.cur[job] = tasks
        self.seg_start[job] = now
        self.assigned[job] = nodes
        self.devices[job] = gpus
        return now + self.segment_wall(job)

    def resized(self, job: int, now: int, tasks: int, nodes: I32, gpus: I32) -> int:
        """Bank the work done at the old size, continue with ``tasks``; return the new finish."""
        banked = (now - int(self.seg_start[job])) * int(self.cur[job]) // int(self.full[job])
        self.work_left[job] = max(int(self.work_left[job]) - banked, 0)
        self.cur[job] = tasks
        self.seg_start[job] = now
        self.generation[job] += 1
        self.assigned[job] = nodes
        self.devices[job] = gpus
        return now + self.segment_wall(job)

    def stopped(self, job: int, now: int, final_checkpoint: bool = False) -> None:
        """Record a running job stopped (preempted, or its node failed); it waits again.

        It keeps the work its checkpoints secured and loses the rest. With a grace period it
        has just written a final checkpoint (the last ``cost`` seconds), securing everything
        before it.
        """
        ck = self.ck
        elapsed = now - int(self.seg_start[job])
        rate = int(self.cur[job]) / int(self.full[job])
        scaled_left = -(
            -int(self.work_left[job]) * int(self.full[job]) // max(int(self.cur[job]), 1)
        )
        if final_checkpoint and ck.interval > 0 and elapsed >= ck.cost:
            periods = (elapsed - ck.cost) // (ck.interval + ck.cost)
            saved = min(scaled_left, elapsed - ck.cost - periods * ck.cost)
            wasted = 0
        else:
            saved = ck.saved_work(elapsed, scaled_left)
            periods = saved // ck.interval if ck.interval > 0 else 0
            wasted = elapsed - periods * (ck.interval + ck.cost)
        self.lost += wasted * self.weight[job] * rate
        self.work_left[job] -= min(int(self.work_left[job]), int(saved * rate))
        self.generation[job] += 1
        self.restarts[job] += 1
        self.start[job] = -1

    def ended(self, jobs: I32, now: int) -> None:
        """Record ``jobs`` finished at ``now``."""
        self.end[jobs] = now
        self.finished += len(jobs)

    def is_current(self, job: int, generation: int) -> bool:
        """Whether an event planned at ``generation`` still holds for ``job``."""
        return generation == int(self.generation[job])
