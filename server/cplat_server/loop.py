"""The service's side of the controller: metrics, event streams, log follows, HTTP errors.

The job state machine, the requeue and restart policy, deadlines and leases live in
:mod:`cplat.live.controller`, free of HTTP and of any clock but the one it is given. This
module adds what only a running service needs: Prometheus metrics for every change, cycle and
write; the queues behind ``GET /v1/jobs/stream``; the wake-ups of log follows; and 400
answers for bad node registrations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from cplat.errors import InputError
from cplat.live.clock import Clock
from cplat.live.controller import Controller as LiveController
from cplat.live.controller import JobTokenFactory
from cplat.runtime.live import LiveCluster
from cplat.store.base import JobChange, NodeRecord, Store
from cplat_server.errors import bad_request
from cplat_server.metrics import Metrics

__all__ = ["Controller", "ServiceObserver"]


class ServiceObserver:
    """Feeds the metrics, the job event streams and the log follows from the controller.

    Parameters
    ----------
    metrics
        The service's Prometheus metrics.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        #: In-process followers that must see every change (the job -> run linker); unlike a
        #: stream's queue they are never dropped, so each must take an event without waiting.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        #: Log follows waiting for a job's output: job -> (event, followers).
        self.log_watch: dict[int, tuple[asyncio.Event, int]] = {}
        self.closing = False

    def submitted(self, count: int) -> None:
        """Count accepted jobs."""
        self.metrics.submitted.inc(count)

    def changed(self, change: JobChange, project: str) -> None:
        """Count the transition, wake the job's log follows and feed the event streams."""
        assert change.state is not None
        self.metrics.transitions.labels(state=change.state).inc()
        if change.id in self.log_watch:
            self.logs_arrived(change.id)  # a follower learns of the new state at once
        event = {
            "id": change.id,
            "project": project,
            "state": change.state,
            "reason": change.reason or "",
            "at": change.at,
        }
        for listener in self.listeners:
            listener(event)
        for q in list(self.subscribers):
            if q.full():
                # A consumer that stopped reading loses its stream rather than our memory.
                self.subscribers.discard(q)
                continue
            q.put_nowait(event)

    def cycle(self, seconds: float, pending: int, running: int) -> None:
        """Record a cycle's duration and the queue sizes after it."""
        self.metrics.cycle.observe(seconds)
        self.metrics.pending.set(pending)
        self.metrics.running.set(running)

    def store_write(self, seconds: float) -> None:
        """Record a grouped write's duration."""
        self.metrics.store_write.observe(seconds)

    def running_after(self, seconds: float) -> None:
        """Record the time from a submission to all of its tasks running."""
        self.metrics.schedule_to_run.observe(seconds)

    def logs_arrived(self, job_id: int) -> None:
        """Wake the follows of ``job_id``."""
        item = self.log_watch.pop(job_id, None)
        if item is not None:
            item[0].set()

    def close(self) -> None:
        """End every event stream and log follow (the server is stopping)."""
        self.closing = True
        for q in list(self.subscribers):
            if not q.full():
                q.put_nowait({})  # an empty event ends a stream
        for ev, _ in self.log_watch.values():
            ev.set()


class Controller(LiveController):
    """The live controller as the service runs it (see :mod:`cplat.live.controller`).

    Parameters
    ----------
    store, cluster, job_token, node_timeout, tick, server_url, lease, grace, clock
        As for :class:`cplat.live.controller.Controller`.
    metrics
        The service's Prometheus metrics.
    """

    def __init__(
        self,
        store: Store,
        cluster: LiveCluster,
        metrics: Metrics,
        job_token: JobTokenFactory,
        node_timeout: float = 30.0,
        tick: float = 1.0,
        server_url: str = "",
        lease: float = 20.0,
        grace: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.metrics = metrics
        self.hub = ServiceObserver(metrics)
        super().__init__(
            store,
            cluster,
            job_token,
            node_timeout=node_timeout,
            tick=tick,
            server_url=server_url,
            lease=lease,
            grace=grace,
            clock=clock,
            observer=self.hub,
        )

    def begin_shutdown(self) -> None:
        """Answer long polls and end event streams now, so the server can close promptly."""
        super().begin_shutdown()
        self.hub.close()

    async def register_node(self, body: dict[str, Any]) -> tuple[NodeRecord, bool]:
        """As the live controller's, with a 400 answer for a bad registration."""
        try:
            return await super().register_node(body)
        except InputError as exc:
            raise bad_request(exc.message, exc.field) from None

    # Event streams and log follows ----------------------------------------------------
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """Return a queue fed with job state changes (for the event stream)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self.hub.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop feeding a queue."""
        self.hub.subscribers.discard(q)

    @contextlib.contextmanager
    def watching_logs(self, job_id: int) -> Iterator[asyncio.Event]:
        """Yield an event set when output of ``job_id`` arrives (or its state changes).

        It is set on shutdown too. Enter it before reading the logs, so output posted in
        between is not missed.
        """
        watch = self.hub.log_watch
        ev, n = watch.get(job_id, (None, 0))
        if ev is None:
            ev = asyncio.Event()
            if self.hub.closing:
                ev.set()
        watch[job_id] = (ev, n + 1)
        try:
            yield ev
        finally:
            current = watch.get(job_id)
            if current is not None and current[0] is ev:
                if current[1] <= 1:
                    del watch[job_id]
                else:
                    watch[job_id] = (ev, current[1] - 1)

    def logs_arrived(self, job_id: int) -> None:
        """Wake the follows of ``job_id`` (new output was stored)."""
        self.hub.logs_arrived(job_id)

    # Views ----------------------------------------------------------------------------
    def cluster_summary(self) -> dict[str, Any]:
        """Return the cluster's summary and refresh the gauges from it."""
        out = super().cluster_summary()
        m = self.metrics
        for state, count in out["nodes"].items():
            if state != "total":
                m.nodes.labels(state=state).set(count)
        for res, value in out["capacity"].items():
            m.capacity.labels(resource=res).set(value)
        for res, value in out["allocated"].items():
            m.allocated.labels(resource=res).set(value)
        m.pending.set(out["jobs"]["pending"])
        m.running.set(out["jobs"]["running"])
        return out
