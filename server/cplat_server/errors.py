"""JSON errors: ``{"error": {"code", "message", "field"}}`` with the right HTTP status."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


class ApiError(Exception):
    """An error the caller can act on; becomes a JSON answer with ``status``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def response(self) -> web.Response:
        """Return the JSON answer for this error."""
        return error_response(self.status, self.code, self.message, self.field)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return ``{"error": {...}}`` with ``status`` (and ``headers``, such as ``Allow``)."""
    body = {"error": {"code": code, "message": message, "field": field}}
    out = dict(headers or {})
    if status == 401:
        out["WWW-Authenticate"] = "Bearer"
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=out or None,
    )


def bad_request(message: str, field: str | None = None) -> ApiError:
    """Return a 400 ``invalid`` error naming ``field``."""
    return ApiError(400, "invalid", message, field)


def not_found(what: str) -> ApiError:
    """Return a 404 for an object the caller cannot see (missing or another project's)."""
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> ApiError:
    """Return a 403 for a role too weak for the verb."""
    return ApiError(403, "forbidden", message)


def conflict(message: str, field: str | None = None) -> ApiError:
    """Return a 409 for a request that does not fit the object's state."""
    return ApiError(409, "conflict", message, field)
