"""The scheduling loop: the one writer of scheduler state, on a wall clock.

Handlers never touch the scheduler. They commit what the caller asked to the store and hand it
to the :class:`Controller`, whose methods run on the event loop's single thread (so in-memory
changes between two ``await`` points are atomic) and whose job-state writes go through one
ordered writer: changes reach the store in the order they were made, many per transaction.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cplat.runtime.live import LiveCluster, LiveJob, LiveNode, Placement
from cplat.scheduler import Quota, Quotas
from cplat.store.base import (
    JobChange,
    JobRecord,
    NodeRecord,
    PoolRecord,
    QuotaRecord,
    Store,
)
from cplat_server.errors import bad_request
from cplat_server.metrics import Metrics

log = logging.getLogger("cplat.server")

#: A running task missing from a heartbeat is lost only after this long (the heartbeat may
#: have been written before the agent reported the task).
LOST_AFTER = 5.0
MASTER_PORT_BASE = 20000
WRITE_BACKOFF, MAX_WRITE_BACKOFF = 0.05, 5.0
#: How long a stopping server keeps retrying job-state writes before giving up.
CLOSING_WRITE_TIMEOUT = 10.0
#: Exit reasons of tasks stopped with their agent (or by it, when it lost its lease): the job
#: is requeued, not failed.
AGENT_STOPS = frozenset({"agent stopped", "agent restarted", "lease expired"})


@dataclass
class TaskRt:
    """One task (rank) of the current attempt."""

    node: str
    gpus: list[int]
    state: str = "assigned"  # assigned | running | exited
    exit_code: int | None = None
    since: float = 0.0


@dataclass
class JobRt:
    """An unfinished job in memory."""

    rec: JobRecord
    state: str
    attempt: int
    tasks: dict[int, TaskRt] = field(default_factory=dict)
    started_at: float | None = None
    failures: int = 0
    #: Tasks of earlier attempts told to stop and not yet known to be gone, as
    #: (node, attempt, rank) -> when the stop was asked. While any is left, a new placement is
    #: not handed to the agents (it is ``held``): the old copy may still be in its grace.
    stopping: dict[tuple[str, int, int], float] = field(default_factory=dict)
    held: bool = False
    held_resume: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        """The job's submitted spec."""
        return self.rec.spec


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
    #: Assignments a poll has handed out (the agent may have started them).
    handed: set[tuple[int, int, int]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def live_job(rec: JobRecord) -> LiveJob:
    """Return the scheduler's view of a stored job."""
    tasks = rec.spec["tasks"]
    res = tasks["resources"]
    return LiveJob(
        job_id=rec.id,
        project=rec.project,
        submit=int(rec.submitted_at),
        requested=int(rec.spec["max_runtime"]),
        num_tasks=int(tasks["count"]),
        cpu_milli=int(res["cpu_milli"]),
        memory_mib=int(res["memory_mib"]),
        num_gpu=int(res["num_gpu"]),
        gpu_milli=int(res["gpu_milli"]),
        gpu_models=tuple(res["gpu_models"]),
        priority=int(rec.spec["priority"]),
    )


def live_node(rec: NodeRecord) -> LiveNode:
    """Return the scheduler's view of a stored node."""
    gpus = rec.spec.get("gpus", [])
    models = [str(g.get("model", "")) for g in gpus]
    return LiveNode(
        name=rec.name,
        cpu_milli=int(rec.spec.get("cpu_milli", 0)),
        memory_mib=int(rec.spec.get("memory_mib", 0)),
        num_gpu=len(gpus),
        gpu_model=models[0] if models else "",
        rack=int(rec.spec.get("rack", 0)),
        spine=int(rec.spec.get("spine", 0)),
        state=rec.state,
        unhealthy=held_gpus(gpus),
    )


def held_gpus(gpus: list[dict[str, Any]]) -> set[int]:
    """GPUs the scheduler must not place on: unhealthy ones, and those in MIG mode.

    A MIG-mode GPU shows its jobs only its instances (by UUID), not the whole device that
    ``CUDA_VISIBLE_DEVICES=<index>`` would name, so it is kept out of placement until MIG
    instances are scheduled as devices of their own.
    """
    return {int(g["index"]) for g in gpus if g.get("healthy") is False or g.get("mig_mode") is True}


class Controller:
    """Owns the live cluster, the unfinished jobs and the agents' work queues.

    Parameters
    ----------
    store
        Durable state.
    cluster
        The scheduler around the registered nodes.
    metrics
        Prometheus metrics of the service.
    job_token
        Mints the token a job's processes get, from the job's record and its run time in
        seconds.
    node_timeout, tick
        Heartbeat timeout and longest pause between cycles (seconds).
    lease, grace
        A node's lease and its tasks' stop grace (seconds; see the module docstring): a
        silent node's tasks are requeued ``lease + grace`` after its last renewal.
    """

    def __init__(
        self,
        store: Store,
        cluster: LiveCluster,
        metrics: Metrics,
        job_token: Any,
        node_timeout: float = 30.0,
        tick: float = 1.0,
        server_url: str = "",
        lease: float = 20.0,
        grace: float = 10.0,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.metrics = metrics
        self.job_token = job_token
        self.node_timeout = node_timeout
        self.tick = tick
        self.server_url = server_url
        self.lease = lease
        self.grace = grace
        self.jobs: dict[int, JobRt] = {}
        self.nodes: dict[str, NodeRt] = {}
        self.quotas: dict[str, QuotaRecord] = {}
        self.pools: dict[str, PoolRecord] = {}
        self._inbox: list[JobRecord] = []
        self._wake = asyncio.Event()
        self._writes: list[tuple[list[JobChange], asyncio.Future[None]]] = []
        self._write_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        # The project of each job that just ended, until its last change is published: the
        # stream shows each event only to those who may see the job's project.
        self._ended_projects: dict[int, str] = {}
        #: Log follows waiting for a job's output: job -> (event, followers).
        self._log_watch: dict[int, tuple[asyncio.Event, int]] = {}
        self._closing = False
        # (deadline, job, attempt) of running jobs: the cycle checks time limits without
        # walking every unfinished job.
        self._deadlines: list[tuple[float, int, int]] = []
        # Jobs with a task on each node: heartbeats, node failures and node views look here
        # instead of walking every job.
        self._on_node: dict[str, set[int]] = {}
        # Jobs with a stopping task (JobRt.stopping) on each node.
        self._fenced_on: dict[str, set[int]] = {}
        self._nodes_checked = 0.0
        self.started = time.time()

    # Lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover from the store, then start the loop and the writer."""
        await self._recover()
        self._tasks = [
            asyncio.create_task(self._writer(), name="cplat-writer"),
            asyncio.create_task(self._run(), name="cplat-loop"),
        ]

    def begin_shutdown(self) -> None:
        """Answer long polls and end event streams now, so the server can close promptly."""
        self._closing = True
        for node in self.nodes.values():
            node.wake.set()
        for q in list(self._subscribers):
            if not q.full():
                q.put_nowait({})  # an empty event ends a stream
        for ev, _ in self._log_watch.values():
            ev.set()

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
        now = time.time()
        t = int(now)
        for qrec in await self.store.list_quotas():
            self.quotas[qrec.project] = qrec
        for prec in await self.store.list_pools():
            self.pools[prec.name] = prec
        self._apply_quotas(t)
        for nrec in await self.store.list_nodes():
            # Every node gets a full timeout from the restart to report in, and its lease counts
            # as renewed now: it may have renewed just before the old server stopped.
            self.nodes[nrec.name] = NodeRt(nrec, heartbeat=now, renewed=now)
            self.cluster.upsert_node(live_node(nrec), t)
        changes: list[JobChange] = []
        waiting: list[LiveJob] = []
        for rec in await self.store.unfinished_jobs():
            rt = JobRt(rec, rec.state, rec.attempt, started_at=rec.started_at)
            self.jobs[rec.id] = rt
            if rec.state in ("SCHEDULED", "RUNNING") and rec.placement:
                placement = [(p["node"], list(p["gpus"])) for p in rec.placement]
                start = int(rec.started_at or rec.updated_at)
                code = self.cluster.restore(live_job(rec), start, placement)
                if code == "ok":
                    state = "assigned" if rec.state == "SCHEDULED" else "running"
                    self._place(
                        rt,
                        {
                            rank: TaskRt(node, gpus, state, since=now)
                            for rank, (node, gpus) in enumerate(placement)
                        },
                    )
                    if state == "assigned":
                        for rank in rt.tasks:
                            self._offer(rt, rank)
                    continue
                log.warning("job %d: placement could not be restored (%s)", rec.id, code)
                changes += self._requeue_changes(rt, now, f"placement lost on restart ({code})")
            elif rec.state == "SCHEDULED":
                changes += self._requeue_changes(rt, now, "placement lost on restart")
            rt.state = "PENDING"
            waiting.append(live_job(rec))
        self.cluster.add_many(waiting)
        for rt in self.jobs.values():
            if rt.state == "RUNNING" and rt.started_at is not None:
                self._track_deadline(rt)
        if changes:
            await self.store.update_jobs(changes)
        # What recovery loaded lives as long as the server: keep it out of the collector's
        # full passes, which otherwise stall the loop for tens of milliseconds.
        gc.freeze()

    def _track_deadline(self, rt: JobRt) -> None:
        assert rt.started_at is not None
        deadline = rt.started_at + int(rt.spec["max_runtime"])
        heapq.heappush(self._deadlines, (deadline, rt.rec.id, rt.attempt))

    # Ordered writer -------------------------------------------------------------------
    def persist(self, changes: list[JobChange]) -> asyncio.Future[None]:
        """Queue changes for the store; the future resolves once they are committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((changes, fut))
        self._write_wake.set()
        for ch in changes:
            if ch.state is not None:
                self._publish(ch)
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
                self.metrics.store_write.observe(time.perf_counter() - started)
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
                    deadline = deadline or time.monotonic() + CLOSING_WRITE_TIMEOUT
                    if time.monotonic() > deadline:
                        log.error("giving up on %d job changes at shutdown: %s", len(changes), exc)
                        return exc
                log.warning("store write failed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_WRITE_BACKOFF)

    def _publish(self, ch: JobChange) -> None:
        rt = self.jobs.get(ch.id)
        event = {
            "id": ch.id,
            "project": rt.rec.project if rt else self._ended_projects.pop(ch.id, ""),
            "state": ch.state,
            "reason": ch.reason or "",
            "at": ch.at,
        }
        if ch.state:
            self.metrics.transitions.labels(state=ch.state).inc()
        if ch.id in self._log_watch:
            self.logs_arrived(ch.id)  # a follower learns of the new state at once
        for q in list(self._subscribers):
            if q.full():
                # A consumer that stopped reading loses its stream rather than our memory.
                self._subscribers.discard(q)
                continue
            q.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """Return a queue fed with job state changes (for the event stream)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop feeding a queue."""
        self._subscribers.discard(q)

    @contextlib.contextmanager
    def watching_logs(self, job_id: int) -> Iterator[asyncio.Event]:
        """Yield an event set when output of ``job_id`` arrives (or its state changes).

        It is set on shutdown too. Enter it before reading the logs, so output posted in
        between is not missed.
        """
        ev, n = self._log_watch.get(job_id, (None, 0))
        if ev is None:
            ev = asyncio.Event()
            if self._closing:
                ev.set()
        self._log_watch[job_id] = (ev, n + 1)
        try:
            yield ev
        finally:
            current = self._log_watch.get(job_id)
            if current is not None and current[0] is ev:
                if current[1] <= 1:
                    del self._log_watch[job_id]
                else:
                    self._log_watch[job_id] = (ev, current[1] - 1)

    def logs_arrived(self, job_id: int) -> None:
        """Wake the follows of ``job_id`` (new output was stored)."""
        item = self._log_watch.pop(job_id, None)
        if item is not None:
            item[0].set()

    # Jobs -----------------------------------------------------------------------------
    def accept(self, records: Sequence[JobRecord]) -> None:
        """Queue jobs the store has committed."""
        for rec in records:
            self.jobs[rec.id] = JobRt(rec, "PENDING", rec.attempt)
        self._inbox.extend(records)
        self.metrics.submitted.inc(len(records))
        self._wake.set()

    def reason(self, job_id: int) -> str | None:
        """Return the scheduler's current reason for a waiting job (None if not waiting here)."""
        rt = self.jobs.get(job_id)
        if rt is None or rt.state != "PENDING":
            return None
        return self.cluster.reason(job_id)

    async def cancel(self, job_id: int) -> bool:
        """Cancel an unfinished job; False when it is not (or no longer) unfinished."""
        rt = self.jobs.get(job_id)
        if rt is None:
            return False
        now = time.time()
        self._stop_tasks(rt)
        if rt.state == "PENDING":
            self._inbox = [r for r in self._inbox if r.id != job_id]
            self.cluster.cancel(job_id)
        else:
            self.cluster.finish(job_id, int(now))
        self._unplace(rt)
        del self.jobs[job_id]
        self._ended_projects[job_id] = rt.rec.project
        self._drop_fence(rt)
        await self.persist(
            [
                JobChange(
                    job_id,
                    now,
                    state="CANCELLED",
                    reason="cancelled",
                    finished_at=now,
                    event="cancelled by user",
                )
            ]
        )
        self._wake.set()
        return True

    # Nodes ----------------------------------------------------------------------------
    async def register_node(self, body: dict[str, Any]) -> tuple[NodeRecord, bool]:
        """Add or update a node from its agent's registration; returns (node, created)."""
        now = time.time()
        name = str(body["name"])
        old = self.nodes.get(name)
        spec = {k: v for k, v in body.items() if k not in ("name", "labels")}
        spec.setdefault("gpus", [])
        models = {str(g.get("model", "")) for g in spec["gpus"]}
        if len(models) > 1:
            raise bad_request("all GPUs of a node must be one model", "gpus")
        indices = sorted(int(g["index"]) for g in spec["gpus"])
        if indices != list(range(len(indices))):
            raise bad_request("GPU indices must be 0..n-1, each once", "gpus")
        # A re-registering node keeps an operator's cordon or drain; a down node comes back.
        state = old.rec.state if old is not None and old.rec.state != "down" else "up"
        rec = NodeRecord(
            name,
            state,
            spec,
            dict(body.get("labels", {})),
            old.rec.registered_at if old else now,
            now,
        )
        await self.store.put_node(rec)
        if old is None:
            self.nodes[name] = NodeRt(rec, heartbeat=now, renewed=now)
        else:
            old.rec, old.heartbeat, old.renewed = rec, now, now
        self.cluster.upsert_node(live_node(rec), int(now))
        await self._requeue_lost(now)
        self._wake.set()
        return rec, old is None

    async def set_node_state(self, name: str, state: str) -> NodeRecord:
        """Cordon, drain or uncordon a node; draining requeues its jobs."""
        node = self.nodes[name]
        now = time.time()
        new_state = "up" if state == "up" and node.rec.state != "down" else state
        if node.rec.state == "down" and state != "down":
            new_state = "down"  # only the agent's heartbeat brings a node back
        node.rec = replace(node.rec, state=new_state)
        await self.store.put_node(node.rec)
        self.cluster.set_node_state(name, new_state)
        if state == "draining":
            changes: list[JobChange] = []
            for job_id in self.node_jobs(name):
                changes += self._requeue(self.jobs[job_id], now, f"node {name} drained")
            if changes:
                await self.persist(changes)
        self._wake.set()
        return node.rec

    async def heartbeat(self, name: str, body: dict[str, Any]) -> list[dict[str, int]]:
        """Record a heartbeat: reconcile the node's tasks and GPU health; return tasks to stop."""
        node = self.nodes[name]
        now = time.time()
        node.heartbeat = node.renewed = now
        if node.rec.state == "down":
            node.rec = replace(node.rec, state="up", heartbeat_at=now)
            self.cluster.set_node_state(name, "up")
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
            held = held_gpus(gpus)
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
            for rank, task in rt.tasks.items():
                if (
                    task.node == name
                    and task.state == "running"
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

            self._unfence(job_id, unlisted)
        # Stop asking for tasks the agent no longer has.
        node.cancel = {(j, a) for (j, a) in node.cancel if any(s[:2] == (j, a) for s in seen)}
        node.cancel_sent &= node.cancel
        if changes:
            await self.persist(changes)
            self._wake.set()
        return [{"job_id": j, "attempt": a} for j, a in sorted(node.cancel)]

    async def task_report(self, name: str, rep: dict[str, Any]) -> None:
        """Record that a task started or exited on node ``name``."""
        node = self.nodes[name]
        now = time.time()
        node.heartbeat = now
        changes = self._on_task(name, rep, now)
        if changes:
            await self.persist(changes)
            self._wake.set()

    async def assignments(self, name: str, wait: float) -> dict[str, Any]:
        """Work for node ``name``: at once if any, else after up to ``wait`` seconds."""
        node = self.nodes[name]
        node.heartbeat = time.time()
        # Cancels already handed out are repeated (heartbeat answers carry them too) but do
        # not make the poll answer at once again: the agent is already stopping those tasks.
        idle = not node.assign and node.cancel <= node.cancel_sent
        if idle and wait > 0 and not self._closing:
            node.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(node.wake.wait(), timeout=wait)
        node.cancel_sent |= node.cancel
        node.handed |= node.assign.keys()
        return {
            "assignments": list(node.assign.values()),
            "cancel": [{"job_id": j, "attempt": a} for j, a in sorted(node.cancel)],
        }

    # Quotas ---------------------------------------------------------------------------
    async def put_quota(self, rec: QuotaRecord) -> None:
        """Store a project's quota and apply it."""
        await self.store.put_quota(rec)
        self.quotas[rec.project] = rec
        self._apply_quotas(int(time.time()))

    async def delete_quota(self, project: str) -> bool:
        """Remove a project's quota."""
        found = await self.store.delete_quota(project)
        self.quotas.pop(project, None)
        self._apply_quotas(int(time.time()))
        return found

    async def put_pool(self, rec: PoolRecord) -> None:
        """Store a pool and apply it."""
        await self.store.put_pool(rec)
        self.pools[rec.name] = rec
        self._apply_quotas(int(time.time()))

    async def delete_pool(self, name: str) -> bool:
        """Remove a pool."""
        found = await self.store.delete_pool(name)
        self.pools.pop(name, None)
        self._apply_quotas(int(time.time()))
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
        """One scheduling cycle at the current wall time."""
        now = time.time()
        t = int(now)
        self.cluster.flush(t)  # one rebuild for all the nodes and quotas changed since
        changes: list[JobChange] = []
        # Timeouts are seconds long: one pass over the nodes per second is enough, however
        # often submissions wake the loop.
        if now - self._nodes_checked >= min(1.0, self.node_timeout / 4, self.lease / 4):
            self._nodes_checked = now
            changes += await self._nodes_down(now)
        inbox, self._inbox = self._inbox, []
        self.cluster.add_many([live_job(rec) for rec in inbox if rec.id in self.jobs])
        while self._deadlines and self._deadlines[0][0] < now:
            _, job_id, attempt = heapq.heappop(self._deadlines)
            over = self.jobs.get(job_id)
            if over is not None and over.state == "RUNNING" and over.attempt == attempt:
                limit = int(over.spec["max_runtime"])
                changes += self._end(over, now, "FAILED", None, f"exceeded max runtime {limit}s")
        changes += self._requeue_lost_changes(now)
        started_clock = time.perf_counter()
        started = self.cluster.cycle(t)
        self.metrics.cycle.observe(time.perf_counter() - started_clock)
        for job_id in self.cluster.preempted():
            victim = self.jobs.get(job_id)
            if victim is not None:
                self._stop_tasks(victim)
                changes += self._requeued(victim, now, "preempted by a higher-priority job")
        offers: list[JobRt] = []
        for job_id in started:
            rt = self.jobs[job_id]
            placement = self.cluster.placement(job_id)
            rt.attempt += 1
            rt.state = "SCHEDULED"
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
                    state="SCHEDULED",
                    reason="scheduled",
                    attempt=rt.attempt,
                    placement=_placement_json(placement),
                    event="placed on " + ", ".join(sorted({n for n, _ in placement})),
                )
            )
            offers.append(rt)
        self.metrics.pending.set(self.cluster.num_pending)
        self.metrics.running.set(self.cluster.num_running)
        if changes:
            await self.persist(changes)
        # Agents learn of a placement only once it is durable: a crash in between leaves a
        # job PENDING in the store with nothing running.
        resume = await self._resume_points(offers)
        for rt in offers:
            if rt.stopping:
                # Released by _unfence once the previous attempt's tasks are gone.
                rt.held, rt.held_resume = True, resume.get(rt.rec.id)
                continue
            for rank in rt.tasks:
                self._offer(rt, rank, resume.get(rt.rec.id))

    def lease_terms(self) -> dict[str, float]:
        """Return the lease an agent holds, as registration and heartbeat answers tell it."""
        return {"seconds": self.lease, "grace": self.grace}

    async def _nodes_down(self, now: float) -> list[JobChange]:
        changes: list[JobChange] = []
        expiry = self.lease + self.grace
        for name, node in self.nodes.items():
            expired = now - node.renewed > expiry
            if node.rec.state != "down" and (expired or now - node.heartbeat > self.node_timeout):
                log.warning("node %s missed its heartbeats: down", name)
                node.rec = replace(node.rec, state="down")
                await self.store.put_node(node.rec)
                self.cluster.set_node_state(name, "down")
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
                    self._unfence(job_id, on_node)
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
        node.assign[(rt.rec.id, rt.attempt, rank)] = {
            "job_id": rt.rec.id,
            "attempt": rt.attempt,
            "rank": rank,
            "world_size": len(rt.tasks),
            "local_rank": local.index(rank),
            "local_world_size": len(local),
            "master_addr": _address(master.rec) if master else "127.0.0.1",
            "master_port": MASTER_PORT_BASE + (rt.rec.id * 7 + rt.attempt) % 20000,
            "command": spec["command"],
            "env": spec.get("env", {}),
            "workdir": spec.get("workdir"),
            # Who submitted it and what it asked for: the agent picks the task's Unix user
            # from project and user, and sets its cgroup limits from the resources.
            "project": rt.rec.project,
            "user": rt.rec.user,
            "resources": {
                "cpu_milli": int(spec["tasks"]["resources"]["cpu_milli"]),
                "memory_mib": int(spec["tasks"]["resources"]["memory_mib"]),
            },
            "gpus": task.gpus,
            "hosts": [
                {"node": n, "address": _address(self.nodes[n].rec), "slots": s}
                for n, s in hosts.items()
                if n in self.nodes
            ],
            "resume_from": resume,
            "token": self.job_token(rt.rec, int(spec["max_runtime"])),
            "max_runtime": int(spec["max_runtime"]),
            "server": self.server_url,
        }
        node.wake.set()

    # Task reports ---------------------------------------------------------------------
    def _on_task(self, name: str, rep: dict[str, Any], now: float) -> list[JobChange]:
        job_id, attempt, rank = int(rep["job_id"]), int(rep["attempt"]), int(rep["rank"])
        node = self.nodes[name]
        node.assign.pop((job_id, attempt, rank), None)
        node.handed.discard((job_id, attempt, rank))
        if rep["state"] == "exited":
            self._unfence(job_id, lambda key, _since: key == (name, attempt, rank))
        rt = self.jobs.get(job_id)
        task = rt.tasks.get(rank) if rt is not None and rt.attempt == attempt else None
        if rt is None or task is None or task.node != name:
            if rep["state"] == "running":
                node.cancel.add((job_id, attempt))  # a leftover of an earlier attempt
                node.wake.set()
            return []
        if task.state == "exited":
            return []
        if rep["state"] == "running":
            if task.state == "assigned":
                task.state, task.since = "running", now
            if rt.state == "SCHEDULED" and all(t.state != "assigned" for t in rt.tasks.values()):
                rt.state, rt.started_at = "RUNNING", now
                self._track_deadline(rt)
                self.metrics.schedule_to_run.observe(max(0.0, now - rt.rec.submitted_at))
                return [
                    JobChange(
                        job_id,
                        now,
                        state="RUNNING",
                        reason="running",
                        started_at=now,
                        event=f"all {len(rt.tasks)} task(s) running",
                    )
                ]
            return []
        code = rep.get("exit_code")
        task.state, task.exit_code = "exited", None if code is None else int(code)
        if rep.get("reason") in AGENT_STOPS:
            # Not the job's fault: its agent stopped (or crashed and was restarted).
            return self._requeue(rt, now, f"task {rank} stopped: {rep['reason']}")
        if task.exit_code != 0:
            why = str(rep.get("reason") or f"exit code {task.exit_code}")
            if rt.spec.get("on_failure") == "restart" and rt.failures < int(
                rt.spec.get("max_restarts", 0)
            ):
                rt.failures += 1
                limit = rt.spec.get("max_restarts", 0)
                return self._requeue(
                    rt, now, f"task {rank} failed ({why}); restart {rt.failures}/{limit}"
                )
            return self._end(rt, now, "FAILED", task.exit_code, f"task {rank} failed ({why})")
        if all(t.state == "exited" and t.exit_code == 0 for t in rt.tasks.values()):
            return self._end(rt, now, "SUCCEEDED", 0, "all tasks exited 0")
        return []

    # Transitions ----------------------------------------------------------------------
    def _stop_tasks(self, rt: JobRt) -> None:
        now = time.time()
        for rank, task in rt.tasks.items():
            node = self.nodes.get(task.node)
            if node is None:
                continue
            key = (rt.rec.id, rt.attempt, rank)
            node.assign.pop(key, None)
            if task.state != "exited":
                node.cancel.add((rt.rec.id, rt.attempt))
                node.wake.set()
            # Fenced: the job's next attempt waits until this task is known to be gone.
            if task.state == "running" or (task.state == "assigned" and key in node.handed):
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

    def _unfence(self, job_id: int, gone: Callable[[tuple[str, int, int], float], bool]) -> None:
        """Forget the stopping tasks of a job for which ``gone(key, since)`` holds.

        A placement held for them is handed out once none is left.
        """
        rt = self.jobs.get(job_id)
        if rt is None or not rt.stopping:
            return
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
        if not rt.stopping and rt.held:
            rt.held = False
            for rank in rt.tasks:
                self._offer(rt, rank, rt.held_resume)

    def _end(
        self, rt: JobRt, now: float, state: str, exit_code: int | None, why: str
    ) -> list[JobChange]:
        self._stop_tasks(rt)
        self.cluster.finish(rt.rec.id, int(now))
        self._unplace(rt)
        self.jobs.pop(rt.rec.id, None)
        self._ended_projects[rt.rec.id] = rt.rec.project
        self._drop_fence(rt)
        self._wake.set()
        return [
            JobChange(
                rt.rec.id,
                now,
                state=state,
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
        self._unplace(rt)
        rt.state, rt.started_at = "PENDING", None
        return self._requeue_changes(rt, now, why)

    @staticmethod
    def _requeue_changes(rt: JobRt, now: float, why: str) -> list[JobChange]:
        return [
            JobChange(rt.rec.id, now, state="PREEMPTED", reason=why, event=why),
            JobChange(
                rt.rec.id,
                now,
                state="PENDING",
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
                self.cluster.add(live_job(rt.rec))
                changes += self._requeued(rt, now, "placement lost when the cluster changed")
        self.cluster.lost = []
        return changes

    async def _requeue_lost(self, now: float) -> None:
        changes = self._requeue_lost_changes(now)
        if changes:
            await self.persist(changes)

    # Views ----------------------------------------------------------------------------
    def cluster_summary(self) -> dict[str, Any]:
        """Return capacity, allocation, fragmentation and counts (and refresh the gauges)."""
        states = {"up": 0, "down": 0, "cordoned": 0, "draining": 0}
        cap = [0, 0, 0]
        alloc = list(self.cluster.totals())
        gpus = unhealthy = mig = 0
        for node in self.nodes.values():
            states[node.rec.state] = states.get(node.rec.state, 0) + 1
            devices = node.rec.spec.get("gpus", [])
            gpus += len(devices)
            unhealthy += sum(1 for g in devices if g.get("healthy") is False)
            mig += sum(1 for g in devices if g.get("mig_mode") is True)
            if node.rec.state != "down":
                cap[0] += int(node.rec.spec.get("cpu_milli", 0))
                cap[1] += int(node.rec.spec.get("memory_mib", 0))
                cap[2] += (len(devices) - len(held_gpus(devices))) * 1000
        names = ("cpu_milli", "memory_mib", "gpu_milli")
        m = self.metrics
        for state, count in states.items():
            m.nodes.labels(state=state).set(count)
        for i, res in enumerate(names):
            m.capacity.labels(resource=res).set(cap[i])
            m.allocated.labels(resource=res).set(alloc[i])
        m.pending.set(self.cluster.num_pending)
        m.running.set(self.cluster.num_running)
        return {
            "nodes": {"total": len(self.nodes), **states},
            "capacity": dict(zip(names, cap, strict=True)),
            "allocated": dict(zip(names, alloc, strict=True)),
            "gpus": {"total": gpus, "unhealthy": unhealthy, "mig_mode": mig},
            "fragmentation": {
                "idle_gpu_share_milli": self.cluster.fragmentation(),
                "gpu_allocation_ratio": alloc[2] / cap[2] if cap[2] else 0.0,
            },
            "jobs": {"pending": self.cluster.num_pending, "running": self.cluster.num_running},
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
