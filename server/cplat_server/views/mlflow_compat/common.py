"""What every MLflow-compatible endpoint shares: the store, the caller, bodies, errors, audit.

Errors are MLflow's: ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`` with the HTTP
status MLflow gives each code (its client raises ``RestException`` from the JSON). The caller
is the cplat token in ``Authorization: Bearer`` (``MLFLOW_TRACKING_TOKEN``), checked exactly as
on ``/v1``; objects of another project answer ``RESOURCE_DOES_NOT_EXIST``, never
``PERMISSION_DENIED``, so their existence does not leak.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cplat.ml.tracking import TrackingError, TrackingStore
from cplat.ml.tracking.jobs import check_run_scope, run_scope_target
from cplat_server import auth
from cplat_server.auth import Principal
from cplat_server.errors import ApiError
from cplat_server.keys import PRINCIPAL, SECRET, STORE, audit_entry, parse_json
from cplat_server.views.tokens import REVOKED

__all__ = [
    "TRACKING",
    "Call",
    "MlflowError",
    "endpoint",
    "error_response",
    "page",
]

log = logging.getLogger("cplat.server.mlflow")

#: The open tracking store of the app.
TRACKING = web.AppKey("tracking", TrackingStore)

#: MLflow's HTTP status of each error code it answers with (mlflow.exceptions).
STATUS = {
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "INVALID_PARAMETER_VALUE": 400,
    "MALFORMED_REQUEST": 400,
    "BAD_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
}
_FROM_HTTP = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_ALREADY_EXISTS",
    413: "INVALID_PARAMETER_VALUE",
    415: "MALFORMED_REQUEST",
    429: "REQUEST_LIMIT_EXCEEDED",
}


class MlflowError(Exception):
    """An error answered in MLflow's shape.

    Parameters
    ----------
    code
        The MLflow error code (a key of :data:`STATUS`).
    message
        What is wrong.
    field
        The request field at fault, if any (an addition MLflow clients ignore).
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def page(key: str, items: list[Any], token: str | None) -> dict[str, Any]:
    """Return a search answer: ``items`` as JSON under ``key``, and the next page's token."""
    out: dict[str, Any] = {key: [item.to_json() for item in items]}
    if token:
        out["next_page_token"] = token
    return out


def error_response(code: str, message: str, field: str | None = None) -> web.Response:
    """Return MLflow's error JSON with the code's HTTP status."""
    status = STATUS.get(code, 400)
    body: dict[str, Any] = {"error_code": code, "message": message}
    if field:
        body["field"] = field
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def invalid(message: str, field: str | None = None) -> MlflowError:
    """Return an ``INVALID_PARAMETER_VALUE`` error naming ``field``."""
    return MlflowError("INVALID_PARAMETER_VALUE", message, field)


def missing(what: str) -> MlflowError:
    """Return a ``RESOURCE_DOES_NOT_EXIST`` error."""
    return MlflowError("RESOURCE_DOES_NOT_EXIST", f"{what} not found")


@dataclass
class Call:
    """One request to an endpoint: who calls, with what, and what the audit should name."""

    request: web.Request
    who: Principal
    body: dict[str, Any]
    store: TrackingStore
    #: What the call touched and in which project (set by the handler, for the audit).
    target: str = ""
    project: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # --- reading fields -------------------------------------------------------------------

    def has(self, name: str) -> bool:
        """Whether the request gives ``name`` (and not as null)."""
        return self.body.get(name) is not None

    def text(self, name: str, required: bool = False, default: str = "") -> str:
        """Return a string field (``INVALID_PARAMETER_VALUE`` for another type or a gap)."""
        value = self.body.get(name)
        if value is None:
            if required:
                raise invalid(f"missing value for required parameter '{name}'", name)
            return default
        if not isinstance(value, str):
            raise invalid(f"'{name}' must be a string", name)
        if required and not value:
            raise invalid(f"missing value for required parameter '{name}'", name)
        return value

    def integer(
        self, name: str, default: int | None = None, lo: int = -(2**63), hi: int = 2**63 - 1
    ) -> int | None:
        """Return an int64 field: a JSON integer, or decimal text as protobuf JSON writes it."""
        return as_int(self.body.get(name), name, default, lo, hi)

    def search(self) -> dict[str, Any]:
        """Return the arguments every MLflow search shares: filter, page size and token."""
        return {
            "filter_string": self.text("filter") or None,
            "max_results": self.integer("max_results"),
            "page_token": self.text("page_token") or None,
        }

    def flag(self, name: str, default: bool = False) -> bool:
        """Return a boolean field (``true``/``false``, also as text in a query)."""
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise invalid(f"'{name}' must be true or false", name)

    def items(self, name: str) -> list[Any]:
        """Return a list field (a repeated query parameter, or a JSON array)."""
        value = self.body.get(name)
        if value is None:
            return []
        if isinstance(value, str) and self.request.method == "GET":
            return [value]
        if not isinstance(value, list):
            raise invalid(f"'{name}' must be a list", name)
        return value

    def strings(self, name: str) -> list[str]:
        """Return a list of strings."""
        out = self.items(name)
        if not all(isinstance(x, str) for x in out):
            raise invalid(f"'{name}' must be a list of strings", name)
        return out

    def pairs(self, name: str, limit: int = 100_000) -> list[tuple[str, str]]:
        """Return ``[{"key", "value"}, ...]`` (tags, params) as pairs."""
        out = []
        for i, item in enumerate(self.items(name)):
            if not isinstance(item, dict):
                raise invalid(f"'{name}[{i}]' must be an object with key and value", name)
            key, value = item.get("key"), item.get("value", "")
            if not isinstance(key, str) or not isinstance(value, str):
                raise invalid(f"'{name}[{i}]' needs a string key and a string value", name)
            out.append((key, value))
        if len(out) > limit:
            raise invalid(f"'{name}' holds more than {limit} entries", name)
        return out


def as_int(value: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """Return an int64 given as a JSON integer or as decimal text; ``default`` when absent."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise invalid(f"'{name}' must be an integer", name)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
            raise invalid(f"'{name}' must be an integer", name)
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer", name)
    if not lo <= value <= hi:
        raise invalid(f"'{name}' must be in {lo}..{hi}", name)
    return value


def as_float(value: Any, name: str) -> float:
    """Return a double given as a JSON number or as protobuf JSON's text (``"NaN"``, ...)."""
    if isinstance(value, bool):
        raise invalid(f"'{name}' must be a number", name)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in special:
            return special[value]
        try:
            out = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(out):
                return out
    raise invalid(f"'{name}' must be a number", name)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answer = dict[str, Any] | web.Response


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        out: dict[str, Any] = {}
        for key in request.query:
            values = request.query.getall(key)
            out[key] = values if len(values) > 1 else values[0]
        return out
    raw = await request.read()
    if not raw.strip():
        # MLflow's DELETE calls may come without a body; their fields may be in the query.
        return dict(request.query)
    try:
        data = parse_json(raw)
    except ApiError as exc:
        raise MlflowError("MALFORMED_REQUEST", exc.message, exc.field) from None
    if not isinstance(data, dict):
        raise MlflowError("MALFORMED_REQUEST", "the body must be a JSON object", "body")
    return data


def caller(request: web.Request) -> Principal:
    """Return the authenticated caller (``UNAUTHENTICATED`` without a valid token)."""
    try:
        who = auth.verify(
            request.app[SECRET], request.headers.get("Authorization"), request.app[REVOKED]
        )
    except ApiError as exc:
        raise MlflowError("UNAUTHENTICATED", exc.message) from None
    request[PRINCIPAL] = who
    return who


def require(call: Call, project: str, role: str, what: str) -> None:
    """Allow ``role`` or better in ``project``: 404 for another project's, 403 if too weak."""
    try:
        call.who.require(project, role, what)
    except ApiError as exc:
        if exc.status == 404:
            raise missing(what) from None
        raise MlflowError("PERMISSION_DENIED", exc.message) from None


View = Callable[[Call], Awaitable[Answer]]


def endpoint(write: bool, audited: bool = True) -> Callable[[View], Handler]:
    """Wrap a view: authenticate, parse, answer JSON or MLflow's error, audit writes.

    Parameters
    ----------
    write
        Whether the call changes anything.
    audited
        Whether a write goes to the audit log. Metric, param and tag logging do not: they
        are telemetry at the rate of a training loop (as agents' heartbeats are on ``/v1``).
    """

    def wrap(fn: View) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            call: Call | None = None
            try:
                who = caller(request)
                call = Call(request, who, await _body(request), request.app[TRACKING])
                if write and who.run_id:
                    # A job's token writes to the job's run only (cplat.ml.tracking.jobs).
                    target = await run_scope_target(request.path, call.body, call.store)
                    check_run_scope(who.run_id, target, f"{request.method} {request.path}")
                answer = await fn(call)
                resp = (
                    answer
                    if isinstance(answer, web.Response)
                    else web.Response(
                        text=json.dumps(answer, separators=(",", ":")),
                        content_type="application/json",
                    )
                )
            except MlflowError as exc:
                resp = error_response(exc.code, exc.message, exc.field)
            except TrackingError as exc:
                resp = error_response(exc.code, exc.message, exc.field)
            except ApiError as exc:
                resp = error_response(
                    _FROM_HTTP.get(exc.status, "BAD_REQUEST"), exc.message, exc.field
                )
            except web.HTTPRequestEntityTooLarge as exc:
                resp = error_response("INVALID_PARAMETER_VALUE", exc.text or "body too large")
            if write and audited and call is not None:
                entry = audit_entry(
                    request,
                    resp.status,
                    target=call.target or request.path,
                    project=call.project if call.project is not None else call.who.project,
                )
                await request.app[STORE].append_audit([entry])
            return resp

        handler.__doc__ = fn.__doc__
        handler.__name__ = fn.__name__
        return handler

    return wrap
