"""The node agent: registers this machine, runs the tasks placed on it, reports what they do.

After :func:`~cplat.runtime.discovery.discover` and ``POST /v1/nodes`` the agent runs four
loops side by side: heartbeats (every task it knows and the GPUs' health), a long poll for
assignments and cancellations, delivery of task state changes, and shipping of task output.
The server may restart at any moment: every loop outlives connection errors and 5xx answers
with capped backoff, and a 404 for the node (a server that lost it) makes the agent register
again. Only a rejected registration or a rejected token stops the agent, since nothing it
does afterwards could succeed.

A task report is kept, in memory and in the state file, until a heartbeat answer
acknowledges it, so a restarted agent or server still hears every exit. See docs/service.md
for the protocol.

The node's lease (see ``cplat_server.loop``): registration and heartbeat answers name its
length and grace, and renew it from the moment the request was sent. A fifth loop, the lease
watchdog, stops every task (SIGTERM, SIGKILL after the grace) once the lease has run out, and
no task starts until a heartbeat renews it; the stopped tasks are reported ``lease expired``.
A tether process (:mod:`cplat.runtime.tether`) stops the tasks if the agent itself dies.

Devices: an assignment's ``gpus`` are device slots of the registration
(:func:`~cplat.runtime.discovery.device_slots`): GPUs, or MIG instances of MIG-mode GPUs. The
agent maps them back to the physical GPUs (for the task's device limits) and to what
``CUDA_VISIBLE_DEVICES`` names (an index, or a MIG instance's UUID).

Preemption: a cancel entry may carry its own ``grace`` (the scheduler's grace period), the
seconds between SIGTERM and SIGKILL. An entry with a ``rank`` stops that rank of the attempt
only (an elastic job shrank). When rank 0 of an attempt ends having written to its
``CPLAT_CHECKPOINT_DIR``, the agent records that folder as a checkpoint of the job (``POST
/v1/jobs/{id}/checkpoints``, step = the attempt) before it reports the exit, so the requeued
attempt gets it as ``CPLAT_RESUME_FROM``. A checkpoint cut short by the SIGKILL is recorded
as incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from cplat.client import tls_context
from cplat.errors import InputError
from cplat.runtime.discovery import DeviceSlot, GpuMonitor, device_slots, discover
from cplat.runtime.isolation import Isolation, IsolationError, IsolationSettings
from cplat.runtime.launch import (
    OOM_REASON,
    Launcher,
    LaunchError,
    TaskKey,
    TaskProcess,
    TaskRecord,
)
from cplat.runtime.tether import Tether

__all__ = ["Agent", "AgentAuthError", "AgentError", "run_agent"]

log = logging.getLogger("cplat.agent")

#: Cancellations remembered so a late assignment of a cancelled attempt is not started.
CANCEL_MEMORY = 4096
#: Task keys remembered after they ended, so a stale assignment never runs a task twice.
DONE_MEMORY = 65536
#: Shortest time between polls that bring nothing new.
MIN_POLL_PERIOD = 0.5
#: The agent gives up its lease this much before it runs out (at most this share of it): the
#: server requeues ``lease + grace`` after the renewal, and the SIGKILL must come first even
#: when this agent's event loop runs late.
LEASE_MARGIN, LEASE_MARGIN_SHARE = 1.0, 0.1
#: Exit reason of the tasks stopped because the lease ran out (requeued by the server).
LEASE_EXPIRED = "lease expired"
#: Longest grace a cancel entry may ask for (seconds).
MAX_CANCEL_GRACE = 3600.0
#: How long recording a checkpoint may hold up the exit report (seconds).
CHECKPOINT_REPORT_TIMEOUT = 10.0


class AgentError(Exception):
    """A condition the agent cannot recover from (e.g. its registration was rejected)."""


class AgentAuthError(AgentError):
    """The server refused the agent's token (401 or 403)."""


class _UnreachableError(Exception):
    """The server did not answer, or answered in a way worth retrying (5xx, 408, 429)."""


class _Backoff:
    """Exponential delays with jitter, capped; jitter keeps a restarted server's agents apart."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial


#: ``post(job_id, chunks)``: True when stored, False when refused for good; raises
#: ``_UnreachableError`` when worth retrying.
_PostLogs = Callable[[int, list[dict[str, Any]]], Awaitable[bool]]


class _LogShipper:
    """Batches task output into ``POST /v1/jobs/{id}/logs`` calls.

    Output is sent when ``flush_interval`` has passed since the first unsent line, or as soon
    as ``flush_bytes`` are waiting. While the server is away output piles up to ``cap`` bytes;
    beyond that the oldest is dropped (the end of a log says most about a failure) and the
    job's log says how much went missing.
    """

    def __init__(
        self, post: _PostLogs, flush_interval: float, flush_bytes: int, cap: int, backoff_max: float
    ) -> None:
        self._post = post
        self._interval = flush_interval
        self._max = flush_bytes
        self._cap = cap
        self._backoff_max = backoff_max
        #: (job_id, chunk, size in bytes), oldest first.
        self._chunks: deque[tuple[int, dict[str, Any], int]] = deque()
        self._size = 0
        self._dropped: dict[TaskKey, int] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def add(self, key: TaskKey, stream: str, data: str) -> None:
        size = len(data.encode())
        if size > self._max:
            # No request may exceed the batch size; four bytes per character is UTF-8's most.
            step = max(1, self._max // 4)
            for i in range(0, len(data), step):
                self.add(key, stream, data[i : i + step])
            return
        last = self._chunks[-1] if self._chunks else None
        if (
            last is not None
            and last[0] == key.job_id
            and last[1]["attempt"] == key.attempt
            and last[1]["rank"] == key.rank
            and last[1]["stream"] == stream
            and last[2] + size <= self._max
        ):
            last[1]["data"] += data
            self._chunks[-1] = (last[0], last[1], last[2] + size)
        else:
            chunk = {"attempt": key.attempt, "rank": key.rank, "stream": stream, "data": data}
            self._chunks.append((key.job_id, chunk, size))
        self._size += size
        while self._size > self._cap and len(self._chunks) > 1:
            job, old, n = self._chunks.popleft()
            self._size -= n
            lost = TaskKey(job, old["attempt"], old["rank"])
            self._dropped[lost] = self._dropped.get(lost, 0) + n
        self._wake.set()
        if self._size >= self._max:
            self._full.set()

    async def run(self) -> None:
        backoff = _Backoff(0.2, self._backoff_max)
        while True:
            await self._wake.wait()
            try:
                await asyncio.wait_for(self._full.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            if await self.flush():
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next())

    async def flush(self, job_id: int | None = None) -> bool:
        """Send what is waiting (of one job, or all); False when the server is unreachable."""
        async with self._lock:
            self._full.clear()
            jobs = dict.fromkeys(c[0] for c in self._chunks if job_id in (None, c[0]))
            for job in jobs:
                items = [*self._dropped_notes(job), *(c for c in self._chunks if c[0] == job)]
                self._chunks = deque(c for c in self._chunks if c[0] != job)
                self._size -= sum(c[2] for c in items)
                start = 0
                try:
                    while start < len(items):
                        end, size = start, 0
                        while end < len(items) and (
                            end == start or size + items[end][2] <= self._max
                        ):
                            size += items[end][2]
                            end += 1
                        await self._send(job, [c[1] for c in items[start:end]])
                        start = end
                except _UnreachableError as err:
                    log.debug("log shipping deferred: %s", err)
                    # Put back what was not stored ahead of anything newer, so order holds.
                    rest = items[start:]
                    self._chunks.extendleft(reversed(rest))
                    self._size += sum(c[2] for c in rest)
                    return False
            if not self._chunks:
                self._wake.clear()
            return True

    def _dropped_notes(self, job: int) -> list[tuple[int, dict[str, Any], int]]:
        notes = []
        for key in [k for k in self._dropped if k.job_id == job]:
            n = self._dropped.pop(key)
            text = f"[cplat agent: {n} bytes of output dropped while the server was away]\n"
            chunk = {"attempt": key.attempt, "rank": key.rank, "stream": "stderr", "data": text}
            notes.append((job, chunk, len(text)))
        return notes

    async def _send(self, job: int, batch: list[dict[str, Any]]) -> None:
        if not await self._post(job, batch):
            log.warning("server refused %d log chunks of job %d; dropped", len(batch), job)


class Agent:
    """The node agent (see the module docstring).

    Parameters
    ----------
    server : str
        Base URL of the API, e.g. ``http://cplat:8080``.
    token : str
        A cluster-admin token, sent as ``Authorization: Bearer``.
    name : str, optional
        Node name (default: the hostname).
    work_dir : Path
        The agent's state file (the directory is kept at mode 0700; task folders live
        elsewhere unless tasks run as the agent's own user, see ``isolation``).
    heartbeat_interval : float
        Seconds between heartbeats.
    nvml : module-like, optional
        NVML binding (default ``pynvml``); tests pass a fake.
    poll_wait : float
        The ``wait`` of the assignments long poll, in seconds.
    stop_grace : float
        Seconds a stopped task gets between SIGTERM and SIGKILL.
    shutdown_timeout : float
        On stop, how long to keep trying to deliver reports and output before leaving the
        rest in the state file for the next start.
    backoff_max : float
        Cap of the retry delay while the server is unreachable.
    request_timeout : float
        Timeout of every request but the long poll.
    address : str, optional
        Address to register instead of the discovered one.
    labels : Mapping, optional
        Node labels to register.
    rack, spine : int, optional
        Topology position to register (left out of the registration when None).
    log_flush_interval : float
        Seconds task output may wait before it is sent.
    log_flush_bytes : int
        Output size that is sent at once, and the largest log request.
    log_buffer_bytes : int
        Output kept while the server is unreachable before the oldest is dropped.
    straggler_grace : float
        See :class:`~cplat.runtime.launch.TaskProcess`.
    base_env : Mapping, optional
        Variables every task starts with (default: none; the agent's own environment
        never reaches a task).
    root : Path
        Filesystem root for discovery (tests point it at a fake tree).
    tls : ssl.SSLContext or aiohttp.Fingerprint, optional
        How to verify an ``https://`` server: a context (e.g. with a CA bundle), or the
        pinned SHA-256 of its certificate; default: the system's trust store.
    tether : bool
        Start a tether process that stops the tasks if this agent dies (see
        :mod:`cplat.runtime.tether`).
    isolation : IsolationSettings, optional
        Task users, task root and limits (see :mod:`cplat.runtime.isolation`).
    task_user : str, optional
        Overrides ``isolation.task_user``: ``"dynamic"``, ``"self"`` or an account.
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        name: str | None = None,
        work_dir: Path,
        heartbeat_interval: float = 2.0,
        nvml: Any = None,
        poll_wait: float = 25.0,
        stop_grace: float = 10.0,
        shutdown_timeout: float = 10.0,
        backoff_max: float = 5.0,
        request_timeout: float = 10.0,
        address: str | None = None,
        labels: Mapping[str, str] | None = None,
        rack: int | None = None,
        spine: int | None = None,
        log_flush_interval: float = 0.2,
        log_flush_bytes: int = 64 * 1024,
        log_buffer_bytes: int = 32 * 1024 * 1024,
        straggler_grace: float = 2.0,
        base_env: Mapping[str, str] | None = None,
        root: Path = Path("/"),
        tls: ssl.SSLContext | aiohttp.Fingerprint | None = None,
        tether: bool = True,
        isolation: IsolationSettings | None = None,
        task_user: str | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.name = name
        self.work_dir = Path(work_dir)
        self.heartbeat_interval = heartbeat_interval
        self.poll_wait = poll_wait
        self.stop_grace = stop_grace
        self.shutdown_timeout = shutdown_timeout
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self._address = address
        self._labels = dict(labels or {})
        self._rack = rack
        self._spine = spine
        self._root = root
        self._log_options = (log_flush_interval, log_flush_bytes, log_buffer_bytes)
        self.gpus = GpuMonitor(nvml, root=root)
        settings = isolation or IsolationSettings()
        if task_user is not None:
            settings = replace(settings, task_user=task_user)
        self.launcher = Launcher(
            self.work_dir,
            self.server,
            self._on_output,
            base_env=base_env,
            straggler_grace=straggler_grace,
            isolation=Isolation(settings, self.work_dir),
            checkpoint_root=checkpoint_root,
        )
        #: The device slots of the last registration (what an assignment's ``gpus`` index).
        self.slots: list[DeviceSlot] = []
        #: The body of the last successful registration.
        self.registration: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._logs: _LogShipper | None = None
        self._reports: asyncio.Queue[dict[str, Any]] | None = None
        self._stop_event: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._reg_lock: asyncio.Lock | None = None
        self._reg_gen = 0
        self._stop_requested = False
        self._stopping = False
        self._started = False
        self._reachable = True
        self._done: OrderedDict[TaskKey, None] = OrderedDict()
        self._cancelled: OrderedDict[tuple[int, int | None], None] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[bool] | None = None
        self._tls = tls
        self._use_tether = tether
        self._tether: Tether | None = None
        #: The lease: its length and grace as the server last told them (None: the server
        #: grants none), and when the request that last renewed it was sent (monotonic).
        self.lease: float | None = None
        self.lease_grace = 0.0
        self._renewed = 0.0
        self._lease_changed: asyncio.Event | None = None
        self._lease_lost = False
        self._lease_stopped: set[TaskKey] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; then stop the tasks and report them.

        Raises
        ------
        AgentError
            When the server rejects the registration (4xx) or the token.
        """
        if self._started:
            raise RuntimeError("Agent.run() can be called once")
        self._started = True
        self._stop_event = asyncio.Event()
        self._finished = asyncio.Event()
        self._reg_lock = asyncio.Lock()
        self._lease_changed = asyncio.Event()
        self._reports = asyncio.Queue()
        flush_interval, flush_bytes, cap = self._log_options
        self._logs = _LogShipper(
            self._post_logs, flush_interval, flush_bytes, cap, self.backoff_max
        )
        if self._stop_requested:
            self._stop_event.set()
        try:
            await self._run()
        finally:
            self._finished.set()

    def request_stop(self, *, force: bool = False) -> None:
        """Ask :meth:`run` to finish; ``force`` SIGKILLs the tasks instead of a grace period."""
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()
        if force:
            self.stop_grace = 0.0
            for proc in list(self.launcher.processes.values()):
                proc.kill()

    async def stop(self) -> None:
        """Stop the agent: stop its tasks with a grace period, report them, and return."""
        self.request_stop()
        if self._finished is not None:
            await self._finished.wait()

    async def _run(self) -> None:
        assert self._stop_event is not None and self._reports is not None
        if self.name is None:
            self.name = socket.gethostname()
        try:
            await asyncio.to_thread(self.launcher.isolation.start, self.name)
        except IsolationError as err:
            raise AgentError(f"cannot isolate tasks: {err}") from err
        await asyncio.to_thread(self.gpus.open)
        self.launcher.gpu_minors = self.gpus.minor_numbers()
        for rec in self.launcher.recover():
            self._remember_done(rec.key)
            self._reports.put_nowait(rec.report())
        headers = {"Authorization": f"Bearer {self.token}"}
        loops: list[asyncio.Task[None]] = []
        fatal: BaseException | None = None
        cancelled = False
        if self._use_tether:
            self._tether = Tether.start(self.stop_grace, self.work_dir / "tether.log")
        connector = aiohttp.TCPConnector(ssl=True if self._tls is None else self._tls)
        try:
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                self._session = session
                try:
                    if await self._until_stopped(self._register()):
                        loops = [
                            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                            asyncio.create_task(self._poll_loop(), name="poll"),
                            asyncio.create_task(self._report_loop(), name="reports"),
                            asyncio.create_task(self._log_loop(), name="logs"),
                            asyncio.create_task(self._lease_loop(), name="lease"),
                        ]
                        stop = asyncio.create_task(self._stop_event.wait())
                        done, _ = await asyncio.wait(
                            [*loops, stop], return_when=asyncio.FIRST_COMPLETED
                        )
                        stop.cancel()
                        for task in done:
                            if task is not stop and not task.cancelled():
                                fatal = task.exception()
                except AgentError as err:
                    fatal = err
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    await self._shutdown(loops, fatal, drain=not cancelled)
        finally:
            self._session = None
            await asyncio.to_thread(self.gpus.close)
            await asyncio.to_thread(self.launcher.close)
            if self._tether is not None:
                await asyncio.to_thread(self._tether.close)
        if fatal is not None:
            raise fatal

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` unless a stop comes first; True when it finished."""
        assert self._stop_event is not None
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self._stop_event.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    async def _shutdown(
        self, loops: list[asyncio.Task[None]], fatal: BaseException | None, *, drain: bool
    ) -> None:
        """Stop the tasks; unless told not to, deliver what is pending, within a time limit.

        A cancelled agent still stops its tasks (nothing else would), but leaves delivery to
        its next start: the state file keeps every exit.
        """
        self._stopping = True
        poll = [t for t in loops if t.get_name() == "poll"]
        for task in poll:
            task.cancel()
        await asyncio.gather(*poll, return_exceptions=True)
        if self._starting is not None:
            # A launch the cancelled poll was making finishes, so its task is stopped too.
            await asyncio.gather(self._starting, return_exceptions=True)
        procs = list(self.launcher.processes.values())
        if procs:
            log.info("stopping %d tasks (grace %.1fs)", len(procs), self.stop_grace)
        await asyncio.gather(*(p.stop(self.stop_grace) for p in procs))
        # Exit watchers record the ends and queue the reports.
        await asyncio.gather(*self._background, return_exceptions=True)
        if loops and drain and not isinstance(fatal, AgentAuthError):
            try:
                await asyncio.wait_for(self._drain(), self.shutdown_timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "server not reached in time: %d task records left in %s for the next start",
                    len(self.launcher.records),
                    self.launcher.state_path,
                )
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _drain(self) -> None:
        assert self._reports is not None and self._logs is not None
        await self._reports.join()
        backoff = _Backoff(0.1, self.backoff_max)
        while not await self._logs.flush():
            await asyncio.sleep(backoff.next())
        while True:
            try:
                if await self._heartbeat_once():
                    return
            except _UnreachableError:
                pass
            await asyncio.sleep(backoff.next())

    # -- HTTP ----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return (status, JSON body or None).

        Raises ``_UnreachableError`` for connection errors and retryable statuses, and
        :class:`AgentAuthError` for 401 and 403.
        """
        assert self._session is not None
        limit = aiohttp.ClientTimeout(total=timeout or self.request_timeout)
        try:
            async with self._session.request(
                method, self.server + path, json=json, params=params, timeout=limit
            ) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            why = f"{method} {path}: {str(err) or type(err).__name__}"
            self._set_reachable(False, why)
            raise _UnreachableError(why) from err
        if status >= 500 or status in (408, 429):
            self._set_reachable(False, f"{method} {path}: HTTP {status}")
            raise _UnreachableError(f"{method} {path}: HTTP {status}")
        self._set_reachable(True, "")
        if status in (401, 403):
            raise AgentAuthError(
                f"the server refused the agent's token on {method} {path} "
                f"(HTTP {status}: {_message(body)}); agents need a valid cluster-admin token"
            )
        return status, body

    def _set_reachable(self, ok: bool, why: str) -> None:
        # One line per outage, not one per retry of every loop.
        if ok and not self._reachable:
            log.info("server %s is reachable again", self.server)
        elif not ok and self._reachable:
            log.warning("server %s unreachable (%s); retrying", self.server, why)
        self._reachable = ok

    def _node_path(self, suffix: str = "") -> str:
        assert self.name is not None
        return f"/v1/nodes/{quote(self.name, safe='')}{suffix}"

    # -- registration --------------------------------------------------------------------

    def _registration_body(self) -> dict[str, Any]:
        body = discover(
            self.name, monitor=self.gpus, route_to=urlsplit(self.server).hostname, root=self._root
        )
        if self._address:
            body["address"] = self._address
        body["labels"] = dict(self._labels)
        body["isolation"] = self.launcher.isolation.describe()
        if self._rack is not None:
            body["rack"] = self._rack
        if self._spine is not None:
            body["spine"] = self._spine
        return body

    async def _register(self) -> None:
        """Register until the server accepts (retrying while it is away); 4xx is fatal."""
        backoff = _Backoff(0.2, self.backoff_max)
        while True:
            body = await asyncio.to_thread(self._registration_body)
            self.name = str(body["name"])
            sent = time.monotonic()
            try:
                status, answer = await self._request("POST", "/v1/nodes", json=body)
            except _UnreachableError:
                await asyncio.sleep(backoff.next())
                continue
            if 200 <= status < 300:
                self._reg_gen += 1
                self.registration = body
                self.slots = device_slots(body["gpus"])
                self._renew(sent, answer)
                log.info(
                    "registered node %s: %d mCPU, %d MiB, %d GPUs",
                    self.name,
                    body["cpu_milli"],
                    body["memory_mib"],
                    len(body["gpus"]),
                )
                return
            raise AgentError(
                f"the server rejected the registration of node {self.name!r} "
                f"(HTTP {status}: {_message(answer)})"
            )

    async def _reregister(self, generation: int) -> None:
        """Register again after a 404 for the node, once however many loops saw it."""
        assert self._reg_lock is not None
        async with self._reg_lock:
            if self._reg_gen != generation:
                return
            log.warning(
                "the server does not know node %s (did it restart?); registering", self.name
            )
            await self._register()

    # -- heartbeats ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._heartbeat_once()
            except _UnreachableError:
                pass
            except AgentError:
                raise
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.heartbeat_interval)

    async def _heartbeat_once(self) -> bool:
        """Send one heartbeat; True when the server acknowledged it."""
        records = list(self.launcher.records.values())
        exited = [r.key for r in records if r.state == "exited"]
        body = {
            "tasks": [r.report() for r in records],
            "gpus": await asyncio.to_thread(self.gpus.health),
        }
        generation = self._reg_gen
        sent = time.monotonic()
        status, answer = await self._request("POST", self._node_path("/heartbeat"), json=body)
        if status == 404:
            await self._reregister(generation)
            return False
        if status >= 300:
            log.warning("heartbeat refused: HTTP %d: %s", status, _message(answer))
            return False
        # The answer acknowledges every exit it carried (and only those: a task that ended
        # while it was in flight is reported again).
        self.launcher.forget(exited)
        self._renew(sent, answer)
        if isinstance(answer, dict):
            self._apply_cancel(answer.get("cancel"))
        return True

    # -- the lease -------------------------------------------------------------------------

    def _renew(self, sent: float, answer: Any) -> None:
        """Take a registration or heartbeat answer sent at ``sent`` as a lease renewal."""
        terms = answer.get("lease") if isinstance(answer, dict) else None
        if not isinstance(terms, dict):
            return  # a server that grants no lease
        try:
            seconds = float(terms["seconds"])
            grace = float(terms["grace"])
        except (TypeError, KeyError, ValueError):
            log.error("ignoring malformed lease terms %r", terms)
            return
        if not (seconds > 0 and grace >= 0):
            log.error("ignoring invalid lease terms %r", terms)
            return
        if seconds != self.lease and seconds < 3 * self.heartbeat_interval:
            log.warning(
                "the lease (%.1fs) is shorter than 3 heartbeats (every %.1fs): one late "
                "heartbeat will stop every task",
                seconds,
                self.heartbeat_interval,
            )
        if self._tether is not None and (seconds, grace) != (self.lease, self.lease_grace):
            # Tasks of a dead agent must be gone as soon as those of a partitioned one.
            self._tether.set_grace(min(self.stop_grace, grace))
        self.lease, self.lease_grace = seconds, grace
        self._renewed = max(self._renewed, sent)
        if self._lease_lost:
            log.warning("lease renewed: accepting tasks again")
            self._lease_lost = False
        if self._lease_changed is not None:
            self._lease_changed.set()

    def _lease_deadline(self) -> float | None:
        """When the lease is given up (monotonic), or None without a lease."""
        if self.lease is None:
            return None
        margin = min(LEASE_MARGIN, LEASE_MARGIN_SHARE * self.lease)
        return self._renewed + self.lease - margin

    async def _lease_loop(self) -> None:
        assert self._lease_changed is not None
        while True:
            self._lease_changed.clear()
            deadline = self._lease_deadline()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left > 0:
                # Not wait_for: before Python 3.12 it swallows a cancel that arrives as the
                # event is set, and the last heartbeat of a stopping agent does both.
                waiter = asyncio.ensure_future(self._lease_changed.wait())
                try:
                    await asyncio.wait({waiter}, timeout=left)
                finally:
                    waiter.cancel()
                continue
            if left is not None and not self._lease_lost:
                await self._lose_lease()
            await self._lease_changed.wait()

    async def _lose_lease(self) -> None:
        """Stop every task: the server may requeue them once lease and grace have passed."""
        self._lease_lost = True  # first, so nothing starts from here on
        if self._starting is not None:
            # A launch under way finishes first, so its task is stopped too.
            await asyncio.gather(asyncio.shield(self._starting), return_exceptions=True)
        procs = [p for p in self.launcher.processes.values() if p.returncode is None]
        log.error(
            "lease lost: no heartbeat answered for %.1fs; stopping %d tasks (grace %.1fs)",
            time.monotonic() - self._renewed,
            len(procs),
            self._lease_kill_after(),
        )
        for proc in procs:
            self._lease_stopped.add(proc.key)
        self._spawn(self._stop_by_deadline(procs, self._lease_kill_after()))

    def _lease_kill_after(self) -> float:
        # The server's grace bounds ours: it requeues lease + its grace after the renewal.
        return min(self.stop_grace, self.lease_grace)

    async def _stop_by_deadline(self, procs: list[TaskProcess], grace: float) -> None:
        """SIGTERM ``procs``; SIGKILL each group still there after ``grace``, without fail.

        :meth:`TaskProcess.stop` alone may SIGKILL stragglers of a group later than ``grace``
        (its leader exited in time, the rest get their own grace); a lease cannot wait.
        """
        stops = [asyncio.ensure_future(p.stop(grace)) for p in procs]
        if stops:
            await asyncio.wait(stops, timeout=grace)
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*stops, return_exceptions=True)

    # -- assignments -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        backoff = _Backoff(0.2, self.backoff_max)
        while True:
            generation = self._reg_gen
            began = time.monotonic()
            try:
                status, answer = await self._request(
                    "GET",
                    self._node_path("/assignments"),
                    params={"wait": f"{self.poll_wait:g}"},
                    timeout=self.poll_wait + 15,
                )
            except _UnreachableError:
                await asyncio.sleep(backoff.next())
                continue
            if status == 404:
                await self._reregister(generation)
                continue
            if status >= 300 or not isinstance(answer, dict):
                log.warning("assignments poll refused: HTTP %d: %s", status, _message(answer))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            assignments = answer.get("assignments") or []
            news = False
            for item in assignments if isinstance(assignments, list) else []:
                # One assignment that cannot be handled must not hold up the others.
                try:
                    # Shielded: cancelling the poll must not cut a spawn in half, leaving a
                    # process nobody recorded.
                    self._starting = asyncio.create_task(self._start(item))
                    news |= await asyncio.shield(self._starting)
                except AgentError:
                    raise
                except Exception:
                    # Ids only: an assignment holds the job's env and token.
                    log.exception("cannot handle the assignment of %s", _ids(item))
            # After the starts, so a cancel in the same answer reaches its task.
            news |= self._apply_cancel(answer.get("cancel"))
            if not news:
                # The poll answers at once while anything is outstanding (an assignment not
                # yet reported, a cancel not yet done); repeating it at full speed helps no one.
                idle = min(MIN_POLL_PERIOD, self.poll_wait) - (time.monotonic() - began)
                await asyncio.sleep(max(0.0, idle))

    async def _start(self, assignment: Any) -> bool:
        """Start an assignment unless it is known; True when it was new."""
        try:
            key = TaskKey.of(assignment)
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError):
            log.error("ignoring an assignment without valid job_id/attempt/rank")
            return False
        if key in self.launcher.records or key in self._done or self._stopping:
            return False
        if self._lease_lost:
            return False  # handed out again once the lease is renewed
        if (key.job_id, key.attempt) in self._cancelled or (key.job_id, None) in self._cancelled:
            rec = self.launcher.set_exited(key, -signal.SIGTERM, "cancelled before start")
            self._remember_done(key)
            self._queue_report(rec)
            return True
        try:
            proc = await self.launcher.launch(self._map_devices(assignment))
        except LaunchError as err:
            log.warning("task %s could not start: %s", key, err)
            self._on_output(key, "stderr", f"cplat agent: {err}\n")
            self._remember_done(key)
            known = self.launcher.records.get(key)
            if known is None:  # refused before the launcher saw it (a device it lacks)
                known = self.launcher.set_exited(key, err.exit_code, str(err))
            self._queue_report(known)
            return True
        log.info("started task %s (pid %d)", key, proc.pid)
        self._queue_report(self.launcher.records[key])
        self._spawn(self._watch(proc))
        return True

    def _map_devices(self, assignment: Any) -> Any:
        """Turn an assignment's device slots into physical GPUs and visible devices.

        Without MIG instances slots are GPU indices and the assignment is left alone.

        Raises
        ------
        LaunchError
            For a slot this node does not have.
        """
        gpus = assignment.get("gpus") if isinstance(assignment, Mapping) else None
        if not gpus or not any(s.mig for s in self.slots):
            return assignment
        if not isinstance(gpus, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < len(self.slots)
            for g in gpus
        ):
            raise LaunchError("bad assignment: gpus name a device this node does not have", 126)
        devs = [self.slots[g] for g in gpus]
        return {
            **assignment,
            "gpus": sorted({d.gpu for d in devs}),
            "visible_devices": [d.visible() for d in devs],
        }

    async def _record_checkpoint(self, proc: TaskProcess, code: int) -> None:
        """Record the folder rank 0 wrote its checkpoint to, before its exit is reported."""
        path = self.launcher.checkpoint_written(proc.key)
        if path is None or proc.key.rank != 0:
            return
        body = {
            "step": proc.key.attempt,
            "uri": str(path),
            "attempt": proc.key.attempt,
            "kind": "full",
            # Killed at the end of its grace: it may have been cut off mid-write.
            "complete": code != -signal.SIGKILL,
        }
        deadline = time.monotonic() + CHECKPOINT_REPORT_TIMEOUT
        backoff = _Backoff(0.2, self.backoff_max)
        while True:
            try:
                status, answer = await self._request(
                    "POST", f"/v1/jobs/{proc.key.job_id}/checkpoints", json=body
                )
            except _UnreachableError:
                if time.monotonic() > deadline:
                    log.warning("checkpoint of task %s not recorded: server away", proc.key)
                    return
                await asyncio.sleep(backoff.next())
                continue
            if status >= 300:
                log.warning(
                    "checkpoint of task %s refused: HTTP %d: %s", proc.key, status, _message(answer)
                )
            else:
                log.info("task %s left a checkpoint in %s", proc.key, path)
            return

    async def _watch(self, proc: TaskProcess) -> None:
        if self._tether is not None:
            self._tether.track(proc.pgid)
        code = await proc.wait()
        if self._tether is not None:
            self._tether.untrack(proc.pgid)
        if proc.key in self._lease_stopped:
            self._lease_stopped.discard(proc.key)
            reason: str | None = LEASE_EXPIRED
        elif self._stopping and proc.stop_requested:
            reason = "agent stopped"
        elif proc.stop_requested:
            reason = "cancelled"
        elif proc.oom_killed and code != 0:
            reason = OOM_REASON
        elif code < 0:
            reason = f"killed by {_signal_name(-code)}"
        else:
            reason = None
        try:
            await self._record_checkpoint(proc, code)
        except AgentError:
            raise
        except Exception:
            log.exception("cannot record the checkpoint of task %s", proc.key)
        rec = self.launcher.set_exited(proc.key, code, reason)
        self._remember_done(proc.key)
        log.info("task %s exited with %d%s", proc.key, code, f" ({reason})" if reason else "")
        self._queue_report(rec)

    def _apply_cancel(self, cancel: Any) -> bool:
        """Stop the tasks of the cancelled attempts; True when a stop began."""
        began = False
        for item in cancel or []:
            try:
                job_id = int(item["job_id"])
                attempt = None if item.get("attempt") is None else int(item["attempt"])
                # The scheduler's grace period of a preemption, else the agent's own.
                grace = float(item.get("grace", self.stop_grace))
                # One rank of an attempt (an elastic job shrank); the others run on.
                rank = None if item.get("rank") is None else int(item["rank"])
            except (KeyError, ValueError, TypeError, AttributeError, OverflowError):
                log.error("ignoring a malformed cancel entry")
                continue
            if not 0 <= grace <= MAX_CANCEL_GRACE:  # NaN fails this too
                grace = self.stop_grace
            if rank is None or attempt is None:
                # Not for a single rank: a later grow of the same attempt may add it back.
                self._cancelled[(job_id, attempt)] = None
                while len(self._cancelled) > CANCEL_MEMORY:
                    self._cancelled.popitem(last=False)
            for key, proc in list(self.launcher.processes.items()):
                if key.job_id != job_id or (attempt is not None and key.attempt != attempt):
                    continue
                if rank is not None and attempt is not None and key.rank != rank:
                    continue
                if not proc.stop_requested:
                    log.info("cancelling task %s (grace %.1fs)", key, grace)
                    self._spawn(proc.stop(grace))
                    began = True
        return began

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        # Keep a reference: the event loop holds tasks only weakly.
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _remember_done(self, key: TaskKey) -> None:
        self._done[key] = None
        while len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    # -- task reports ----------------------------------------------------------------------

    def _queue_report(self, rec: TaskRecord) -> None:
        assert self._reports is not None
        self._reports.put_nowait(rec.report())

    async def _report_loop(self) -> None:
        assert self._reports is not None
        while True:
            body = await self._reports.get()
            try:
                await self._deliver(body)
            except AgentError:
                raise
            except Exception:
                log.exception("cannot deliver the report of task %s", _ids(body))
            finally:
                self._reports.task_done()

    async def _deliver(self, body: dict[str, Any]) -> None:
        """Post one task report until the server takes it or refuses it for good."""
        assert self._logs is not None
        key = TaskKey.of(body)
        backoff = _Backoff(0.2, self.backoff_max)
        reregistered = False
        while True:
            if body["state"] == "exited":
                # The task's last lines should be stored before the job is seen to end.
                await self._logs.flush(key.job_id)
            generation = self._reg_gen
            try:
                status, answer = await self._request("POST", self._node_path("/tasks"), json=body)
            except _UnreachableError:
                await asyncio.sleep(backoff.next())
                continue
            if status == 404 and not reregistered:
                # Either the node or the job is unknown; a fresh registration tells them apart.
                reregistered = True
                await self._reregister(generation)
                continue
            if status >= 300:
                log.warning(
                    "server refused the report of task %s: HTTP %d: %s",
                    key,
                    status,
                    _message(answer),
                )
            return

    # -- logs ------------------------------------------------------------------------------

    def _on_output(self, key: TaskKey, stream: str, data: str) -> None:
        if self._logs is not None:
            self._logs.add(key, stream, data)

    async def _log_loop(self) -> None:
        assert self._logs is not None
        while True:
            try:
                await self._logs.run()
            except AgentError:
                raise
            except Exception:
                log.exception("log shipping failed")
                await asyncio.sleep(1.0)

    async def _post_logs(self, job_id: int, chunks: list[dict[str, Any]]) -> bool:
        status, answer = await self._request(
            "POST", f"/v1/jobs/{job_id}/logs", json={"chunks": chunks}
        )
        if status >= 300:
            log.warning("logs of job %d refused: HTTP %d: %s", job_id, status, _message(answer))
            return False
        return True


def _message(body: Any) -> str:
    """Return the message of a docs/service.md error body, or the body itself."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("message") or err.get("code") or err)
    return str(body)


def _ids(item: Any) -> str:
    """Name an assignment or report by its ids alone (it may hold env values and a token)."""
    try:
        return str(TaskKey.of(item))
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError):
        return "a malformed entry"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


async def run_agent(
    server: str,
    token: str,
    name: str | None,
    work_dir: Path,
    heartbeat_interval: float,
    nvml: Any = None,
    *,
    address: str | None = None,
    labels: Mapping[str, str] | None = None,
    rack: int | None = None,
    spine: int | None = None,
    stop_grace: float = 10.0,
    ca: str | None = None,
    isolation: IsolationSettings | None = None,
    task_user: str | None = None,
) -> None:
    """Run an agent until SIGINT or SIGTERM, then stop its tasks and report them.

    A second signal kills the tasks at once instead of waiting out ``stop_grace``.

    Parameters
    ----------
    server : str
        Base URL of the API.
    token : str
        A cluster-admin token.
    name : str or None
        Node name (default: the hostname).
    work_dir : Path
        The agent's state file and task directories.
    heartbeat_interval : float
        Seconds between heartbeats.
    nvml : module-like, optional
        NVML binding (default ``pynvml``).
    address, labels, rack, spine, stop_grace, isolation, task_user
        See :class:`Agent`.
    ca : str, optional
        PEM CA bundle that verifies an ``https://`` server (default: ``CPLAT_CA``, else the
        system's trust store).

    Raises
    ------
    AgentError
        When the server rejects the registration or the token.
    InputError
        When the CA bundle cannot be read.
    """
    tls = None
    if urlsplit(server).scheme == "https":
        try:
            tls = tls_context(ca)
        except ValueError as err:
            raise InputError(str(err), field="--ca") from None
    agent = Agent(
        server,
        token,
        name=name,
        work_dir=work_dir,
        heartbeat_interval=heartbeat_interval,
        nvml=nvml,
        address=address,
        labels=labels,
        rack=rack,
        spine=spine,
        stop_grace=stop_grace,
        tls=tls,
        isolation=isolation,
        task_user=task_user,
    )
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        log.info("signal received: stopping%s", " now" if signals_seen > 1 else "")
        agent.request_stop(force=signals_seen > 1)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (or not Unix): whoever runs us handles stopping.
            pass
    try:
        await agent.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
