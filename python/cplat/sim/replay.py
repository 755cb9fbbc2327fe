"""The replay loop: advance virtual time from event to event and hand each one to its handler.

At every instant the loop (1) takes the events due (:class:`~cplat.sim.events.EventQueue`):
finishes, grace ends, node repairs, node failures; (2) closes the finished jobs; (3) submits
the jobs that arrive; (4) runs one scheduling cycle (or, with a tick, waits for the next one),
then records evictions, resizes and starts, each of which plans the events that follow it.
The scheduler decides; the :class:`~cplat.sim.ledger.JobLedger` keeps the books;
:class:`~cplat.sim.faults.NodeFaults` breaks and repairs nodes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cplat.scheduler import JobColumns, Scheduler
from cplat.sim.events import NEVER, EventQueue, Kind
from cplat.sim.faults import NodeFaults
from cplat.sim.ledger import JobLedger

__all__ = ["Replay"]

I32 = npt.NDArray[np.int32]
_NODE_DOWN_FLAG = 1
# Progress is reported every this many finished jobs (and once at the end).
PROGRESS_EVERY = 5000


class Replay:
    """One replay of submitted jobs through a scheduler, from the first event to the last.

    Parameters
    ----------
    sched
        The scheduler, with the jobs added (indices ``0..n-1``) and not yet submitted.
    cols
        The jobs.
    ledger
        Their books.
    events
        The queue, holding any events planned before the replay (reservation ends).
    faults
        Node failures, or ``None``.
    grace
        Seconds an evicted job keeps its resources (the queue policy's grace period).
    tick
        Schedule only at multiples of ``tick`` seconds, or at every event (``None``).
    horizon
        Stop at this time (``None``: run until nothing is left).
    elastic
        Whether some jobs are elastic (their resizes are then followed).
    track_gpu
        Record (time, allocated milli-GPU, fragmented milli-GPU) after every cycle.
    log
        A list to append the decision log to, or ``None``.
    progress
        Called as ``progress(finished, total)`` every :data:`PROGRESS_EVERY` finished jobs and
        once at the end.
    """

    def __init__(
        self,
        sched: Scheduler,
        cols: JobColumns,
        ledger: JobLedger,
        events: EventQueue,
        *,
        faults: NodeFaults | None = None,
        grace: int = 0,
        tick: int | None = None,
        horizon: int | None = None,
        elastic: bool = False,
        track_gpu: bool = False,
        log: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if tick is not None and tick <= 0:
            raise ValueError("tick must be positive")
        self.sched = sched
        self.cols = cols
        self.ledger = ledger
        self.events = events
        self.faults = faults
        self.grace = grace
        self.tick = tick
        self.limit = horizon if horizon is not None else NEVER
        self.elastic = elastic
        self.log = log
        self.progress = progress
        n = len(cols)
        self.n = n
        # Arrivals in submission order (ties by index); `next_arrival` is the first not yet in.
        self.order = np.lexsort((np.arange(n), cols.submit)).astype(np.int32)
        self.arrivals = cols.submit[self.order]
        self.next_arrival = 0
        self.next_tick = -1
        self.cycles = 0
        self.preemptions = 0
        self.track_gpu = track_gpu
        self.gpu_series: list[tuple[int, int, float]] = []
        if faults is not None:
            for t, node in faults.first_failures():
                events.push(t, Kind.NODE_DOWN, node)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Replay until no event and no arrival is left, or past the horizon."""
        n = self.n
        events = self.events
        while self.next_arrival < n or len(events):
            t_arrive = int(self.arrivals[self.next_arrival]) if self.next_arrival < n else NEVER
            now = min(t_arrive, events.next_time())
            if now > self.limit:
                break
            if events.next_time() == now:
                self._take_events(now)
            self._submit(now)
            if self.tick is not None and now % self.tick != 0:
                self._wait_for_tick(now)
                continue
            self._cycle(now)
            if (
                self.faults is not None
                and self.next_arrival >= n
                and self.sched.num_pending == 0
                and self.sched.num_running == 0
            ):
                break  # only node events are left
        if self.progress is not None:
            self.progress(self.ledger.finished, n)

    def _take_events(self, now: int) -> None:
        # Finishes come first at an instant: a job that ends now is not also stopped now by a
        # grace end or a node failure at the same instant (it is closed after the batch).
        finishing: list[int] = []
        closing: set[int] = set()
        ledger = self.ledger
        for kind, item, generation in self.events.due(now):
            if kind == Kind.FINISH:
                if ledger.is_current(item, generation):
                    finishing.append(item)
                    closing.add(item)
            elif kind == Kind.GRACE_END:
                if (
                    item not in closing
                    and ledger.is_current(item, generation)
                    and self.sched.terminating(item)
                ):
                    self.sched.requeue(item, now)
                    self._stopped(item, now, "preempted after its grace period", True)
            elif kind == Kind.NODE_DOWN:
                self._node_down(item, now, closing)
            elif kind == Kind.NODE_UP:
                self._node_up(item, now)
            # Kind.TICK only wakes the loop up: the cycle below is what it is for.
        if finishing:
            self._finish(finishing, now)

    # --- handlers -----------------------------------------------------------------------------

    def _finish(self, finishing: list[int], now: int) -> None:
        jobs = np.asarray(finishing, dtype=np.int32)
        self.sched.finish(jobs, now)
        before = self.ledger.finished
        self.ledger.ended(jobs, now)
        for job in finishing:
            if self.faults is not None:
                self.faults.release(job)
            if self.log is not None:
                self.log.append(f"{now}\tfinish\t{int(self.cols.job_id[job])}")
        done = self.ledger.finished
        if self.progress is not None and done // PROGRESS_EVERY > before // PROGRESS_EVERY:
            self.progress(done, self.n)

    def _stopped(self, job: int, now: int, why: str, final_checkpoint: bool = False) -> None:
        self.ledger.stopped(job, now, final_checkpoint)
        if self.faults is not None:
            self.faults.release(job)
        if self.log is not None:
            self.log.append(f"{now}\trequeue\t{int(self.cols.job_id[job])}\t{why}")

    def _node_down(self, node: int, now: int, closing: set[int]) -> None:
        faults = self.faults
        assert faults is not None  # only a fault model plans node events
        self.sched.state.set_flags(node, _NODE_DOWN_FLAG)
        self.sched.engine.node_changed(node)
        for job in faults.jobs_on(node):
            if job in closing:
                continue
            self.sched.requeue(job, now)
            self._stopped(job, now, f"node {node} down")
        self.events.push(faults.repair_time(now), Kind.NODE_UP, node)
        if self.log is not None:
            self.log.append(f"{now}\tnode_down\t{node}")

    def _node_up(self, node: int, now: int) -> None:
        faults = self.faults
        assert faults is not None
        self.sched.state.set_flags(node, 0)
        self.sched.engine.node_changed(node)
        self.events.push(faults.next_failure(now), Kind.NODE_DOWN, node)
        if self.log is not None:
            self.log.append(f"{now}\tnode_up\t{node}")

    def _submit(self, now: int) -> None:
        i = j = self.next_arrival
        while j < self.n and self.arrivals[j] == now:
            j += 1
        if j > i:
            self.sched.submit(self.order[i:j])
            self.next_arrival = j

    def _wait_for_tick(self, now: int) -> None:
        # Periodic scheduling: one pending tick event at a time, only while jobs wait.
        assert self.tick is not None
        due = (now // self.tick + 1) * self.tick
        if due != self.next_tick and self.sched.num_pending > 0:
            self.events.push(due, Kind.TICK)
            self.next_tick = due

    def _cycle(self, now: int) -> None:
        sched = self.sched
        started = sched.cycle(now)
        self.cycles += 1
        # One cycle may start a job and evict it again (or evict then restart it): stopped
        # runs are those that began before this cycle; starts count if the job still runs.
        self._evicted(now)
        if len(started):
            started = started[[sched.job_state(int(j)) == "running" for j in started]]
        if self.elastic:
            self._resized(now, started)
        if self.track_gpu:
            self.gpu_series.append((now, sched.state.allocated_gpu_milli, sched.engine.frag_total))
        if len(started):
            self._started(now, started)

    def _evicted(self, now: int) -> None:
        ledger = self.ledger
        for job in self.sched.preempted().tolist():
            self.preemptions += 1
            if self.grace > 0 and self.sched.terminating(job):
                self.events.push(now + self.grace, Kind.GRACE_END, job, int(ledger.generation[job]))
                if self.log is not None:
                    self.log.append(
                        f"{now}\tevict\t{int(self.cols.job_id[job])}\tgrace {self.grace} s"
                    )
            elif ledger.start[job] >= 0:
                self._stopped(job, now, "preempted")

    def _resized(self, now: int, started: I32) -> None:
        ledger = self.ledger
        fresh = set(started.tolist())
        for job in self.sched.resized().tolist():
            if job in fresh or ledger.start[job] < 0:
                continue
            where, gpus = self.sched.placement_of(job)
            finish = ledger.resized(job, now, self.sched.tasks_of(job), where, gpus)
            self.events.push(finish, Kind.FINISH, job, int(ledger.generation[job]))
            if self.faults is not None:
                self.faults.place(job, where)
            if self.log is not None:
                self.log.append(
                    f"{now}\tresize\t{int(self.cols.job_id[job])}\t{int(ledger.cur[job])} tasks"
                )

    def _started(self, now: int, started: I32) -> None:
        ledger = self.ledger
        for job in started.tolist():
            tasks = self.sched.tasks_of(job) if self.elastic else int(ledger.full[job])
            where, gpus = self.sched.placement_of(job)
            finish = ledger.started(job, now, tasks, where, gpus)
            self.events.push(finish, Kind.FINISH, job, int(ledger.generation[job]))
            if self.faults is not None:
                self.faults.place(job, where)
            if self.log is not None:
                self.log.append(
                    f"{now}\tstart\t{int(self.cols.job_id[job])}\t"
                    + ",".join(str(x) for x in where.tolist())
                )
