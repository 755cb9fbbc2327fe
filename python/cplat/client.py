"""Typed synchronous client for the cplat service (``cplat serve``).

Standard library only (``urllib.request`` and ``json``), so scripts, notebooks and the tasks
themselves (which get ``CPLAT_SERVER`` and ``CPLAT_TOKEN`` in their environment) can use it
without installing the service's dependencies. Answers are plain dicts typed as ``TypedDict``
where ``docs/service.md`` documents their shape, ``dict[str, Any]`` where it does not.

Errors: an answer with an error status raises `ApiError`; a server that cannot be reached (or
does not answer within the timeout) raises `ServerUnreachableError`, a `ConnectionError`.
"""

from __future__ import annotations

import builtins
import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypedDict, cast

__all__ = [
    "DEFAULT_SERVER",
    "TERMINAL_STATES",
    "Allocation",
    "ApiError",
    "CheckpointPolicy",
    "Client",
    "Event",
    "Job",
    "LogChunk",
    "Node",
    "Placement",
    "Resources",
    "ServerUnreachableError",
    "TaskGroup",
    "WaitTimeoutError",
    "tls_context",
]

#: Where ``cplat serve`` listens unless told otherwise.
DEFAULT_SERVER = "http://127.0.0.1:8470"
#: States a job never leaves (PREEMPTED is not one: the job goes back to PENDING).
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

_USER_AGENT = "cplat-client/1"
#: Answers after which a submission is retried (with its Idempotency-Key, so at most one job
#: results): the server, or a proxy in front of it, is restarting or overloaded.
_RETRY_STATUSES = frozenset({502, 503, 504})
_MAX_RETRY_DELAY = 5.0
# Error messages quote at most this much of a body that is not the JSON error format.
_MAX_BODY_QUOTE = 200


class Resources(TypedDict):
    """Resources of one task of a job."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_models: list[str]


class TaskGroup(TypedDict):
    """The tasks of a job: how many, and what each needs."""

    count: int
    resources: Resources


class CheckpointPolicy(TypedDict):
    """How often a job checkpoints and what a checkpoint costs, in seconds."""

    interval: int
    cost: int


class Placement(TypedDict):
    """Where one task (rank) of a job runs."""

    rank: int
    node: str
    gpus: list[int]


class Job(TypedDict):
    """A job as the service answers it (``GET /v1/jobs/{id}``)."""

    id: int
    name: str
    project: str
    user: str
    state: str
    reason: str
    priority: int
    tasks: TaskGroup
    gang: bool
    max_runtime: int
    checkpoint: CheckpointPolicy | None
    command: list[str] | str
    env: dict[str, str]
    workdir: str | None
    on_failure: str
    max_restarts: int
    attempt: int
    placement: list[Placement]
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None


class LogChunk(TypedDict):
    """Output of one task of one attempt; ``seq`` orders the chunks of a job."""

    seq: int
    attempt: int
    rank: int
    stream: str
    data: str
    at: float


class Event(TypedDict):
    """One entry of a job's history."""

    id: int
    at: float
    state: str
    message: str


class Allocation(TypedDict):
    """Resources in use on a node (milli-CPU, MiB, milli-GPU)."""

    cpu_milli: int
    memory_mib: int
    gpu_milli: int


class Node(TypedDict):
    """A node as the service answers it (``GET /v1/nodes``)."""

    name: str
    state: str
    cpu_milli: int
    memory_mib: int
    gpus: list[dict[str, Any]]
    labels: dict[str, str]
    rack: str | None
    spine: str | None
    hostname: str | None
    address: str | None
    heartbeat_at: float
    allocated: Allocation
    jobs: list[int]


class ApiError(Exception):
    """The service answered with an error status.

    Parameters
    ----------
    status
        HTTP status of the answer (400, 401, 403, 404, 409, 413, 415, 5xx, ...).
    code
        The ``error.code`` of the answer, or ``http_<status>`` when the body is not the JSON
        error format (a proxy's page, a crash).
    message
        The ``error.message``, or the start of the body, or the HTTP reason phrase.
    field
        The request field the error is about, when the service names one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.message if self.field is None else f"{self.message} (field: {self.field})"

    def __repr__(self) -> str:
        return (
            f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r}, "
            f"field={self.field!r})"
        )


class ServerUnreachableError(ConnectionError):
    """The service cannot be reached: refused, unresolvable, reset, or timed out.

    Parameters
    ----------
    server
        The server URL the client was given.
    reason
        What went wrong, as the operating system or ``urllib`` put it.
    """

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"cannot reach the cplat server at {server}: {reason}")


class WaitTimeoutError(TimeoutError):
    """`Client.wait` gave up before the job finished.

    Parameters
    ----------
    job
        The job as last seen (not terminal).
    timeout
        The seconds waited.
    """

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        message = f"job {job['id']} is still {job['state']} after {timeout:g} s"
        # Why it waits (``unschedulable: no node has 64 CPUs; ...``) is what the user needs.
        reason = job.get("reason") if job["state"] == "PENDING" else None
        super().__init__(f"{message} (reason: {reason})" if reason else message)


def _error_from_body(status: int, reason: str, body: bytes) -> ApiError:
    """Build an `ApiError` from an error answer, whatever its body holds."""
    try:
        payload: object = json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error_code"), str):
        # The MLflow-compatible endpoints answer in MLflow's own error shape.
        field = payload.get("field")
        return ApiError(
            status,
            payload["error_code"],
            _one_line(str(payload.get("message") or reason or f"HTTP {status}")),
            str(field) if field is not None else None,
        )
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = cast(dict[str, object], payload["error"])
        code = err.get("code")
        message = err.get("message")
        field = err.get("field")
        return ApiError(
            status,
            str(code) if code else f"http_{status}",
            _one_line(str(message)) if message else reason or f"HTTP {status}",
            str(field) if field is not None else None,
        )
    text = body.decode("utf-8", "replace").strip()
    # An HTML page (a proxy's 502, say) says nothing useful in its first characters.
    if not text or text.startswith("<"):
        message = reason or f"HTTP {status}"
    else:
        message = _one_line(text)
        if len(message) > _MAX_BODY_QUOTE:
            message = message[:_MAX_BODY_QUOTE] + "..."
    return ApiError(status, f"http_{status}", message)


def tls_context(ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """Return the TLS context that verifies an ``https://`` server (TLS 1.2 or later).

    Parameters
    ----------
    ca
        PEM bundle of the certificate authorities to trust (a self-signed server's own
        certificate will do); ``None`` reads ``CPLAT_CA``, and without it the system's store.

    Raises
    ------
    ValueError
        When the bundle cannot be read or holds no certificate.
    """
    if ca is None:
        ca = os.environ.get("CPLAT_CA") or None
    try:
        ctx = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"cannot use CA bundle {os.fspath(ca or '')!r} ({reason})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Client:
    """Synchronous client of the cplat service's ``/v1`` API.

    Parameters
    ----------
    server
        Base URL, such as ``http://head:8470``; ``None`` reads ``CPLAT_SERVER``, falling back
        to `DEFAULT_SERVER`. A URL without a scheme gets ``http://``.
    token
        A JWT (``cplat token create``); ``None`` reads ``CPLAT_TOKEN``. Without one, requests
        go out unauthenticated and the service answers 401.
    timeout
        Seconds to wait for each request (connecting and reading).
    ca
        For an ``https://`` server: PEM bundle of the authorities to trust; ``None`` reads
        ``CPLAT_CA``, else the system's store is used. Certificates and names are checked.

    Raises
    ------
    ValueError
        For a URL that is not ``http`` or ``https``, a non-positive timeout, or an https URL
        with an unreadable CA bundle.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        ca: str | os.PathLike[str] | None = None,
    ) -> None:
        if server is None:
            server = os.environ.get("CPLAT_SERVER") or DEFAULT_SERVER
        if token is None:
            token = os.environ.get("CPLAT_TOKEN", "")
        server = server.strip().rstrip("/")
        if "://" not in server:
            server = "http://" + server
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http:// or https:// server URL, got {server!r}")
        if not timeout > 0:
            raise ValueError(f"expected a positive timeout, got {timeout}")
        self.server = server
        self.token = token.strip()
        self.timeout = timeout
        self._tls = tls_context(ca) if parts.scheme == "https" else None

    def __repr__(self) -> str:
        # The token is a credential: keep it out of logs and tracebacks.
        return f"Client(server={self.server!r}, timeout={self.timeout})"

    # Transport ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object | None] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON answer (``{}`` for an empty one).

        Parameters
        ----------
        method
            HTTP method.
        path
            Path under the server, starting with ``/`` (``/v1/jobs``).
        query
            Query parameters; ``None`` values are left out.
        body
            JSON-serialisable request body, or ``None`` for none.
        headers
            Further request headers (such as ``Idempotency-Key``).

        Raises
        ------
        ApiError
            For an answer with a status of 300 or more, or a success that is not JSON.
        ServerUnreachableError
            When the server cannot be reached or does not answer in time.
        """
        url = self.server + path
        if query:
            pairs = [(k, str(v)) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        sent = {"Accept": "application/json", "User-Agent": _USER_AGENT, **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                status = int(resp.status)
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                exc.close()
            raise _error_from_body(exc.code, str(exc.reason or ""), raw) from None
        except urllib.error.URLError as exc:
            raise ServerUnreachableError(self.server, str(exc.reason)) from exc
        except TimeoutError as exc:
            raise ServerUnreachableError(
                self.server, f"no answer within {self.timeout:g} s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Reset or closed mid-answer: the server went away (a restart, a crash).
            raise ServerUnreachableError(self.server, str(exc) or type(exc).__name__) from exc
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            text = _one_line(raw.decode("utf-8", "replace"))[:_MAX_BODY_QUOTE]
            raise ApiError(
                status, "invalid_response", f"the server answered with non-JSON: {text!r}"
            ) from None

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = self.request(method, path, **kwargs)
        if not isinstance(data, dict):
            raise ApiError(200, "invalid_response", f"expected a JSON object from {method} {path}")
        return cast(dict[str, Any], data)

    def _items(self, method: str, path: str, key: str, **kwargs: Any) -> builtins.list[Any]:
        """Return the list under ``key`` of an answer (a bare list is accepted too)."""
        data = self.request(method, path, **kwargs)
        if isinstance(data, dict):
            data = data.get(key)
        if not isinstance(data, builtins.list):
            raise ApiError(
                200, "invalid_response", f"expected a list of {key} from {method} {path}"
            )
        return data

    # Jobs --------------------------------------------------------------------------------
    def submit(
        self,
        name: str,
        command: str | Sequence[str],
        *,
        project: str | None = None,
        count: int = 1,
        cpu_milli: int = 1000,
        memory_mib: int = 1024,
        num_gpu: int = 0,
        gpu_milli: int = 1000,
        gpu_models: Sequence[str] = (),
        priority: int = 0,
        gang: bool = True,
        max_runtime: int | None = None,
        checkpoint: CheckpointPolicy | None = None,
        exclusive: bool = False,
        min_count: int | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        on_failure: str = "fail",
        max_restarts: int = 0,
        idempotency_key: str | None = None,
        outage: float = 60.0,
        experiment: str | Mapping[str, Any] | None = None,
    ) -> Job:
        """Submit a job (``POST /v1/jobs``); the service validates every field.

        The submission carries an ``Idempotency-Key``. When the answer is lost (the server
        cannot be reached, restarts, or a proxy answers 502, 503 or 504) it is sent again with
        the same key, so that it creates at most one job however often it is retried.

        Parameters
        ----------
        name
            1-128 characters of ``[A-Za-z0-9._-]``.
        command
            Program and arguments, or one string run by ``/bin/sh -c``.
        project
            The project to charge; ``None`` means the token's project.
        count
            Number of tasks (ranks).
        cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_models
            What each task needs; ``gpu_milli`` below 1000 shares one GPU (``num_gpu`` 1).
        priority
            -1000 to 1000.
        gang
            Start all tasks together or none.
        max_runtime
            Seconds before the job is stopped; ``None`` takes the service's default.
        checkpoint
            ``{"interval", "cost"}`` in seconds, for jobs that checkpoint.
        exclusive
            Run alone on its nodes.
        min_count
            Fewest tasks the job can run with (elastic between it and ``count``).
        env
            Extra environment of the tasks.
        workdir
            Working directory of the tasks.
        on_failure
            ``"fail"`` or ``"restart"``.
        max_restarts
            Restarts allowed with ``on_failure="restart"``.
        idempotency_key
            The key (up to 128 printable ASCII characters); ``None`` draws a fresh UUID. Give
            your own to make a submission safe to repeat across runs of a script: the service
            remembers keys for a day (its ``idempotency_ttl``).
        outage
            Seconds the server may stay unreachable (a restart) before submitting gives up.
        experiment
            Record the job as a run of this experiment: its name, or ``{"name", "run_name",
            "snapshot", "from_run"}`` (see docs/tracking.md).

        Returns
        -------
        Job
            The job as created (state PENDING), or the job an earlier submission with the
            same key created (in whatever state it is now).

        Raises
        ------
        ApiError
            For a refused submission; 409 when ``idempotency_key`` was used for another one.
        ServerUnreachableError
            When the server stays unreachable for longer than ``outage``.
        """
        resources: Resources = {
            "cpu_milli": cpu_milli,
            "memory_mib": memory_mib,
            "num_gpu": num_gpu,
            "gpu_milli": gpu_milli,
            "gpu_models": builtins.list(gpu_models),
        }
        body: dict[str, Any] = {
            "name": name,
            "command": command if isinstance(command, str) else builtins.list(command),
            "tasks": {"count": count, "resources": resources},
            "priority": priority,
            "gang": gang,
            "on_failure": on_failure,
            "max_restarts": max_restarts,
        }
        # Optional fields are left out rather than sent as null so the service's defaults
        # (the token's project, its max_runtime) apply.
        optional: dict[str, object] = {
            "project": project,
            "max_runtime": max_runtime,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
            "env": dict(env) if env is not None else None,
            "workdir": workdir,
            "experiment": dict(experiment) if isinstance(experiment, Mapping) else experiment,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if exclusive:
            body["exclusive"] = True
        if min_count is not None:
            body["tasks"]["min_count"] = min_count
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        give_up = time.monotonic() + outage
        delay = 0.25
        while True:
            try:
                return cast(Job, self._object("POST", "/v1/jobs", body=body, headers=headers))
            except ServerUnreachableError:
                if time.monotonic() + delay > give_up:
                    raise
            except ApiError as exc:
                if exc.status not in _RETRY_STATUSES or time.monotonic() + delay > give_up:
                    raise
            # The first attempt may have created the job before its answer was lost: the
            # same key makes the server answer with that job instead of creating another.
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def get(self, job_id: int) -> Job:
        """Return one job (``GET /v1/jobs/{id}``); 404 for another project's job."""
        return cast(Job, self._object("GET", f"/v1/jobs/{int(job_id)}"))

    def list(
        self,
        project: str | None = None,
        state: str | None = None,
        user: str | None = None,
        limit: int = 100,
    ) -> Iterator[Job]:
        """Iterate over the jobs that match, all pages of them, in the service's order.

        Parameters
        ----------
        project, state, user
            Filters; ``None`` leaves one out.
        limit
            Jobs asked for per request (page size), not a cap on the total: stop iterating
            (``itertools.islice``) to see fewer.

        Yields
        ------
        Job
            Each job, fetching the next page (``next_cursor``) when one runs out.
        """
        cursor: str | None = None
        while True:
            page = self._object(
                "GET",
                "/v1/jobs",
                query={
                    "project": project,
                    "state": state,
                    "user": user,
                    "limit": limit,
                    "cursor": cursor,
                },
            )
            jobs = page.get("jobs")
            if not isinstance(jobs, builtins.list):
                raise ApiError(200, "invalid_response", "expected a list of jobs")
            yield from cast(builtins.list[Job], jobs)
            next_cursor = page.get("next_cursor")
            if next_cursor is None or next_cursor == "":
                return
            if str(next_cursor) == cursor:  # a cursor that does not move would loop for ever
                raise ApiError(200, "invalid_response", f"the job list repeats cursor {cursor!r}")
            cursor = str(next_cursor)

    def cancel(self, job_id: int) -> Job:
        """Cancel a job and return it (``POST /v1/jobs/{id}/cancel``); 409 once finished."""
        return cast(Job, self._object("POST", f"/v1/jobs/{int(job_id)}/cancel"))

    def logs(
        self,
        job_id: int,
        rank: int | None = None,
        attempt: int | None = None,
        after: int | None = None,
    ) -> builtins.list[LogChunk]:
        """Return a job's log chunks so far, following the answer's ``next`` across pages.

        Parameters
        ----------
        job_id
            The job.
        rank, attempt
            Only this task rank / this attempt; ``None`` for all.
        after
            Only chunks with a ``seq`` above this.

        Returns
        -------
        list of LogChunk
            In ``seq`` order.
        """
        chunks: builtins.list[LogChunk] = []
        while True:
            page = self._object(
                "GET",
                f"/v1/jobs/{int(job_id)}/logs",
                query={"rank": rank, "attempt": attempt, "after": after},
            )
            got = page.get("logs")
            if not isinstance(got, builtins.list):
                raise ApiError(200, "invalid_response", "expected a list of logs")
            chunks.extend(cast(builtins.list[LogChunk], got))
            nxt = page.get("next")
            # An empty page ends it too, so a `next` that does not move cannot loop forever.
            if nxt is None or not got or nxt == after:
                return chunks
            after = int(nxt)

    def follow_logs(
        self,
        job_id: int,
        poll: float = 0.5,
        *,
        rank: int | None = None,
        attempt: int | None = None,
        after: int | None = None,
        outage: float = 60.0,
    ) -> Iterator[LogChunk]:
        """Yield a job's log chunks as they arrive, until it is finished and drained.

        Parameters
        ----------
        job_id
            The job.
        poll
            Seconds between polls.
        rank, attempt, after
            As for `logs`.
        outage
            Seconds the server may stay unreachable (a restart) before following gives up.

        Yields
        ------
        LogChunk
            Each chunk once, in ``seq`` order.
        """
        down_since: float | None = None
        while True:
            # The state is read before the logs: once a terminal state has been seen, one
            # fetch that finds nothing new proves the agent's last chunks are in.
            try:
                state = self.get(job_id)["state"]
                chunks = self.logs(job_id, rank=rank, attempt=attempt, after=after)
            except ServerUnreachableError:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since > outage:
                    raise
                time.sleep(poll)
                continue
            down_since = None
            for chunk in chunks:
                after = chunk["seq"] if after is None else max(after, chunk["seq"])
                yield chunk
            if state in TERMINAL_STATES and not chunks:
                return
            time.sleep(poll)

    def events(self, job_id: int) -> builtins.list[Event]:
        """Return a job's history (``GET /v1/jobs/{id}/events``), oldest first."""
        items = self._items("GET", f"/v1/jobs/{int(job_id)}/events", "events")
        return cast(builtins.list[Event], items)

    def wait(
        self,
        job_id: int,
        timeout: float | None = None,
        *,
        poll: float = 0.5,
        outage: float = 60.0,
    ) -> Job:
        """Poll a job until it is SUCCEEDED, FAILED or CANCELLED, and return it.

        Parameters
        ----------
        job_id
            The job.
        timeout
            Seconds to wait at most; ``None`` waits for ever.
        poll
            Seconds between polls.
        outage
            Seconds the server may stay unreachable (a restart) before waiting gives up.

        Raises
        ------
        WaitTimeoutError
            When ``timeout`` passes first.
        ServerUnreachableError
            When the server stays unreachable for longer than ``outage``.
        """
        started = time.monotonic()
        down_since: float | None = None
        while True:
            try:
                job = self.get(job_id)
            except ServerUnreachableError:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since > outage:
                    raise
                time.sleep(poll)
                continue
            down_since = None
            if job["state"] in TERMINAL_STATES:
                return job
            if timeout is None:
                time.sleep(poll)
                continue
            left = started + timeout - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(job, timeout)
            time.sleep(min(poll, left))

    def checkpoints(self, job_id: int) -> builtins.list[dict[str, Any]]:
        """Return a job's recorded checkpoints (``GET /v1/jobs/{id}/checkpoints``)."""
        items = self._items("GET", f"/v1/jobs/{int(job_id)}/checkpoints", "checkpoints")
        return cast(builtins.list[dict[str, Any]], items)

    def add_checkpoint(
        self,
        job_id: int,
        step: int,
        uri: str,
        size_bytes: int,
        kind: str = "full",
        parent: int | None = None,
        complete: bool = True,
    ) -> dict[str, Any]:
        """Record a checkpoint of a running job (``POST /v1/jobs/{id}/checkpoints``).

        Parameters
        ----------
        job_id
            The job (a task's own is in ``CPLAT_JOB_ID``).
        step
            Training step the checkpoint holds.
        uri
            Where it is stored; handed back as ``CPLAT_RESUME_FROM`` on a restart.
        size_bytes
            Its size.
        kind
            ``"full"``, ``"incremental"`` or ``"differential"``.
        parent
            Id of the checkpoint an incremental or differential one builds on.
        complete
            Whether it is fully written (only complete ones are resumed from).

        Returns
        -------
        dict
            The checkpoint as recorded.
        """
        body = {
            "step": step,
            "uri": uri,
            "size_bytes": size_bytes,
            "kind": kind,
            "parent": parent,
            "complete": complete,
        }
        return self._object("POST", f"/v1/jobs/{int(job_id)}/checkpoints", body=body)

    # Resources ---------------------------------------------------------------------------
    def nodes(self) -> builtins.list[Node]:
        """Return the nodes of the cluster (``GET /v1/nodes``)."""
        return cast(builtins.list[Node], self._items("GET", "/v1/nodes", "nodes"))

    def cluster(self) -> dict[str, Any]:
        """Return capacity, allocation, fragmentation and counts (``GET /v1/cluster``)."""
        return self._object("GET", "/v1/cluster")

    def quotas(self) -> builtins.list[dict[str, Any]]:
        """Return the projects' quotas (``GET /v1/quotas``)."""
        return cast(builtins.list[dict[str, Any]], self._items("GET", "/v1/quotas", "quotas"))

    def put_quota(
        self,
        project: str,
        nominal: Allocation,
        *,
        borrowing_limit: Allocation | None = None,
        lending_limit: Allocation | None = None,
        pool: str | None = None,
        overcommit: float | None = None,
    ) -> dict[str, Any]:
        """Set a project's quota (``PUT /v1/quotas/{project}``; project or cluster admin).

        Parameters
        ----------
        project
            The project.
        nominal
            Guaranteed resources: ``{"cpu_milli", "memory_mib", "gpu_milli"}``.
        borrowing_limit
            How much beyond ``nominal`` the project may borrow from its pool.
        lending_limit
            How much of its unused ``nominal`` the project lends.
        pool
            The pool (cohort) the project belongs to.
        overcommit
            Factor (at least 1) by which the pool may promise more than its nominal quota.

        Returns
        -------
        dict
            The quota as stored.

        Notes
        -----
        Arguments left as ``None`` are not sent, so the service's defaults apply.
        """
        optional: dict[str, object] = {
            "borrowing_limit": dict(borrowing_limit) if borrowing_limit is not None else None,
            "lending_limit": dict(lending_limit) if lending_limit is not None else None,
            "pool": pool,
            "overcommit": overcommit,
        }
        body: dict[str, object] = {"nominal": dict(nominal)}
        body.update({k: v for k, v in optional.items() if v is not None})
        path = "/v1/quotas/" + urllib.parse.quote(project, safe="")
        return self._object("PUT", path, body=body)
