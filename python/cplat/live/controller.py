"""The live controller: the one writer of scheduler state, on an injectable clock.

Callers (the service's handlers, or a replay driver) never touch the scheduler. They commit
what was asked to the store and hand it to the :class:`Controller`, whose methods run on the
event loop's single thread (so in-memory changes between two ``await`` points are atomic) and
whose job-state writes go through one ordered writer: changes reach the store in the order
they were made, many per transaction.

Node leases (at most one running copy of a task). Registering a node and every heartbeat renew
its lease of ``lease`` seconds; the answer tells the agent the lease and the ``grace`` so both
sides count the same way. Each side measures from its own end of the renewing request:

- the agent from the moment it *sent* the request, so its lease never outlasts the server's.
  When it has not renewed for ``lease`` seconds (less a small margin for its own event loop)
  it stops starting tasks and stops those it runs: SIGTERM, SIGKILL ``grace`` seconds later.
  They are reported ``lease expired`` once the server answers again, and requeued like tasks
  stopped with their agent.
- the server from the moment it *handled* the request. A node silent for ``node_timeout`` is
  marked down (no new placements); its tasks are requeued only once ``lease + grace`` seconds
  have passed since the last renewal, when the agent has surely killed them. A restarted
  server counts from its start, since it cannot know when an agent last renewed.

With the defaults (heartbeats every 2 s, lease 20 s, grace 10 s, node_timeout 30 s) a node
that falls silent is marked down and its jobs requeued 30 s after its last heartbeat, and its
agent has SIGTERMed its tasks at about 19 s and SIGKILLed them at about 29 s. An agent that
dies (``kill -9``) cannot stop anything: its tether process does (see
:mod:`cplat.runtime.tether`). An agent frozen as a whole (SIGSTOP, a paused VM) stops nothing
until it runs again; no lease protects against that.

Jobs no node could ever run (see :mod:`cplat.live.feasibility`) are held out of the queue with
an ``unschedulable`` reason, and queued once nodes that fit register.

Time comes from a :class:`~cplat.live.clock.Clock`: the service passes the wall clock; a
replay passes a :class:`~cplat.live.clock.VirtualClock` and calls :meth:`Controller.step` at
each event's time instead of running :meth:`Controller.start`'s loop (the cycle then happens
exactly when the simulator's would). The scheduler works in integer seconds: every cycle,
finish and requeue passes ``int(now)``.

The live cluster's policies reach the agents through the controller: before each cycle the
maintenance windows that begin drain their nodes and those that end bring them back (stored
like an operator's drain); a preemption victim with a grace period is ``PREEMPTED``, its
cancels carry what is left of the grace (the agent's SIGTERM-to-SIGKILL wait, time to
checkpoint), its tasks' exits are stops, and it is queued again once they are all gone (the
scheduler frees its resources then) or the grace is over; an elastic job the cycle grew or
shrank keeps its attempt, new ranks get assignments and removed ones rank cancels, and every
assignment of an elastic job carries its ``elastic`` range. At recovery the stored
reservations and the fair-share history (jobs that ended within ten half-lives) are loaded.

Extension points, for features built on the controller without editing it:

- :class:`Observer`: what the service measures and streams (every state change, cycle and
  store-write durations, queue sizes).
- :class:`ControllerExtension`: code run at recovery, before and after each cycle, when a job
  ends and when a node registers (reservations and maintenance windows, fair-share usage
  views); add one with :meth:`Controller.add_extension`.
- :attr:`Controller.cluster`: the :class:`~cplat.runtime.live.LiveCluster` around the one
  ``Scheduler``, for read-only views.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cplat.errors import InputError
from cplat.live.clock import Clock, WallClock
from cplat.live.feasibility import ClusterShape, Infeasible, NodeShape
from cplat.live.policy import AGENT_STOPS, Deadlines, ExitAction, after_exit
from cplat.live.spec import JobSpec
from cplat.live.states import JobState, NodeState, TaskState
from cplat.policy.fairshare import DAY, PastUsage
from cplat.runtime.discovery import device_slots
from cplat.runtime.live import (
    LiveCluster,
    LiveJob,
    LiveNode,
    LiveReservation,
    Placement,
    job_from_spec,
    node_from_spec,
    unhealthy_gpus,
)
from cplat.scheduler import Quota, Quotas
from cplat.store.base import (
    JobChange,
    JobRecord,
    NodeRecord,
    PoolRecord,
    QuotaRecord,
    ReservationRecord,
    Store,
)

__all__ = [
    "AGENT_STOPS",
    "LOST_AFTER",
    "Controller",
    "ControllerExtension",
    "JobRt",
    "NodeRt",
    "NullObserver",
    "Observer",
    "TaskRt",
    "live_job",
    "live_node",
    "live_reservation",
]

log = logging.getLogger("cplat.server")

#: A running task missing from a heartbeat is lost only after this long (the heartbeat may
#: have been written before the agent reported the task).
LOST_AFTER = 5.0
MASTER_PORT_BASE = 20000
WRITE_BACKOFF, MAX_WRITE_BACKOFF = 0.05, 5.0
#: How long a stopping server keeps retrying job-state writes before giving up.
CLOSING_WRITE_TIMEOUT = 10.0
#: The reason a waiting job shows while no node could ever run it.
UNSCHEDULABLE = "unschedulable"
#: Fair-share history loaded at recovery reaches back this many half-lives (usage older than
#: that weighs less than 1/1000 of its value).
HISTORY_HALF_LIVES = 10
#: The queue sorts' default half-life (:mod:`cplat.policy.fairshare`).
DEFAULT_HALF_LIFE = 7 * DAY

#: A job token for a job record and its run time in seconds.
JobTokenFactory = Callable[[JobRecord, int], str]


@dataclass
class TaskRt:
    """One task (rank) of the current attempt."""

    node: str
    gpus: list[int]
    state: TaskState = TaskState.ASSIGNED
    exit_code: int | None = None
    since: float = 0.0


@dataclass
class JobRt:
    """An unfinished job in memory."""

    rec: JobRecord
    state: JobState
    attempt: int
    spec: JobSpec
    tasks: dict[int, TaskRt] = field(default_factory=dict)
    started_at: float | None = None
    failures: int = 0
    #: Tasks of earlier attempts told to stop and not yet known to be gone, as
    #: (node, attempt, rank) -> when the stop was asked. While any is left, a new placement is
    #: not handed to the agents (it is ``held``): the old copy may still be in its grace.
    stopping: dict[tuple[str, int, int], float] = field(default_factory=dict)
    held: bool = False
    held_resume: str | None = None
    #: The checkpoint this attempt resumes from (ranks an elastic resize adds get it too).
    resume: str | None = None
    #: Why no node could ever run it (None: it may run); such a job waits outside the queue.
    unschedulable: str | None = None

    @classmethod
    def of(cls, rec: JobRecord, state: JobState | None = None) -> JobRt:
        """Return the runtime state of a stored job."""
        return cls(
            rec,
            JobState(rec.state) if state is None else state,
            rec.attempt,
            JobSpec.from_stored(rec.spec),
            started_at=rec.started_at,
        )


@dataclass
class NodeRt:
    """A registered node: its record, liveness and what its agent must do."""

    rec: NodeRecord
    #: Last word of any kind from the agent (heartbeat, poll, report): liveness.
    heartbeat: float
    #: Last lease renewal (registration or heartbeat), as this server handled it.
    renewed: float
    assign: dict[tuple[int, int, int], dict[str, Any]] = field(default_factory=dict)
    cancel: set[tuple[int, int]] = field(default_factory=set)
    cancel_sent: set[tuple[int, int]] = field(default_factory=set)
    #: When a preemption's grace ends, for cancels of victims: the agent waits that long
    #: between SIGTERM and SIGKILL, so the task can checkpoint.
    cancel_grace: dict[tuple[int, int], float] = field(default_factory=dict)
    #: Single ranks to stop, (job, attempt, rank): an elastic job shrank, its other ranks run on.
    cancel_ranks: set[tuple[int, int, int]] = field(default_factory=set)
    cancel_ranks_sent: set[tuple[int, int, int]] = field(default_factory=set)
    #: Assignments a poll has handed out (the agent may have started them).
    handed: set[tuple[int, int, int]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> NodeState:
        """The node's state."""
        return NodeState(self.rec.state)


class Observer(Protocol):
    """What the controller reports as it works (metrics, event streams)."""

    def submitted(self, count: int) -> None:
        """Report accepted jobs."""

    def changed(self, change: JobChange, project: str) -> None:
        """Report that a job of ``project`` changed state (as the change is queued for writing)."""

    def cycle(self, seconds: float, pending: int, running: int) -> None:
        """Report a scheduling cycle's duration and the queue sizes after it."""

    def store_write(self, seconds: float) -> None:
        """Report the duration of one grouped write of job changes."""

    def running_after(self, seconds: float) -> None:
        """Report the seconds from a submission to all of the job's tasks running."""


class NullObserver:
    """An observer that ignores everything (replays and tests)."""

    def submitted(self, count: int) -> None:
        """Ignore."""

    def changed(self, change: JobChange, project: str) -> None:
        """Ignore."""

    def cycle(self, seconds: float, pending: int, running: int) -> None:
        """Ignore."""

    def store_write(self, seconds: float) -> None:
        """Ignore."""

    def running_after(self, seconds: float) -> None:
        """Ignore."""


class ControllerExtension:
    """Code that runs inside the controller's steps; override the hooks you need.

    Hooks run on the event loop's thread between ``await`` points, like the controller's own
    code: they may read and change the controller's state (through ``ctrl.cluster`` for the
    scheduler) but must not block. Job changes they return are written with the cycle's own.
    """

    async def recover(self, ctrl: Controller) -> None:
        """Run after the controller loaded its state from the store (before any cycle)."""

    def before_cycle(self, ctrl: Controller, now: float) -> list[JobChange]:
        """Run before the cycle at ``now`` asks the scheduler what to start."""
        return []

    def after_cycle(self, ctrl: Controller, now: float, started: Sequence[int]) -> None:
        """Run after the cycle at ``now`` placed ``started`` (job ids)."""

    def job_ended(self, ctrl: Controller, rt: JobRt, state: JobState, now: float) -> None:
        """Run when ``rt`` ended in ``state`` (succeeded, failed or cancelled)."""

    def node_registered(self, ctrl: Controller, node: NodeRt, created: bool) -> None:
        """Run when a node registered (``created``: for the first time)."""


def live_job(rec: JobRecord, spec: JobSpec | None = None) -> LiveJob:
    """Return the scheduler's view of a stored job.

    ``spec``, the record's spec already read, is accepted for symmetry with the callers that
    hold one; the stored dict is what the live cluster reads (the user for fair share, and
    the exclusive and elastic settings, come with it).
    """
    del spec
    return job_from_spec(rec.id, rec.project, rec.user, rec.submitted_at, rec.spec)


def live_node(rec: NodeRecord) -> LiveNode:
    """Return the scheduler's view of a stored node."""
    return node_from_spec(rec.name, rec.spec, rec.state)


def live_reservation(rec: ReservationRecord) -> LiveReservation:
    """Return the scheduler's view of a stored reservation."""
    return LiveReservation(rec.id, rec.start, rec.end, rec.nodes, rec.owner, rec.drain)


def past_usage(rec: JobRecord, now: float) -> PastUsage:
    """Return the work a finished (or running) job did, as the fair-share history counts it.

    Its tasks (the placement's, for an elastic job that ran with fewer) times each task's
    CPU, memory and milli-GPU, from its start to its end (``now`` while it runs).
    """
    tasks = rec.spec["tasks"]
    res = tasks["resources"]
    count = len(rec.placement) or int(tasks["count"])
    gpu = int(res["num_gpu"]) * int(res["gpu_milli"])
    start = int(rec.started_at if rec.started_at is not None else now)
    return PastUsage(
        rec.project,
        rec.user,
        (
            float(count * int(res["cpu_milli"])),
            float(count * int(res["memory_mib"])),
            float(count * gpu),
        ),
        start,
        max(start, int(rec.finished_at if rec.finished_at is not None else now)),
    )


class Controller:
    """Owns the live cluster, the unfinished jobs and the agents' work queues.

    Parameters
    ----------
    store
        Durable state.
    cluster
        The scheduler around the registered nodes.
    job_token
        Mints the token a job's processes get, from the job's record and its run time in
        seconds.
    node_timeout, tick
        Heartbeat timeout and longest pause between cycles (seconds).
    server_url
        The URL tasks reach the service at (``CPLAT_SERVER``).
    lease, grace
        A node's lease and its tasks' stop grace (seconds; see the module docstring): a
        silent node's tasks are requeued ``lease + grace`` after its last renewal.
    clock
        Where times come from (default: the wall clock).
    observer
        Told of submissions, changes, cycles and writes (default: nobody).
    """

    def __init__(
        self,
        store: Store,
        cluster: LiveCluster,
        job_token: JobTokenFactory,
        node_timeout: float = 30.0,
        tick: float = 1.0,
        server_url: str = "",
        lease: float = 20.0,
        grace: float = 10.0,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.job_token = job_token
        self.node_timeout = node_timeout
        self.tick = tick
        self.server_url = server_url
        self.lease = lease
        self.grace = grace
        self.clock: Clock = clock if clock is not None else WallClock()
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.extensions: list[ControllerExtension] = []
        self.jobs: dict[int, JobRt] = {}
        self.nodes: dict[str, NodeRt] = {}
        self.quotas: dict[str, QuotaRecord] = {}
        self.pools: dict[str, PoolRecord] = {}
        self._inbox: list[JobRecord] = []
        self._wake = asyncio.Event()
        self._writes: list[tuple[list[JobChange], asyncio.Future[None]]] = []
        self._write_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The project of each job that just ended, until its last change is published: the
        # stream shows each event only to those who may see the job's project.
        self._ended_projects: dict[int, str] = {}
        self._closing = False
        # Running jobs' time limits: the cycle checks them without walking every job.
        self._deadlines = Deadlines()
        # Jobs with a task on each node: heartbeats, node failures and node views look here
        # instead of walking every job.
        self._on_node: dict[str, set[int]] = {}
        # Jobs with a stopping task (JobRt.stopping) on each node.
        self._fenced_on: dict[str, set[int]] = {}
        self._nodes_checked = 0.0
        # The registered nodes by shape (feasibility checks), and the jobs no node could
        # ever run, held out of the queue in submission order.
        self._shape = ClusterShape(())
        self._unschedulable: dict[int, None] = {}
        # Changes made outside a step (holding a job at submission), written by the next.
        self._deferred: list[JobChange] = []
        # Preemption victims in their grace period -> when it ends: their tasks were told to
        # stop (SIGTERM, checkpoint, SIGKILL at the end) and the job keeps its resources; it
        # is queued again once the tasks are gone or the grace is over.
        self._evicting: dict[int, float] = {}
        self.started = self.clock.now()

    # Lifecycle ------------------------------------------------------------------------
    def add_extension(self, ext: ControllerExtension) -> None:
        """Run ``ext``'s hooks from now on (add extensions before :meth:`start`)."""
        self.extensions.append(ext)

    async def start(self, *, loop: bool = True) -> None:
        """Recover from the store, then start the writer and (with ``loop``) the cycle loop.

        Without ``loop`` nothing schedules on its own: a driver calls :meth:`step` (a replay
        on a virtual clock).
        """
        await self._recover()
        self._tasks = [asyncio.create_task(self._writer(), name="cplat-writer")]
        if loop:
            self._tasks.append(asyncio.create_task(self._run(), name="cplat-loop"))

    def begin_shutdown(self) -> None:
        """Answer long polls now, so the server can close promptly."""
        self._closing = True
        for node in self.nodes.values():
            node.wake.set()

    async def stop(self) -> None:
        """Stop the loop after the last writes reached the store."""
        self._closing = True
        self._wake.set()
        loop_task = self._tasks[1] if len(self._tasks) > 1 else None
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        self._write_wake.set()
        if self._tasks:
            writer = self._tasks[0]
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for node in self.nodes.values():
            node.wake.set()

    async def _recover(self) -> None:
        now = self.clock.now()
        t = int(now)
        for qrec in await self.store.list_quotas():
            self.quotas[qrec.project] = qrec
        for prec in await self.store.list_pools():
            self.pools[prec.name] = prec
        self._apply_quotas(t)
        # Reservations and fair-share history go in before the first build of the scheduler.
        self.cluster.set_reservations(
            (live_reservation(r) for r in await self.store.list_reservations()), now=t
        )
        await self._load_history(now)
        for nrec in await self.store.list_nodes():
            # Every node gets a full timeout from the restart to report in, and its lease counts
            # as renewed now: it may have renewed just before the old server stopped.
            self.nodes[nrec.name] = NodeRt(nrec, heartbeat=now, renewed=now)
            self.cluster.upsert_node(live_node(nrec), t)
        self._reshape()
        changes: list[JobChange] = []
        waiting: list[LiveJob] = []
        for rec in await self.store.unfinished_jobs():
            rt = JobRt.of(rec)
            self.jobs[rec.id] = rt
            if rt.state.placed and rec.placement:
                placement = [(p["node"], list(p["gpus"])) for p in rec.placement]
                start = int(rec.started_at or rec.updated_at)
                code = self.cluster.restore(live_job(rec, rt.spec), start, placement)
                if code == "ok":
                    state = (
                        TaskState.ASSIGNED if rt.state is JobState.SCHEDULED else TaskState.RUNNING
                    )
                    self._place(
                        rt,
                        {
                            rank: TaskRt(node, gpus, state, since=now)
                            for rank, (node, gpus) in enumerate(placement)
                        },
                    )
                    if state is TaskState.ASSIGNED:
                        for rank in rt.tasks:
                            self._offer(rt, rank)
                    continue
                log.warning("job %d: placement could not be restored (%s)", rec.id, code)
                changes += self._requeue_changes(rt, now, f"placement lost on restart ({code})")
            elif rt.state is JobState.SCHEDULED:
                changes += self._requeue_changes(rt, now, "placement lost on restart")
            elif rt.state is JobState.PREEMPTED:
                changes += self._recover_evicted(rt, now)
            rt.state = JobState.PENDING
            why = self._shape.check(rt.spec.resources, rt.spec.fewest_tasks)
            if why is not None:
                changes += self._hold(rt, why, now)
            else:
                waiting.append(live_job(rec, rt.spec))
        self.cluster.add_many(waiting)
        for rt in self.jobs.values():
            if rt.state is JobState.RUNNING and rt.started_at is not None:
                self._track_deadline(rt)
        for ext in self.extensions:
            await ext.recover(self)
        if changes:
            await self.store.update_jobs(changes)
        # What recovery loaded lives as long as the server: keep it out of the collector's
        # full passes, which otherwise stall the loop for tens of milliseconds.
        gc.freeze()

    async def _load_history(self, now: float) -> None:
        """Seed the queue sort's decayed usage with the jobs that ended before the restart."""
        sort = self.cluster.queue_sort
        if sort is None or sort[0] == "drf":  # DRF weighs what runs now, not the past
            return
        half_life = float(sort[1].get("half_life", DEFAULT_HALF_LIFE))
        since = now - HISTORY_HALF_LIVES * half_life if half_life > 0 else 0.0
        done = await self.store.finished_jobs(since)
        self.cluster.add_history([past_usage(rec, now) for rec in done], int(now))

    def _recover_evicted(self, rt: JobRt, now: float) -> list[JobChange]:
        """Queue a job that was in its preemption grace when the server stopped.

        Its tasks may still be stopping: they are asked to stop (again) and fence the next
        attempt until they are gone, as after any requeue.
        """
        attempt = rt.rec.attempt
        for rank, p in enumerate(rt.rec.placement):
            node = self.nodes.get(str(p["node"]))
            if node is None:
                continue
            node.cancel.add((rt.rec.id, attempt))
            rt.stopping[(node.rec.name, attempt, rank)] = now
            self._fenced_on.setdefault(node.rec.name, set()).add(rt.rec.id)
        return self._pending_change(rt, now, "requeued: the server restarted during its grace")

    def _track_deadline(self, rt: JobRt) -> None:
        assert rt.started_at is not None
        self._deadlines.track(rt.rec.id, rt.attempt, rt.started_at, rt.spec.max_runtime)

    # Ordered writer -------------------------------------------------------------------
    def persist(self, changes: list[JobChange]) -> asyncio.Future[None]:
        """Queue changes for the store; the future resolves once they are committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((changes, fut))
        self._write_wake.set()
        for ch in changes:
            if ch.state is not None:
                rt = self.jobs.get(ch.id)
                project = rt.rec.project if rt else self._ended_projects.pop(ch.id, "")
                self.observer.changed(ch, project)
        return fut

    async def _writer(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            batch, self._writes = self._writes, []
            if batch:
                started = time.perf_counter()
                error = await self._write_batch([c for cs, _ in batch for c in cs])
                for _, fut in batch:
                    if fut.done():
                        continue
                    if error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(error)
                self.observer.store_write(time.perf_counter() - started)
            elif self._closing:
                return

    async def _write_batch(self, changes: list[JobChange]) -> Exception | None:
        """Write changes, retrying while the store is unreachable.

        The scheduler's memory is already ahead of the store, so an outage must delay these
        writes, not drop them; a change the store refuses as invalid (a bug) is not retried.
        """
        backoff, deadline = WRITE_BACKOFF, None
        while True:
            try:
                await self.store.update_jobs(changes)
                return None
            except ValueError as exc:
                log.error("the store refused job changes: %s", exc)
                return exc
            except Exception as exc:  # noqa: BLE001 - any outage: retry
                if self._closing:
                    # Real time, not the controller's clock: this bounds how long a stopping
                    # process waits for an unreachable store.
                    deadline = deadline or time.monotonic() + CLOSING_WRITE_TIMEOUT
                    if time.monotonic() > deadline:
                        log.error("giving up on %d job changes at shutdown: %s", len(changes), exc)
                        return exc
                log.warning("store write failed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_WRITE_BACKOFF)

    # Jobs -----------------------------------------------------------------------------
    def accept(self, records: Sequence[JobRecord]) -> None:
        """Queue jobs the store has committed (holding those no node could ever run)."""
        now = self.clock.now()
        for rec in records:
            rt = JobRt.of(rec, JobState.PENDING)
            self.jobs[rec.id] = rt
            why = self._shape.check(rt.spec.resources, rt.spec.fewest_tasks)
            if why is not None:
                self._deferred += self._hold(rt, why, now)
            else:
                self._inbox.append(rec)
        self.observer.submitted(len(records))
        self._wake.set()

    def infeasible(self, spec: JobSpec) -> Infeasible | None:
        """Why no registered node could ever run a job of ``spec`` (None: some could).

        None as well while no node is registered: an empty cluster says nothing about the
        nodes to come.
        """
        return self._shape.check(spec.resources, spec.fewest_tasks)

    def reason(self, job_id: int) -> str | None:
        """Return the scheduler's current reason for a waiting job (None if not waiting here)."""
        rt = self.jobs.get(job_id)
        if rt is None or rt.state is not JobState.PENDING:
            return None
        if rt.unschedulable is not None:
            return f"{UNSCHEDULABLE}: {rt.unschedulable}"
        return self.cluster.reason(job_id)

    async def cancel(self, job_id: int) -> bool:
        """Cancel an unfinished job; False when it is not (or no longer) unfinished."""
        rt = self.jobs.get(job_id)
        if rt is None:
            return False
        now = self.clock.now()
        self._stop_tasks(rt)
        if rt.state is JobState.PENDING:
            self._inbox = [r for r in self._inbox if r.id != job_id]
            self.cluster.cancel(job_id)
        else:
            self.cluster.finish(job_id, int(now))
        self._unplace(rt)
        self._forget(rt)
        await self.persist(
            [
                JobChange(
                    job_id,
                    now,
                    state=JobState.CANCELLED.value,
                    reason="cancelled",
                    finished_at=now,
                    event="cancelled by user",
                )
            ]
        )
        for ext in self.extensions:
            ext.job_ended(self, rt, JobState.CANCELLED, now)
        self._wake.set()
        return True

    def _forget(self, rt: JobRt) -> None:
        """Drop an ended job from memory (its last changes are still to be published)."""
        self.jobs.pop(rt.rec.id, None)
        self._unschedulable.pop(rt.rec.id, None)
        self._ended_projects[rt.rec.id] = rt.rec.project
        self._evicting.pop(rt.rec.id, None)
        self._drop_fence(rt)

    # Unschedulable jobs ---------------------------------------------------------------
    def _hold(self, rt: JobRt, why: Infeasible, now: float) -> list[JobChange]:
        """Keep a waiting job out of the queue: no node could ever run it."""
        rt.unschedulable = why.message
        self._unschedulable[rt.rec.id] = None
        reason = f"{UNSCHEDULABLE}: {why.message}"
        return [JobChange(rt.rec.id, now, reason=reason, event=f"held: {why.message}")]

    def _reshape(self) -> None:
        self._shape = ClusterShape(
            (name, NodeShape.from_spec(node.rec.spec)) for name, node in self.nodes.items()
        )

    def _recheck(self, now: float) -> list[JobChange]:
        """Queue held jobs that fit the nodes now; hold waiting jobs that no longer do.

        Run after the nodes changed shape. Released jobs queue in submission order.
        """
        changes: list[JobChange] = []
        released: list[JobRecord] = []
        for job_id in list(self._unschedulable):
            rt = self.jobs[job_id]
            if self._shape.check(rt.spec.resources, rt.spec.fewest_tasks) is None:
                del self._unschedulable[job_id]
                rt.unschedulable = None
                released.append(rt.rec)
                changes.append(
                    JobChange(
                        job_id,
                        now,
                        reason="queued",
                        event="queued: a node that can run it registered",
                    )
                )
        for rt in list(self.jobs.values()):
            if rt.state is not JobState.PENDING or rt.unschedulable is not None or rt.tasks:
                continue
            why = self._shape.check(rt.spec.resources, rt.spec.fewest_tasks)
            if why is not None:
                self._inbox = [r for r in self._inbox if r.id != rt.rec.id]
                self.cluster.cancel(rt.rec.id)
                changes += self._hold(rt, why, now)
        if released:
            released.sort(key=lambda r: (r.submitted_at, r.id))
            self._inbox.extend(released)
        return changes

    # Nodes ----------------------------------------------------------------------------
    async def register_node(self, body: dict[str, Any]) -> tuple[NodeRecord, bool]:
        """Add or update a node from its agent's registration; returns (node, created).

        Raises
        ------
        InputError
            When the GPUs are not one model or their indices are not 0..n-1 (field ``gpus``).
        """
        now = self.clock.now()
        name = str(body["name"])
        old = self.nodes.get(name)
        spec = {k: v for k, v in body.items() if k not in ("name", "labels")}
        spec.setdefault("gpus", [])
        models = {str(g.get("model", "")) for g in spec["gpus"]}
        if len(models) > 1:
            raise InputError("all GPUs of a node must be one model", field="gpus")
        indices = sorted(int(g["index"]) for g in spec["gpus"])
        if indices != list(range(len(indices))):
            raise InputError("GPU indices must be 0..n-1, each once", field="gpus")
        # A re-registering node keeps an operator's cordon or drain; a down node comes back.
        state = old.state if old is not None and old.state is not NodeState.DOWN else NodeState.UP
        rec = NodeRecord(
            name,
            state.value,
            spec,
            dict(body.get("labels", {})),
            old.rec.registered_at if old else now,
            now,
        )
        await self.store.put_node(rec)
        reshaped = old is None or NodeShape.from_spec(old.rec.spec) != NodeShape.from_spec(spec)
        if old is None:
            node = self.nodes[name] = NodeRt(rec, heartbeat=now, renewed=now)
        else:
            node = old
            old.rec, old.heartbeat, old.renewed = rec, now, now
        self.cluster.upsert_node(live_node(rec), int(now))
        changes = self._requeue_lost_changes(now)
        if reshaped:
            self._reshape()
            changes += self._recheck(now)
        for ext in self.extensions:
            ext.node_registered(self, node, old is None)
        if changes:
            await self.persist(changes)
        self._wake.set()
        return rec, old is None

    async def set_node_state(self, name: str, state: str) -> NodeRecord:
        """Cordon, drain or uncordon a node; draining requeues its jobs."""
        now = self.clock.now()
        changes = await self._set_node_state(name, NodeState(state), now, f"node {name} drained")
        if changes:
            await self.persist(changes)
        self._wake.set()
        return self.nodes[name].rec

    async def _set_node_state(
        self, name: str, wanted: NodeState, now: float, why: str
    ) -> list[JobChange]:
        """Store and apply a node's new state; return the requeues a drain makes."""
        node = self.nodes[name]
        new_state = wanted
        if node.state is NodeState.DOWN and wanted is not NodeState.DOWN:
            new_state = NodeState.DOWN  # only the agent's heartbeat brings a node back
        node.rec = replace(node.rec, state=new_state.value)
        await self.store.put_node(node.rec)
        self.cluster.set_node_state(name, new_state.value)
        changes: list[JobChange] = []
        if wanted is NodeState.DRAINING:
            for job_id in self.node_jobs(name):
                changes += self._requeue(self.jobs[job_id], now, why)
        return changes

    async def _apply_drains(self, now: float) -> list[JobChange]:
        """Drain the nodes of maintenance windows that begin, bring back those that end.

        Stored like an operator's drain or uncordon. A window's end lifts only its drain: a
        node an operator cordoned meanwhile (or one that is down) stays as it is. A window
        whose end was applied is deleted from the store, so that a restart does not apply it
        again (to a node an operator drained since).
        """
        changes: list[JobChange] = []
        t = int(now)
        ending = [r.id for r in self.cluster.reservations.values() if r.drain and r.end <= t]
        for name, state in self.cluster.due_drains(t):
            node = self.nodes.get(name)
            if node is None:
                continue
            wanted = NodeState(state)
            if wanted is NodeState.UP and node.state is not NodeState.DRAINING:
                continue
            log.info("maintenance window: node %s %s", name, wanted.value)
            why = f"node {name} drained for a maintenance window"
            changes += await self._set_node_state(name, wanted, now, why)
        for res_id in ending:
            if res_id not in self.cluster.reservations:
                await self.store.delete_reservation(res_id)
        return changes

    async def heartbeat(self, name: str, body: dict[str, Any]) -> list[dict[str, int]]:
        """Record a heartbeat: reconcile the node's tasks and GPU health; return tasks to stop."""
        node = self.nodes[name]
        now = self.clock.now()
        node.heartbeat = node.renewed = now
        if node.state is NodeState.DOWN:
            node.rec = replace(node.rec, state=NodeState.UP.value, heartbeat_at=now)
            self.cluster.set_node_state(name, NodeState.UP.value)
            log.info("node %s is back", name)
        else:
            node.rec = replace(node.rec, heartbeat_at=now)
        health = {int(g["index"]): g for g in body.get("gpus", [])}
        if health:
            gpus = [dict(g) for g in node.rec.spec.get("gpus", [])]
            for g in gpus:
                h = health.get(int(g["index"]))
                if h is not None:
                    g["healthy"] = bool(h["healthy"])
                    g["reason"] = str(h.get("reason", ""))
            node.rec = replace(node.rec, spec={**node.rec.spec, "gpus": gpus})
            held = unhealthy_gpus(gpus)
            live = self.cluster.node(name)
            if live is not None and held != live.unhealthy:
                self.cluster.set_unhealthy(name, held)
        await self.store.put_node(node.rec)
        seen: set[tuple[int, int, int]] = set()
        changes: list[JobChange] = []
        for rep in body.get("tasks", []):
            seen.add((int(rep["job_id"]), int(rep["attempt"]), int(rep["rank"])))
            changes += self._on_task(name, rep, now)
        # Tasks this node should run but no longer reports: the agent lost them.
        for job_id in self.node_jobs(name):
            rt = self.jobs[job_id]
            if job_id in self._evicting:
                continue  # its tasks are stopping: gone is what they should be (see below)
            for rank, task in rt.tasks.items():
                if (
                    task.node == name
                    and task.state is TaskState.RUNNING
                    and (job_id, rt.attempt, rank) not in seen
                    and now - task.since > LOST_AFTER
                ):
                    changes += self._requeue(rt, now, f"task {rank} lost on node {name}")
                    break
        # Stopping tasks the agent no longer has are gone (after LOST_AFTER, as above: the
        # assignment may still have been on its way).
        for job_id in list(self._fenced_on.get(name, ())):

            def unlisted(key: tuple[str, int, int], since: float, j: int = job_id) -> bool:
                return key[0] == name and (j, *key[1:]) not in seen and now - since > LOST_AFTER

            changes += self._unfence(job_id, unlisted)
        # Stop asking for tasks the agent no longer has.
        node.cancel = {(j, a) for (j, a) in node.cancel if any(s[:2] == (j, a) for s in seen)}
        node.cancel_sent &= node.cancel
        node.cancel_grace = {k: v for k, v in node.cancel_grace.items() if k in node.cancel}
        node.cancel_ranks &= seen
        node.cancel_ranks_sent &= node.cancel_ranks
        if changes:
            await self.persist(changes)
            self._wake.set()
        return self._cancels(node)

    def _cancels(self, node: NodeRt) -> list[dict[str, int]]:
        """Return the cancel entries for a node's agent: whole attempts, then single ranks.

        A victim's entry carries the grace it has left (whole seconds, rounded down so that
        the agent's SIGKILL comes before the scheduler gives its resources away).
        """
        now = self.clock.now()
        out: list[dict[str, int]] = []
        for j, a in sorted(node.cancel):
            entry = {"job_id": j, "attempt": a}
            until = node.cancel_grace.get((j, a))
            if until is not None:
                entry["grace"] = max(0, int(until - now))
            out.append(entry)
        out += [
            {"job_id": j, "attempt": a, "rank": r}
            for j, a, r in sorted(node.cancel_ranks)
            if (j, a) not in node.cancel
        ]
        return out

    async def task_report(self, name: str, rep: dict[str, Any]) -> None:
        """Record that a task started or exited on node ``name``."""
        node = self.nodes[name]
        now = self.clock.now()
        node.heartbeat = now
        changes = self._on_task(name, rep, now)
        if changes:
            await self.persist(changes)
            self._wake.set()

    async def assignments(self, name: str, wait: float) -> dict[str, Any]:
        """Work for node ``name``: at once if any, else after up to ``wait`` seconds."""
        node = self.nodes[name]
        node.heartbeat = self.clock.now()
        # Cancels already handed out are repeated (heartbeat answers carry them too) but do
        # not make the poll answer at once again: the agent is already stopping those tasks.
        idle = (
            not node.assign
            and node.cancel <= node.cancel_sent
            and node.cancel_ranks <= node.cancel_ranks_sent
        )
        if idle and wait > 0 and not self._closing:
            node.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(node.wake.wait(), timeout=wait)
        node.cancel_sent |= node.cancel
        node.cancel_ranks_sent |= node.cancel_ranks
        node.handed |= node.assign.keys()
        return {"assignments": list(node.assign.values()), "cancel": self._cancels(node)}

    def lease_terms(self) -> dict[str, float]:
        """Return the lease an agent holds, as registration and heartbeat answers tell it."""
        return {"seconds": self.lease, "grace": self.grace}

    # Quotas ---------------------------------------------------------------------------
    async def put_quota(self, rec: QuotaRecord) -> None:
        """Store a project's quota and apply it."""
        await self.store.put_quota(rec)
        self.quotas[rec.project] = rec
        self._apply_quotas(int(self.clock.now()))

    async def delete_quota(self, project: str) -> bool:
        """Remove a project's quota."""
        found = await self.store.delete_quota(project)
        self.quotas.pop(project, None)
        self._apply_quotas(int(self.clock.now()))
        return found

    async def put_pool(self, rec: PoolRecord) -> None:
        """Store a pool and apply it."""
        await self.store.put_pool(rec)
        self.pools[rec.name] = rec
        self._apply_quotas(int(self.clock.now()))

    async def delete_pool(self, name: str) -> bool:
        """Remove a pool."""
        found = await self.store.delete_pool(name)
        self.pools.pop(name, None)
        self._apply_quotas(int(self.clock.now()))
        return found

    def _apply_quotas(self, now: int) -> None:
        quotas = [
            Quota(
                project=q.project,
                nominal=q.nominal,
                borrowing_limit=q.borrowing_limit,
                lending_limit=q.lending_limit,
                cohort=q.pool,
                overcommit=q.overcommit,
            )
            for q in sorted(self.quotas.values(), key=lambda q: q.project)
        ]
        limits = {
            p.name: p.borrowing_limit for p in self.pools.values() if p.borrowing_limit is not None
        }
        self.cluster.set_quotas(Quotas(quotas, limits) if quotas else None, now)
        self._wake.set()

    # The loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            # Real time: how often the loop looks is the service's business, not the clock's.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick)
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive one bad cycle
                log.exception("scheduling cycle failed")
                await asyncio.sleep(self.tick)

    async def step(self) -> None:
        """One scheduling cycle at the clock's current time.

        In order: rebuild the scheduler for changed nodes and quotas, mark silent nodes down,
        queue new submissions, end jobs past their run time, requeue jobs a rebuild could not
        keep, run the extensions' ``before_cycle``, ask the scheduler what starts (and what it
        preempts), write the changes, then offer the new placements to the agents.
        """
        now = self.clock.now()
        t = int(now)
        self.cluster.flush(t)  # one rebuild for all the nodes and quotas changed since
        changes, self._deferred = self._deferred, []
        # Timeouts are seconds long: one pass over the nodes per second is enough, however
        # often submissions wake the loop.
        if now - self._nodes_checked >= min(1.0, self.node_timeout / 4, self.lease / 4):
            self._nodes_checked = now
            changes += await self._nodes_down(now)
        inbox, self._inbox = self._inbox, []
        self.cluster.add_many(
            [live_job(rec, self.jobs[rec.id].spec) for rec in inbox if rec.id in self.jobs]
        )
        for job_id, attempt in self._deadlines.due(now):
            over = self.jobs.get(job_id)
            if over is not None and over.state is JobState.RUNNING and over.attempt == attempt:
                limit = over.spec.max_runtime
                why = f"exceeded max runtime {limit}s"
                changes += self._end(over, now, JobState.FAILED, None, why)
        changes += self._requeue_lost_changes(now)
        changes += await self._apply_drains(now)
        for ext in self.extensions:
            changes += ext.before_cycle(self, now)
        started_clock = time.perf_counter()
        started = self.cluster.cycle(t)
        seconds = time.perf_counter() - started_clock
        # Victims whose grace ended: the cycle requeued them (their tasks, SIGKILLed by now,
        # still fence the next attempt until reported gone).
        for job_id in [j for j in self._evicting if not self.cluster.in_grace(j)]:
            over = self.jobs.get(job_id)
            if over is not None:
                changes += self._end_eviction(over, now, "requeued: its grace period is over")
        for job_id in self.cluster.preempted():
            victim = self.jobs.get(job_id)
            if victim is None:
                continue
            grace = self.cluster.grace_of(job_id)
            if grace > 0:
                changes += self._evict(victim, now, grace)
            else:
                self._stop_tasks(victim)
                changes += self._requeued(victim, now, "preempted by a higher-priority job")
        for job_id in self.cluster.resized():
            changes += self._resize(job_id, now)
        offers: list[JobRt] = []
        for job_id in started:
            rt = self.jobs[job_id]
            placement = self.cluster.placement(job_id)
            rt.attempt += 1
            rt.state = JobState.SCHEDULED
            self._place(
                rt,
                {
                    rank: TaskRt(node, gpus, since=now)
                    for rank, (node, gpus) in enumerate(placement)
                },
            )
            changes.append(
                JobChange(
                    job_id,
                    now,
                    state=JobState.SCHEDULED.value,
                    reason="scheduled",
                    attempt=rt.attempt,
                    placement=_placement_json(placement),
                    event="placed on " + ", ".join(sorted({n for n, _ in placement})),
                )
            )
            offers.append(rt)
        for ext in self.extensions:
            ext.after_cycle(self, now, started)
        self.observer.cycle(seconds, self.num_pending, self.cluster.num_running)
        if changes:
            await self.persist(changes)
        # Agents learn of a placement only once it is durable: a crash in between leaves a
        # job PENDING in the store with nothing running.
        resume = await self._resume_points(offers)
        for rt in offers:
            rt.resume = resume.get(rt.rec.id)
            if rt.stopping:
                # Released by _unfence once the previous attempt's tasks are gone.
                rt.held, rt.held_resume = True, resume.get(rt.rec.id)
                continue
            for rank in rt.tasks:
                self._offer(rt, rank, resume.get(rt.rec.id))

    async def _nodes_down(self, now: float) -> list[JobChange]:
        changes: list[JobChange] = []
        expiry = self.lease + self.grace
        for name, node in self.nodes.items():
            expired = now - node.renewed > expiry
            if node.state is not NodeState.DOWN and (
                expired or now - node.heartbeat > self.node_timeout
            ):
                log.warning("node %s missed its heartbeats: down", name)
                node.rec = replace(node.rec, state=NodeState.DOWN.value)
                await self.store.put_node(node.rec)
                self.cluster.set_node_state(name, NodeState.DOWN.value)
            # Only once the lease and the grace after it have passed is the agent sure to have
            # killed its tasks (or to be dead with them): only then may they run elsewhere.
            if expired and self._on_node.get(name):
                why = f"node {name} down (lease not renewed for {now - node.renewed:.0f}s)"
                for job_id in self.node_jobs(name):
                    changes += self._requeue(self.jobs[job_id], now, why)
            if expired and name in self._fenced_on:
                # Whatever this node was stopping is dead by now.

                def on_node(key: tuple[str, int, int], _since: float, n: str = name) -> bool:
                    return key[0] == n

                for job_id in list(self._fenced_on.get(name, ())):
                    changes += self._unfence(job_id, on_node)
        return changes

    async def _resume_points(self, jobs: list[JobRt]) -> dict[int, str]:
        out: dict[int, str] = {}
        for rt in jobs:
            if rt.attempt > 1:
                cks = [c for c in await self.store.list_checkpoints(rt.rec.id) if c.complete]
                if cks:
                    out[rt.rec.id] = max(cks, key=lambda c: (c.step, c.id)).uri
        return out

    def _offer(self, rt: JobRt, rank: int, resume: str | None = None) -> None:
        task = rt.tasks[rank]
        node = self.nodes.get(task.node)
        if node is None:
            return
        hosts: dict[str, int] = {}
        for t in rt.tasks.values():
            hosts[t.node] = hosts.get(t.node, 0) + 1
        local = [r for r, t in sorted(rt.tasks.items()) if t.node == task.node]
        master = self.nodes.get(rt.tasks[0].node)
        spec = rt.spec
        span = self.cluster.elastic_range(rt.rec.id)
        elastic = None if span is None else {"min_tasks": span[0], "max_tasks": span[1]}
        node.assign[(rt.rec.id, rt.attempt, rank)] = {
            "job_id": rt.rec.id,
            "attempt": rt.attempt,
            "rank": rank,
            "world_size": len(rt.tasks),
            "local_rank": local.index(rank),
            "local_world_size": len(local),
            "master_addr": _address(master.rec) if master else "127.0.0.1",
            "master_port": MASTER_PORT_BASE + (rt.rec.id * 7 + rt.attempt) % 20000,
            "command": spec.command if isinstance(spec.command, str) else list(spec.command),
            "env": dict(spec.env),
            "workdir": spec.workdir,
            # Who submitted it and what it asked for: the agent picks the task's Unix user
            # from project and user, and sets its cgroup limits from the resources.
            "project": rt.rec.project,
            "user": rt.rec.user,
            "resources": {
                "cpu_milli": spec.resources.cpu_milli,
                "memory_mib": spec.resources.memory_mib,
            },
            "gpus": task.gpus,
            "hosts": [
                {"node": n, "address": _address(self.nodes[n].rec), "slots": s}
                for n, s in hosts.items()
                if n in self.nodes
            ],
            "resume_from": resume,
            # An elastic job's range: the launcher sets torchrun's elastic rendezvous.
            "elastic": elastic,
            "token": self.job_token(rt.rec, spec.max_runtime),
            "max_runtime": spec.max_runtime,
            "server": self.server_url,
            # The job's tracking run, if it has one: the agent sets the MLFLOW_* variables.
            "tracking": rt.rec.spec.get("tracking"),
        }
        node.wake.set()

    # Task reports ---------------------------------------------------------------------
    def _on_task(self, name: str, rep: dict[str, Any], now: float) -> list[JobChange]:
        job_id, attempt, rank = int(rep["job_id"]), int(rep["attempt"]), int(rep["rank"])
        reported = TaskState(rep["state"])
        node = self.nodes[name]
        node.assign.pop((job_id, attempt, rank), None)
        node.handed.discard((job_id, attempt, rank))
        changes: list[JobChange] = []
        if reported is TaskState.EXITED:
            # The last task of a preemption victim gone: it is queued again here.
            changes = self._unfence(job_id, lambda key, _since: key == (name, attempt, rank))
        rt = self.jobs.get(job_id)
        task = rt.tasks.get(rank) if rt is not None and rt.attempt == attempt else None
        if rt is None or task is None or task.node != name:
            if reported is TaskState.RUNNING:
                if rt is not None and rt.attempt == attempt and rt.tasks:
                    # A rank an elastic resize took away: the others run on.
                    node.cancel_ranks.add((job_id, attempt, rank))
                else:
                    node.cancel.add((job_id, attempt))  # a leftover of an earlier attempt
                node.wake.set()
            return changes
        if task.state is TaskState.EXITED:
            return changes
        if job_id in self._evicting:
            # Stopped by a preemption (SIGTERM, checkpoint, exit): not the job's failure nor
            # its end. _unfence requeues it once every task is gone.
            if reported is TaskState.EXITED:
                code = rep.get("exit_code")
                task.state, task.exit_code = TaskState.EXITED, None if code is None else int(code)
            return changes
        if reported is TaskState.RUNNING:
            if task.state is TaskState.ASSIGNED:
                task.state, task.since = TaskState.RUNNING, now
            if rt.state is JobState.SCHEDULED and all(
                t.state is not TaskState.ASSIGNED for t in rt.tasks.values()
            ):
                rt.state, rt.started_at = JobState.RUNNING, now
                self._track_deadline(rt)
                self.observer.running_after(max(0.0, now - rt.rec.submitted_at))
                return [
                    JobChange(
                        job_id,
                        now,
                        state=JobState.RUNNING.value,
                        reason="running",
                        started_at=now,
                        event=f"all {len(rt.tasks)} task(s) running",
                    )
                ]
            return []
        code = rep.get("exit_code")
        task.state, task.exit_code = TaskState.EXITED, None if code is None else int(code)
        decision = after_exit(
            rt.spec, rank, task.exit_code, str(rep.get("reason") or ""), rt.failures
        )
        if decision.action is ExitAction.REQUEUE:
            if decision.restart:
                rt.failures += 1
            return self._requeue(rt, now, decision.why)
        if decision.action is ExitAction.FAIL:
            return self._end(rt, now, JobState.FAILED, task.exit_code, decision.why)
        if all(t.state is TaskState.EXITED and t.exit_code == 0 for t in rt.tasks.values()):
            return self._end(rt, now, JobState.SUCCEEDED, 0, decision.why)
        return []

    # Transitions ----------------------------------------------------------------------
    def _stop_tasks(self, rt: JobRt, grace_until: float | None = None) -> None:
        """Cancel the tasks of the job's attempt and fence them (see :attr:`JobRt.stopping`).

        ``grace_until``: when a preemption's grace ends (the agents wait until then before
        SIGKILL); None: the agents' own stop grace.
        """
        now = self.clock.now()
        for rank, task in rt.tasks.items():
            node = self.nodes.get(task.node)
            if node is None:
                continue
            key = (rt.rec.id, rt.attempt, rank)
            node.assign.pop(key, None)
            if task.state is not TaskState.EXITED:
                node.cancel.add((rt.rec.id, rt.attempt))
                if grace_until is not None:
                    node.cancel_grace[(rt.rec.id, rt.attempt)] = grace_until
                node.wake.set()
            # Fenced: the job's next attempt waits until this task is known to be gone.
            if task.state is TaskState.RUNNING or (
                task.state is TaskState.ASSIGNED and key in node.handed
            ):
                rt.stopping[(task.node, rt.attempt, rank)] = now
                self._fenced_on.setdefault(task.node, set()).add(rt.rec.id)
            node.handed.discard(key)

    def _drop_fence(self, rt: JobRt) -> None:
        """Forget a finished job's stopping tasks: it has no next attempt to hold."""
        for name in {key[0] for key in rt.stopping}:
            on = self._fenced_on.get(name)
            if on is not None:
                on.discard(rt.rec.id)
                if not on:
                    del self._fenced_on[name]
        rt.stopping.clear()

    def _unfence(
        self, job_id: int, gone: Callable[[tuple[str, int, int], float], bool]
    ) -> list[JobChange]:
        """Forget the stopping tasks of a job for which ``gone(key, since)`` holds.

        Once none is left, a placement held for them is handed out, and a preemption victim
        in its grace is queued again (its changes are returned).
        """
        rt = self.jobs.get(job_id)
        if rt is None or not rt.stopping:
            return []
        nodes = set()
        for key, since in list(rt.stopping.items()):
            if gone(key, since):
                del rt.stopping[key]
                nodes.add(key[0])
        for name in nodes - {key[0] for key in rt.stopping}:
            on = self._fenced_on.get(name)
            if on is not None:
                on.discard(job_id)
                if not on:
                    del self._fenced_on[name]
        if not rt.stopping and job_id in self._evicting:
            return self._end_eviction(rt, self.clock.now(), "requeued: its tasks stopped")
        if not rt.stopping and rt.held:
            rt.held = False
            for rank in rt.tasks:
                self._offer(rt, rank, rt.held_resume)
        return []

    # Preemption with a grace period, elastic resizes ------------------------------------
    def _evict(self, rt: JobRt, now: float, grace: int) -> list[JobChange]:
        """Stop a preemption victim's tasks with ``grace`` seconds to checkpoint.

        The job keeps its placement (and the scheduler its resources) meanwhile, shown as
        ``PREEMPTED``; it is queued again when its tasks are gone or the grace is over.
        """
        until = now + grace
        self._evicting[rt.rec.id] = until
        self._stop_tasks(rt, grace_until=until)
        rt.state = JobState.PREEMPTED
        changes = [
            JobChange(
                rt.rec.id,
                now,
                state=JobState.PREEMPTED.value,
                reason="preempted: checkpointing within its grace period",
                event=f"preempted by a higher-priority job; {grace}s to checkpoint and stop",
            )
        ]
        if not rt.stopping:  # nothing had started: nothing to wait for
            changes += self._end_eviction(rt, now, "requeued: none of its tasks had started")
        return changes

    def _end_eviction(self, rt: JobRt, now: float, why: str) -> list[JobChange]:
        """Queue a preemption victim again (its tasks are gone, or its grace is over)."""
        self._evicting.pop(rt.rec.id, None)
        # A no-op when the cycle already requeued it at the end of its grace.
        self.cluster.release_evicted(rt.rec.id, int(now))
        self._wake.set()
        self._unplace(rt)
        rt.state, rt.started_at = JobState.PENDING, None
        return self._pending_change(rt, now, why)

    @staticmethod
    def _pending_change(rt: JobRt, now: float, why: str) -> list[JobChange]:
        return [
            JobChange(
                rt.rec.id,
                now,
                state=JobState.PENDING.value,
                reason="requeued",
                placement=[],
                clear=("started_at",),
                event=why,
            )
        ]

    def _resize(self, job_id: int, now: float) -> list[JobChange]:
        """Follow an elastic job the cycle grew or shrank: offer new ranks, stop removed ones.

        Ranks that keep their node and devices run on (torchrun's elastic rendezvous takes
        the newcomers in); the attempt stays the same.
        """
        rt = self.jobs.get(job_id)
        if rt is None or not rt.state.placed:
            return []
        placement = self.cluster.placement(job_id)
        old = rt.tasks
        tasks: dict[int, TaskRt] = {}
        added: list[int] = []
        for rank, (name, gpus) in enumerate(placement):
            task = old.get(rank)
            if task is not None and task.node == name and task.gpus == gpus:
                tasks[rank] = task
            else:
                tasks[rank] = TaskRt(name, gpus, since=now)
                added.append(rank)
        for rank, task in old.items():
            if tasks.get(rank) is not task:
                self._stop_rank(rt, rank, task)
        held = rt.held
        self._place(rt, tasks)
        rt.held = held  # a held placement is handed out whole once the fence lifts
        if not held:
            for rank in added:
                self._offer(rt, rank, rt.resume)
        return [
            JobChange(
                job_id,
                now,
                placement=_placement_json(placement),
                event=f"resized to {len(placement)} task(s)",
            )
        ]

    def _stop_rank(self, rt: JobRt, rank: int, task: TaskRt) -> None:
        """Stop one rank of a running attempt (an elastic job shrank)."""
        node = self.nodes.get(task.node)
        if node is None:
            return
        key = (rt.rec.id, rt.attempt, rank)
        node.assign.pop(key, None)
        if task.state is TaskState.RUNNING or key in node.handed:
            node.cancel_ranks.add(key)
            node.wake.set()
        node.handed.discard(key)

    def _end(
        self, rt: JobRt, now: float, state: JobState, exit_code: int | None, why: str
    ) -> list[JobChange]:
        self._stop_tasks(rt)
        self.cluster.finish(rt.rec.id, int(now))
        self._unplace(rt)
        self._forget(rt)
        for ext in self.extensions:
            ext.job_ended(self, rt, state, now)
        self._wake.set()
        return [
            JobChange(
                rt.rec.id,
                now,
                state=state.value,
                reason=why,
                finished_at=now,
                exit_code=exit_code,
                event=why,
            )
        ]

    def _requeue(self, rt: JobRt, now: float, why: str) -> list[JobChange]:
        """Stop a placed job and queue it again (it resumes from its last checkpoint)."""
        self._stop_tasks(rt)
        self.cluster.requeue(rt.rec.id, int(now))
        self._wake.set()
        return self._requeued(rt, now, why)

    def _requeued(self, rt: JobRt, now: float, why: str) -> list[JobChange]:
        self._evicting.pop(rt.rec.id, None)
        self._unplace(rt)
        rt.state, rt.started_at = JobState.PENDING, None
        return self._requeue_changes(rt, now, why)

    @staticmethod
    def _requeue_changes(rt: JobRt, now: float, why: str) -> list[JobChange]:
        return [
            JobChange(rt.rec.id, now, state=JobState.PREEMPTED.value, reason=why, event=why),
            JobChange(
                rt.rec.id,
                now,
                state=JobState.PENDING.value,
                reason="requeued",
                placement=[],
                clear=("started_at",),
                event="requeued",
            ),
        ]

    def _requeue_lost_changes(self, now: float) -> list[JobChange]:
        changes: list[JobChange] = []
        for job_id in self.cluster.lost:
            rt = self.jobs.get(job_id)
            if rt is not None:
                self._stop_tasks(rt)
                self.cluster.add(live_job(rt.rec, rt.spec))
                changes += self._requeued(rt, now, "placement lost when the cluster changed")
        self.cluster.lost = []
        return changes

    # Views ----------------------------------------------------------------------------
    @property
    def num_pending(self) -> int:
        """Jobs waiting: queued, parked by the cluster, or held as unschedulable."""
        return self.cluster.num_pending + len(self._unschedulable)

    def cluster_summary(self) -> dict[str, Any]:
        """Return capacity, allocation, fragmentation and counts of nodes and jobs."""
        states = {s.value: 0 for s in NodeState}
        cap = [0, 0, 0]
        alloc = list(self.cluster.totals())
        gpus = unhealthy = mig = 0
        for node in self.nodes.values():
            states[node.rec.state] = states.get(node.rec.state, 0) + 1
            devices = node.rec.spec.get("gpus", [])
            gpus += len(devices)
            unhealthy += sum(1 for g in devices if g.get("healthy") is False)
            mig += sum(1 for g in devices if g.get("mig_mode") is True)
            if node.state is not NodeState.DOWN:
                cap[0] += int(node.rec.spec.get("cpu_milli", 0))
                cap[1] += int(node.rec.spec.get("memory_mib", 0))
                # What placement can use: healthy device slots (a MIG instance is its share).
                sick = unhealthy_gpus(devices)
                cap[2] += sum(d.milli for d in device_slots(devices) if d.gpu not in sick)
        names = ("cpu_milli", "memory_mib", "gpu_milli")
        return {
            "nodes": {"total": len(self.nodes), **states},
            "capacity": dict(zip(names, cap, strict=True)),
            "allocated": dict(zip(names, alloc, strict=True)),
            "gpus": {"total": gpus, "unhealthy": unhealthy, "mig_mode": mig},
            "fragmentation": {
                "idle_gpu_share_milli": self.cluster.fragmentation(),
                "gpu_allocation_ratio": alloc[2] / cap[2] if cap[2] else 0.0,
            },
            "jobs": {
                "pending": self.num_pending,
                "running": self.cluster.num_running,
                "unschedulable": len(self._unschedulable),
            },
        }

    def node_jobs(self, name: str) -> list[int]:
        """Return the jobs with a task on node ``name``."""
        return sorted(self._on_node.get(name, ()))

    def _place(self, rt: JobRt, tasks: dict[int, TaskRt]) -> None:
        """Give a job its tasks of this attempt (and index them by node)."""
        self._unplace(rt)
        rt.tasks = tasks
        for task in tasks.values():
            self._on_node.setdefault(task.node, set()).add(rt.rec.id)

    def _unplace(self, rt: JobRt) -> None:
        for task in rt.tasks.values():
            self._on_node.get(task.node, set()).discard(rt.rec.id)
        rt.tasks = {}
        rt.held = False


def _placement_json(placement: Placement) -> list[dict[str, Any]]:
    return [{"rank": r, "node": n, "gpus": list(g)} for r, (n, g) in enumerate(placement)]


def _address(rec: NodeRecord) -> str:
    return str(rec.spec.get("address") or rec.spec.get("hostname") or rec.name)
