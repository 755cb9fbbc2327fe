"""Jobs API: submit, list, get, cancel, logs, events, checkpoints, the state-change stream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from aiohttp import web

from cplat.errors import InputError
from cplat.live.controller import Controller
from cplat.live.spec import JobSpec
from cplat.store.base import (
    CheckpointIn,
    CheckpointRecord,
    IdempotencyIn,
    JobRecord,
    LogChunk,
    NewJob,
)
from cplat_server.auth import ROLES, Principal
from cplat_server.errors import bad_request, conflict, forbidden, not_found
from cplat_server.job_runs import discard_link, job_created, link_submission
from cplat_server.keys import (
    AUDITED,
    CONFIG,
    CONTROLLER,
    STORE,
    audit,
    audit_entry,
    json_response,
    path_int,
    principal,
    query_id,
    query_int,
    query_name,
    read_json,
)
from cplat_server.limits import LIMITS
from cplat_server.schemas import (
    CHECKPOINT_IN,
    JOB_STATES,
    JOB_SUBMIT,
    LOGS_POST,
    NAME_FILTER,
    TEXT,
)

#: The header that makes a submission idempotent, and its longest value.
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128
#: States a job never leaves: a log follow of such a job has nothing to wait for.
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: Longest ``wait`` of a log follow (seconds).
MAX_FOLLOW_WAIT = 60
#: How often a waiting event stream or log follow looks whether its caller hung up, and how
#: long a stream may stay silent before a keep-alive comment (seconds).
GONE_CHECK, KEEP_ALIVE = 1.0, 15.0


def job_json(
    rec: JobRecord, reason: str | None = None, queue_position: int | None = None
) -> dict[str, Any]:
    """Return the API's view of a stored job.

    ``reason``: the scheduler's, for waiting jobs; ``queue_position``: a queued job's place in
    the order the next cycle considers the queue (1 first), None for other jobs.
    """
    spec = rec.spec
    return {
        "id": rec.id,
        "name": rec.name,
        "project": rec.project,
        "user": rec.user,
        "state": rec.state,
        "reason": reason if reason is not None else rec.reason,
        "priority": spec["priority"],
        "tasks": spec["tasks"],
        "gang": spec["gang"],
        "exclusive": bool(spec.get("exclusive", False)),
        "max_runtime": spec["max_runtime"],
        "checkpoint": spec.get("checkpoint"),
        "command": spec["command"],
        "env": spec.get("env", {}),
        "workdir": spec.get("workdir"),
        "on_failure": spec["on_failure"],
        "max_restarts": spec["max_restarts"],
        "attempt": rec.attempt,
        "placement": rec.placement,
        "submitted_at": rec.submitted_at,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "exit_code": rec.exit_code,
        "tracking": spec.get("tracking"),
        "queue_position": queue_position,
    }


def queue_positions(ctrl: Controller) -> dict[int, int]:
    """Return each queued job's position (1: considered first), over every project."""
    order = ctrl.cluster.queue_order(int(ctrl.clock.now()))
    return {job_id: i for i, job_id in enumerate(order, start=1)}


def sees_env_values(who: Principal, project: str) -> bool:
    """Whether ``who`` may read the values of a ``project`` job's ``env`` (they may be secrets).

    Members and admins of the project and cluster admins may; viewers see the names only.
    """
    return who.cluster_admin or (
        who.project == project and ROLES.index(who.role) >= ROLES.index("member")
    )


def job_view(
    who: Principal,
    rec: JobRecord,
    reason: str | None = None,
    queue_position: int | None = None,
) -> dict[str, Any]:
    """Return :func:`job_json` as ``who`` may read it: ``env`` values null for viewers."""
    out = job_json(rec, reason, queue_position)
    if not sees_env_values(who, rec.project):
        out["env"] = dict.fromkeys(out["env"])
    return out


def normalise_spec(body: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check what the schema cannot express (see :class:`JobSpec`).

    Raises
    ------
    ApiError
        400 naming the field.
    """
    return parse_spec(body).to_dict()


def parse_spec(body: dict[str, Any]) -> JobSpec:
    """Return the typed spec of a submission body (already checked against its schema).

    Raises
    ------
    ApiError
        400 naming the field.
    """
    try:
        return JobSpec.from_body(body)
    except InputError as exc:
        raise bad_request(exc.message, exc.field) from None


async def submit(request: web.Request) -> web.Response:
    """``POST /v1/jobs``."""
    who = principal(request)
    body = await read_json(request, JOB_SUBMIT)
    project = body.get("project", who.project)
    if not who.cluster_admin and project != who.project:
        raise forbidden(f"cannot submit to project {project!r} with a token for {who.project!r}")
    who.require(project, "member", "project")
    typed = parse_spec(body)
    ctrl = request.app[CONTROLLER]
    if request.app[CONFIG].unschedulable == "reject":
        # A cluster declared complete: a job no node could ever run is refused, not held.
        why = ctrl.infeasible(typed)
        if why is not None:
            raise bad_request(why.message, why.field)
    spec = typed.to_dict()
    # A retry of one submission shares its fingerprint, not the fresh run it would create.
    fp_spec = spec if body.get("experiment") is None else {**spec, "experiment": body["experiment"]}
    # Before the job is stored: its tasks find their run in the spec (docs/tracking.md).
    link = await link_submission(request, project, who.user, spec, body)
    store = request.app[STORE]
    now = time.time()
    key = idempotency_key(request)
    job = NewJob(
        project=project,
        user=who.user,
        name=body["name"],
        spec=spec,
        submitted_at=now,
        token_id=who.token_id,
        token_expires_at=who.expires_at,
    )
    # The audit entry commits with the job: one durable write per submission.
    entry = audit_entry(request, 201, "job/{id}", project)
    try:
        if key is None:
            [rec] = await store.create_jobs([job], audit=[entry])
        else:
            fingerprint = submission_fingerprint(project, body["name"], fp_spec)
            ttl = request.app[CONFIG].idempotency_ttl
            done = await store.create_job_idempotent(
                job,
                IdempotencyIn(who.project, who.user, key, fingerprint, now, now + ttl),
                audit=[entry],
            )
            rec = done.job
    except BaseException:
        # No job was stored: its run would wait SCHEDULED forever.
        await discard_link(request, link)
        raise
    if key is not None and not done.created:
        # A retry: the job the first request created, whatever became of it since (the
        # middleware audits this answer like any other).
        await discard_link(request, link)
        audit(request, f"job/{rec.id}", rec.project)
        if done.fingerprint != fingerprint:
            raise conflict(
                f"this Idempotency-Key was used for another request (job {rec.id}); "
                "use a fresh key for a new submission",
                IDEMPOTENCY_HEADER,
            )
        resp = json_response(job_view(who, rec, ctrl.reason(rec.id)), status=200)
        resp.headers["Idempotent-Replayed"] = "true"
        return resp
    await job_created(request, rec)
    ctrl.accept([rec])
    request[AUDITED] = True
    return json_response(job_json(rec, ctrl.reason(rec.id) or "queued"), status=201)


def idempotency_key(request: web.Request) -> str | None:
    """Return the request's ``Idempotency-Key`` (None without one).

    Raises
    ------
    ApiError
        400 naming the header when it is repeated, empty, longer than 128 characters or not
        printable ASCII.
    """
    values = request.headers.getall(IDEMPOTENCY_HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"give one {IDEMPOTENCY_HEADER} header", IDEMPOTENCY_HEADER)
    key = values[0]
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise bad_request(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
            "characters (a UUID will do)",
            IDEMPOTENCY_HEADER,
        )
    return key


def submission_fingerprint(project: str, name: str, spec: dict[str, Any]) -> str:
    """Return what identifies a submission for its idempotency key.

    It hashes the job as it would be created, so a retry that spells a default out matches.
    """
    text = json.dumps(
        {"project": project, "name": name, "spec": spec},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


async def _visible_job(request: web.Request) -> JobRecord:
    job_id = path_int(request, "id", "job")
    rec = await request.app[STORE].get_job(job_id)
    if rec is None or not principal(request).can_see(rec.project):
        raise not_found("job")
    return rec


async def get_job(request: web.Request) -> web.Response:
    """``GET /v1/jobs/{id}``."""
    rec = await _visible_job(request)
    ctrl = request.app[CONTROLLER]
    position = queue_positions(ctrl).get(rec.id) if rec.state == "PENDING" else None
    return json_response(job_view(principal(request), rec, ctrl.reason(rec.id), position))


async def list_jobs(request: web.Request) -> web.Response:
    """``GET /v1/jobs``: filters, ascending ids, cursor pagination."""
    who = principal(request)
    project = query_name(request, "project", NAME_FILTER)
    state = request.query.get("state")
    user = query_name(request, "user", TEXT)
    if state is not None and state not in JOB_STATES:
        raise bad_request(f"state must be one of {', '.join(JOB_STATES)}", "state")
    limit = query_int(request, "limit", 100, 1, 1000)
    assert limit is not None
    after = query_id(request, "cursor")
    if who.cluster_admin:
        projects = None if project is None else [project]
    else:
        projects = [who.project] if project in (None, who.project) else []
    recs = (
        await request.app[STORE].list_jobs(
            projects=projects, state=state, user=user, after=after, limit=limit + 1
        )
        if projects != []
        else []
    )
    more = len(recs) > limit
    recs = recs[:limit]
    ctrl = request.app[CONTROLLER]
    # Positions count every project's queued jobs: a caller sees how many are ahead of theirs.
    positions = queue_positions(ctrl) if any(r.state == "PENDING" for r in recs) else {}
    return json_response(
        {
            "jobs": [job_view(who, r, ctrl.reason(r.id), positions.get(r.id)) for r in recs],
            "next_cursor": str(recs[-1].id) if more else None,
        }
    )


async def cancel(request: web.Request) -> web.Response:
    """``POST /v1/jobs/{id}/cancel``."""
    rec = await _visible_job(request)
    principal(request).require(rec.project, "member", "job")
    audit(request, f"job/{rec.id}", rec.project)
    if not await request.app[CONTROLLER].cancel(rec.id):
        raise conflict(f"job {rec.id} is already {rec.state}", "state")
    fresh = await request.app[STORE].get_job(rec.id)
    assert fresh is not None
    return json_response(job_view(principal(request), fresh))


async def events(request: web.Request) -> web.Response:
    """``GET /v1/jobs/{id}/events``."""
    rec = await _visible_job(request)
    after = query_int(request, "after", None)
    limit = query_int(request, "limit", 1000, 1, 10000)
    assert limit is not None
    evs = await request.app[STORE].job_events(rec.id, after=after, limit=limit)
    return json_response(
        {"events": [{"id": e.id, "at": e.at, "state": e.state, "message": e.message} for e in evs]}
    )


async def logs(request: web.Request) -> web.Response:
    """``GET /v1/jobs/{id}/logs``; with ``wait``, a log follow.

    A follow of an unfinished job that has no output after ``after`` yet waits up to
    ``wait`` seconds for some (or for a change of the job's state), holding one of the
    caller's stream slots meanwhile.
    """
    rec = await _visible_job(request)
    rank = query_int(request, "rank", None, 0, 1023)
    attempt = query_int(request, "attempt", None, 0, 10**6)
    after = query_int(request, "after", None)
    limit = query_int(request, "limit", 1000, 1, 10000)
    wait = query_int(request, "wait", 0, 0, MAX_FOLLOW_WAIT)
    assert limit is not None and wait is not None
    store = request.app[STORE]
    chunks = await store.job_logs(rec.id, rank=rank, attempt=attempt, after=after, limit=limit)
    if not chunks and wait and rec.state not in FINISHED:
        ctrl = request.app[CONTROLLER]
        who = principal(request)
        with (
            request.app[LIMITS].stream_slot(who.user, "log_follow"),
            ctrl.watching_logs(rec.id) as arrived,
        ):
            # Read again now that arrivals are watched: output posted since the first read
            # would otherwise wait out the whole follow.
            chunks = await store.job_logs(
                rec.id, rank=rank, attempt=attempt, after=after, limit=limit
            )
            if not chunks:
                await _wait_unless_gone(request, arrived, wait)
                chunks = await store.job_logs(
                    rec.id, rank=rank, attempt=attempt, after=after, limit=limit
                )
    return json_response(
        {
            "logs": [
                {
                    "seq": c.seq,
                    "attempt": c.attempt,
                    "rank": c.rank,
                    "stream": c.stream,
                    "data": c.data,
                    "at": c.at,
                }
                for c in chunks
            ],
            "next": chunks[-1].seq if chunks else after,
        }
    )


async def post_logs(request: web.Request) -> web.Response:
    """``POST /v1/jobs/{id}/logs`` (agents): task output."""
    principal(request).require_cluster_admin("sending logs")
    job_id = path_int(request, "id", "job")
    body = await read_json(request, LOGS_POST)
    if await request.app[STORE].get_job(job_id) is None:
        raise not_found("job")
    now = time.time()
    await request.app[STORE].append_logs(
        [
            LogChunk(job_id, c["attempt"], c["rank"], c.get("stream", "stdout"), c["data"], now)
            for c in body["chunks"]
        ]
    )
    request.app[CONTROLLER].logs_arrived(job_id)
    return json_response({"accepted": len(body["chunks"])})


def _checkpoint_json(c: CheckpointRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "job_id": c.job_id,
        "attempt": c.attempt,
        "step": c.step,
        "uri": c.uri,
        "size_bytes": c.size_bytes,
        "kind": c.kind,
        "parent": c.parent,
        "complete": c.complete,
        "at": c.at,
    }


async def add_checkpoint(request: web.Request) -> web.Response:
    """``POST /v1/jobs/{id}/checkpoints``: a running job recorded a checkpoint."""
    rec = await _visible_job(request)
    principal(request).require(rec.project, "member", "job")
    body = await read_json(request, CHECKPOINT_IN)
    store = request.app[STORE]
    kind = body.get("kind", "full")
    parent = body.get("parent")
    known = {c.id: c for c in await store.list_checkpoints(rec.id)}
    if parent is not None and parent not in known:
        raise bad_request(f"checkpoint {parent} is not one of this job's", "parent")
    if kind != "full" and parent is None:
        raise bad_request(f"an {kind} checkpoint needs its parent", "parent")
    ck = await store.add_checkpoint(
        CheckpointIn(
            job_id=rec.id,
            attempt=int(body.get("attempt", rec.attempt)),
            step=body["step"],
            uri=body["uri"],
            size_bytes=int(body.get("size_bytes", 0)),
            kind=kind,
            parent=parent,
            complete=bool(body.get("complete", True)),
            at=time.time(),
        )
    )
    audit(request, f"job/{rec.id}/checkpoint/{ck.id}", rec.project)
    return json_response(_checkpoint_json(ck), status=201)


async def list_checkpoints(request: web.Request) -> web.Response:
    """``GET /v1/jobs/{id}/checkpoints``."""
    rec = await _visible_job(request)
    cks = await request.app[STORE].list_checkpoints(rec.id)
    return json_response({"checkpoints": [_checkpoint_json(c) for c in cks]})


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /v1/jobs/stream``: server-sent events, one per job state change."""
    who = principal(request)
    project = query_name(request, "project", NAME_FILTER)
    if project is not None and not who.can_see(project):
        raise not_found("project")
    with request.app[LIMITS].stream_slot(who.user, "stream"):
        return await _stream(request, who, project)


def _gone(request: web.Request) -> bool:
    """Whether the caller hung up (handlers are not cancelled when that happens)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait_unless_gone(request: web.Request, event: asyncio.Event, timeout: float) -> None:
    """Wait up to ``timeout`` for ``event``, ending early when the caller hangs up."""
    deadline = time.monotonic() + timeout
    while not event.is_set() and not _gone(request):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        # Not wait_for, which before Python 3.12 may swallow a cancel (a server stopping).
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=min(left, GONE_CHECK))
        finally:
            waiter.cancel()


async def _stream(request: web.Request, who: Principal, project: str | None) -> web.StreamResponse:
    ctrl = request.app[CONTROLLER]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    queue = ctrl.subscribe()
    getter: asyncio.Future[dict[str, Any]] | None = None
    try:
        await resp.write(b": cplat job stream\n\n")
        written = time.monotonic()
        # Checked every GONE_CHECK seconds, so a caller that hung up gives its slot back
        # promptly even when none of the events is for it.
        while not _gone(request):
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=GONE_CHECK)
            if not done:
                if time.monotonic() - written >= KEEP_ALIVE:
                    await resp.write(b": keep-alive\n\n")
                    written = time.monotonic()
                continue
            ev, getter = getter.result(), None
            if not ev:
                break  # the server is shutting down
            if not who.can_see(ev["project"]) or (project and ev["project"] != project):
                continue
            await resp.write(f"event: job\ndata: {json.dumps(ev)}\n\n".encode())
            written = time.monotonic()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if getter is not None:
            getter.cancel()
        ctrl.unsubscribe(queue)
    return resp
