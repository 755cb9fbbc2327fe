"""Typed application keys and request helpers shared by the views."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from cplat.store.base import AuditIn, Store
from cplat_server.auth import Principal
from cplat_server.config import ServiceConfig
from cplat_server.errors import ApiError, bad_request, not_found
from cplat_server.loop import Controller
from cplat_server.metrics import Metrics
from cplat_server.schemas import MAX_INT, Schema, validate

CONFIG = web.AppKey("config", ServiceConfig)
STORE = web.AppKey("store", Store)
CONTROLLER = web.AppKey("controller", Controller)
METRICS = web.AppKey("metrics", Metrics)
SECRET = web.AppKey("secret", str)

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT_TARGET = web.RequestKey("audit_target", str)
AUDIT_PROJECT = web.RequestKey("audit_project", str)
AUDITED = web.RequestKey("audited", bool)  # the handler wrote the audit entry itself


def principal(request: web.Request) -> Principal:
    """Return the authenticated caller (set by the auth middleware)."""
    return request[PRINCIPAL]


def audit(request: web.Request, target: str, project: str | None = None) -> None:
    """Name the object a mutation touched (for the audit log)."""
    request[AUDIT_TARGET] = target
    if project is not None:
        request[AUDIT_PROJECT] = project


def audit_entry(
    request: web.Request, status: int, target: str | None = None, project: str | None = None
) -> AuditIn:
    """Return the audit entry of this request with the answer ``status``."""
    who = request[PRINCIPAL]
    return AuditIn(
        at=time.time(),
        user=who.user,
        project=project if project is not None else request.get(AUDIT_PROJECT, who.project),
        action=f"{request.method} {route_name(request)}",
        target=target if target is not None else request.get(AUDIT_TARGET, request.path),
        status=status,
        detail={"path": request.path, "cluster_admin": who.cluster_admin},
    )


def route_name(request: web.Request) -> str:
    """Return the route's path template (``/v1/jobs/{id}``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def read_json(request: web.Request, schema: Schema) -> Any:
    """Parse and validate a JSON body.

    Raises
    ------
    ApiError
        415 for a body that is not JSON, 400 for invalid JSON or a schema violation.
    """
    ctype = request.content_type
    if request.can_read_body and ctype not in ("application/json", "application/octet-stream"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()
    if not raw:
        raise bad_request("this call needs a JSON body", "body")
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"body is not valid JSON ({exc})", "body") from None
    validate(data, schema)
    return data


def query_int(
    request: web.Request, name: str, default: int | None, lo: int = 0, hi: int = MAX_INT
) -> int | None:
    """Return an integer query parameter in ``[lo, hi]`` (400 naming it otherwise)."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name) from None
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be in {lo}..{hi}", name)
    return value


def path_int(request: web.Request, name: str, what: str) -> int:
    """Return an integer path parameter (404 when it cannot name an object)."""
    text = request.match_info[name]
    if not text.isdigit() or int(text) > MAX_INT or int(text) < 1:
        raise not_found(what)
    return int(text)


def json_response(data: Any, status: int = 200) -> web.Response:
    """Answer JSON."""
    return web.Response(
        status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json"
    )
