"""The route table: handlers, schemas and docs in one place (the app and the spec read it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cplat_server import schemas as s
from cplat_server.views import fairshare, jobs, reservations, resources, status, studies, tokens
from cplat_server.views.mlflow_compat import artifacts as mlflow_artifacts
from cplat_server.views.mlflow_compat import routes as mlflow_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Query:
    """A query parameter."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    content: str = "application/json"
    errors: tuple[int, ...] = field(default=(400, 401, 403, 404))
    also: tuple[int, ...] = ()  # further success statuses with the same answer
    headers: tuple[Query, ...] = ()  # request headers beyond Authorization


_INT = {"type": "integer", "minimum": 0, "maximum": s.MAX_INT}
_CURSOR = Query("cursor", {"type": "string", "pattern": s.ID_TEXT}, "next_cursor of a page")
_PROJECT = Query("project", {"type": "string", "pattern": s.NAME_FILTER}, "only this project")
_LIMIT = Query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
_LIST = {"type": "object"}

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/jobs",
        jobs.submit,
        "Submit a job",
        "jobs",
        body=s.JOB_SUBMIT,
        answer=s.JOB,
        status=201,
        errors=(400, 401, 403, 409, 413, 415, 429),
        # 200: a retry with the Idempotency-Key of an earlier submission, answered with the
        # job that one created.
        also=(200,),
        headers=(
            Query(
                jobs.IDEMPOTENCY_HEADER,
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": jobs.MAX_IDEMPOTENCY_KEY,
                    "pattern": "^[!-~]([ -~]*[!-~])?$",
                },
                "makes retries safe: a submission repeating the key (and the body) of an "
                "earlier one within the service's idempotency_ttl answers 200 with the job "
                "that one created instead of creating another; the key with another body "
                "answers 409",
            ),
        ),
    ),
    Route(
        "GET",
        "/v1/jobs",
        jobs.list_jobs,
        "List jobs (ascending id, paginated)",
        "jobs",
        answer=s.JOB_LIST,
        query=(
            _PROJECT,
            Query("state", {"type": "string", "enum": s.JOB_STATES}),
            Query("user", {"type": "string", "pattern": s.TEXT}),
            _LIMIT,
            _CURSOR,
        ),
    ),
    Route(
        "GET",
        "/v1/jobs/stream",
        jobs.stream,
        "Job state changes (server-sent events)",
        "jobs",
        content="text/event-stream",
        query=(_PROJECT,),
        errors=(400, 401, 403, 404, 429),
    ),
    Route("GET", "/v1/jobs/{id}", jobs.get_job, "Get a job", "jobs", answer=s.JOB),
    Route(
        "POST",
        "/v1/jobs/{id}/cancel",
        jobs.cancel,
        "Cancel a job",
        "jobs",
        answer=s.JOB,
        errors=(400, 401, 403, 404, 409),
    ),
    Route(
        "GET",
        "/v1/jobs/{id}/logs",
        jobs.logs,
        "Task output",
        "jobs",
        answer={
            "type": "object",
            "properties": {
                "logs": {"type": "array", "items": s.LOG_RECORD},
                "next": {"type": ["integer", "null"]},
            },
        },
        query=(
            Query("rank", {"type": "integer", "minimum": 0, "maximum": 1023}),
            Query("attempt", {"type": "integer", "minimum": 0, "maximum": 10**6}),
            Query("after", _INT),
            Query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
            Query(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": 60},
                "follow: when nothing follows `after` yet, wait up to this many seconds for "
                "output (or a change of the job's state) before answering",
            ),
        ),
        errors=(400, 401, 403, 404, 429),
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/logs",
        jobs.post_logs,
        "Append task output (agents)",
        "agents",
        body=s.LOGS_POST,
        answer={"type": "object"},
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "GET",
        "/v1/jobs/{id}/events",
        jobs.events,
        "A job's history",
        "jobs",
        answer={
            "type": "object",
            "properties": {"events": {"type": "array", "items": s.EVENT}},
        },
        query=(
            Query("after", _INT),
            Query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
        ),
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/checkpoints",
        jobs.add_checkpoint,
        "Record a checkpoint",
        "jobs",
        body=s.CHECKPOINT_IN,
        answer=s.CHECKPOINT,
        status=201,
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "GET",
        "/v1/jobs/{id}/checkpoints",
        jobs.list_checkpoints,
        "A job's checkpoints",
        "jobs",
        answer={
            "type": "object",
            "properties": {"checkpoints": {"type": "array", "items": s.CHECKPOINT}},
        },
    ),
    Route(
        "GET",
        "/v1/nodes",
        resources.list_nodes,
        "List nodes",
        "resources",
        answer={"type": "object", "properties": {"nodes": {"type": "array", "items": s.NODE}}},
    ),
    Route(
        "POST",
        "/v1/nodes",
        resources.register_node,
        "Register a node (agents)",
        "agents",
        body=s.NODE_REGISTER,
        answer=s.NODE,
        errors=(400, 401, 403, 413, 415),
        also=(201,),
    ),
    Route("GET", "/v1/nodes/{name}", resources.get_node, "Get a node", "resources", answer=s.NODE),
    Route(
        "POST",
        "/v1/nodes/{name}/cordon",
        resources.cordon,
        "Cordon a node",
        "resources",
        answer=s.NODE,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/drain",
        resources.drain,
        "Drain a node (its jobs are requeued)",
        "resources",
        answer=s.NODE,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/uncordon",
        resources.uncordon,
        "Uncordon a node",
        "resources",
        answer=s.NODE,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/heartbeat",
        resources.heartbeat,
        "Heartbeat with the node's tasks and GPU health (agents)",
        "agents",
        body=s.HEARTBEAT,
        answer=s.HEARTBEAT_ANSWER,
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "GET",
        "/v1/nodes/{name}/assignments",
        resources.assignments,
        "Long poll for tasks to run and stop (agents)",
        "agents",
        answer=s.ASSIGNMENTS,
        query=(Query("wait", {"type": "integer", "minimum": 0, "maximum": 60}),),
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/tasks",
        resources.task_report,
        "A task started or exited (agents)",
        "agents",
        body=s.TASK_REPORT,
        answer={"type": "object"},
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "GET",
        "/v1/pools",
        resources.list_pools,
        "List pools",
        "resources",
        answer={"type": "object", "properties": {"pools": {"type": "array", "items": s.POOL}}},
    ),
    Route(
        "PUT",
        "/v1/pools/{name}",
        resources.put_pool,
        "Create or replace a pool",
        "resources",
        body=s.POOL_PUT,
        answer=s.POOL,
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "DELETE",
        "/v1/pools/{name}",
        resources.delete_pool,
        "Delete a pool",
        "resources",
        status=204,
    ),
    Route(
        "GET",
        "/v1/quotas",
        resources.list_quotas,
        "List quotas",
        "resources",
        answer={
            "type": "object",
            "properties": {"quotas": {"type": "array", "items": s.QUOTA}},
        },
    ),
    Route(
        "PUT",
        "/v1/quotas/{project}",
        resources.put_quota,
        "Set a project's quota",
        "resources",
        body=s.QUOTA_PUT,
        answer=s.QUOTA,
        errors=(400, 401, 403, 404, 413, 415),
    ),
    Route(
        "DELETE",
        "/v1/quotas/{project}",
        resources.delete_quota,
        "Remove a project's quota",
        "resources",
        status=204,
    ),
    Route(
        "GET",
        "/v1/cluster",
        resources.cluster,
        "Capacity, allocation, fragmentation, counts",
        "resources",
        answer=s.CLUSTER,
    ),
    Route(
        "GET",
        "/v1/audit",
        resources.list_audit,
        "The audit log (admins)",
        "resources",
        answer={
            "type": "object",
            "properties": {
                "entries": {"type": "array", "items": s.AUDIT},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        query=(_PROJECT, Query("after", _INT), _LIMIT),
    ),
    Route(
        "POST",
        "/v1/tokens/revoke",
        tokens.revoke,
        "Revoke a token by id, and the job tokens derived from it (cluster admins)",
        "tokens",
        body=tokens.TOKEN_REVOKE,
        answer=tokens.TOKEN_REVOKED,
        errors=(400, 401, 403, 413, 415),
    ),
    Route(
        "POST",
        "/v1/studies",
        studies.create,
        "Create a hyperparameter study (its trials run as jobs)",
        "studies",
        body=studies.STUDY_CREATE,
        answer=studies.STUDY,
        status=201,
        errors=(400, 401, 403, 409, 413, 415),
    ),
    Route(
        "GET",
        "/v1/studies",
        studies.list_studies,
        "List studies",
        "studies",
        answer=studies.STUDY_LIST,
        query=(_PROJECT,),
    ),
    Route(
        "GET",
        "/v1/studies/{name}",
        studies.get_study,
        "A study: trials with state, params and values; the best",
        "studies",
        answer=studies.STUDY,
        query=(_PROJECT,),
    ),
    Route(
        "DELETE",
        "/v1/studies/{name}",
        studies.stop,
        "Stop a study (its running trials are cancelled)",
        "studies",
        answer=studies.STUDY,
        query=(_PROJECT,),
    ),
    Route(
        "GET",
        "/v1/fairshare",
        fairshare.fairshare,
        "Fair-share usage, shares and priority factors per project; the queue order",
        "resources",
        answer=fairshare.FAIRSHARE,
        errors=(401,),
    ),
    Route(
        "POST",
        "/v1/reservations",
        reservations.create,
        "Reserve nodes for a project, or a maintenance window (cluster admins)",
        "resources",
        body=reservations.RESERVATION_IN,
        answer=reservations.RESERVATION,
        status=201,
        errors=(400, 401, 403, 413, 415),
    ),
    Route(
        "GET",
        "/v1/reservations",
        reservations.list_reservations,
        "List reservations (cluster admins all; others their project's and the windows)",
        "resources",
        answer={
            "type": "object",
            "properties": {"reservations": {"type": "array", "items": reservations.RESERVATION}},
        },
        errors=(401,),
    ),
    Route(
        "DELETE",
        "/v1/reservations/{id}",
        reservations.delete,
        "Delete a reservation (cluster admins)",
        "resources",
        status=204,
    ),
)

#: Pages for people, outside the API: no token, not audited, not OpenAPI operations (the
#: spec describes the JSON API; the page reads that API with the visitor's token).
PAGES: tuple[tuple[str, Handler], ...] = (("/", status.page),)

#: The MLflow-compatible API, ``(method, path, handler)``: outside /v1 and the OpenAPI document
#: (it answers in MLflow's error shape and checks tokens itself; see
#: cplat_server.views.mlflow_compat).
MLFLOW_ROUTES = mlflow_routes.ROUTES + mlflow_artifacts.ROUTES

#: Agent telemetry is not audited: it is not a person's change and would flood the log.
UNAUDITED = frozenset(
    {"/v1/nodes/{name}/heartbeat", "/v1/nodes/{name}/tasks", "/v1/jobs/{id}/logs"}
)
