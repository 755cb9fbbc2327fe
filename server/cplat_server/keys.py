"""Typed application keys and request helpers shared by the views."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from cplat.store.base import AuditIn, Store
from cplat_server.auth import Principal
from cplat_server.config import ServiceConfig
from cplat_server.errors import ApiError, bad_request, not_found
from cplat_server.loop import Controller
from cplat_server.metrics import Metrics
from cplat_server.schemas import (
    MAX_DEPTH,
    MAX_INT,
    MAX_INT_DIGITS,
    LongInt,
    Schema,
    check_values,
    pattern_matches,
    validate,
)

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


#: Every byte but the four brackets (deleted to leave a body's bracket skeleton).
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
#: An integer as text in a path or query: ASCII digits only (``int()`` would also take
#: ``"\u0968"``, ``" 7"``, ``"+7"`` and ``"1_0"``; ``str.isdigit()`` takes ``"\u00b2"``).
_ASCII_INT = re.compile(r"-?[0-9]+", re.ASCII)


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON ``raw`` may nest arrays and objects deeper than ``limit``.

    Checked before parsing: the parser recurses once per level and fails with a
    ``RecursionError`` deep down (200,000 levels take a few hundred kilobytes). Everything
    here runs at C speed (a megabyte in milliseconds); no loop visits each byte in Python.
    Exact for JSON; for other text it errs towards True only where the parser would fail.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    # Brackets inside strings are text. Escapes pair left to right as the parser pairs
    # them (outside strings a backslash is an error anyway), so once they are gone every
    # quote left opens or closes a string, and strings are the odd pieces between quotes.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if re.search(rb"[\[{]{%d}" % (limit + 1), skeleton):
        return True  # a run of openers deeper than the limit
    # Each pass strips the innermost level: empty within `limit` passes means shallow enough.
    removed = 0
    while skeleton and removed < limit:
        shorter = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(skeleton):
            break  # unbalanced: not JSON, yet the parser may recurse before it finds out
        skeleton = shorter
        removed += 1
    # What is left can nest at most one level per bracket deeper than what was removed.
    return bool(skeleton) and removed + len(skeleton) > limit


def _parse_int(literal: str) -> int | LongInt:
    # Longer literals are out of every field's range; converting them costs quadratic time
    # and raises ValueError past 4,300 digits, so they stay text until check_values.
    return LongInt(literal) if len(literal) > MAX_INT_DIGITS else int(literal)


def parse_json(raw: bytes) -> Any:
    """Parse a request body: UTF-8 JSON, bounded depth, storable text and numbers.

    Raises
    ------
    ApiError
        400 naming ``body`` for bytes that are not UTF-8 JSON or nest deeper than
        ``MAX_DEPTH``, and naming the field for a lone surrogate, a NUL, ``NaN``,
        ``Infinity`` or an integer too long to be in range.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"body is not UTF-8 (byte {exc.start})", "body") from None
    if nesting_exceeds(raw, MAX_DEPTH):
        raise bad_request(f"body nests arrays and objects deeper than {MAX_DEPTH} levels", "body")
    try:
        data: Any = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON ({exc})", "body") from None
    check_values(data)
    return data


async def read_json(request: web.Request, schema: Schema) -> Any:
    """Parse and validate a JSON body.

    Raises
    ------
    ApiError
        415 for a body that is not JSON, 400 naming the field for invalid JSON, unstorable
        values (see `parse_json`) or a schema violation.
    """
    ctype = request.content_type
    if request.can_read_body and ctype not in ("application/json", "application/octet-stream"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()
    if not raw:
        raise bad_request("this call needs a JSON body", "body")
    data = parse_json(raw)
    validate(data, schema)
    return data


def ascii_int(text: str) -> int | None:
    """Return ``text`` as an integer if it is ASCII digits (with an optional ``-``), else None.

    Texts longer than ``MAX_INT_DIGITS`` come back as ``MAX_INT + 1``: out of every range,
    without converting thousands of digits.
    """
    if _ASCII_INT.fullmatch(text) is None:
        return None
    if len(text) > MAX_INT_DIGITS:
        return -MAX_INT - 1 if text.startswith("-") else MAX_INT + 1
    return int(text)


def query_int(
    request: web.Request, name: str, default: int | None, lo: int = 0, hi: int = MAX_INT
) -> int | None:
    """Return an integer query parameter in ``[lo, hi]`` (400 naming it otherwise)."""
    text = request.query.get(name)
    if text is None:
        return default
    value = ascii_int(text)
    if value is None:
        raise bad_request(f"{name} must be an integer (ASCII digits)", name)
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be in {lo}..{hi}", name)
    return value


def query_id(request: web.Request, name: str) -> int | None:
    """Return an id-valued query parameter such as a cursor (400 naming it if malformed)."""
    text = request.query.get(name)
    if text is None:
        return None
    value = ascii_int(text)
    if value is None or value < 0 or value > MAX_INT:
        raise bad_request(f"invalid {name}: expected the ASCII digits of an id", name)
    return value


def query_name(request: web.Request, name: str, pattern: str) -> str | None:
    """Return a name-valued query filter, None when absent or empty (400 if malformed)."""
    text = request.query.get(name) or None
    if text is not None and not pattern_matches(pattern, text):
        raise bad_request(f"{name} has an invalid format ({pattern})", name)
    return text


def path_int(request: web.Request, name: str, what: str) -> int:
    """Return an integer path parameter (404 when it cannot name an object)."""
    value = ascii_int(request.match_info[name])
    if value is None or not 1 <= value <= MAX_INT:
        raise not_found(what)
    return value


def path_name(
    request: web.Request, name: str, pattern: str, what: str, creates: bool = False
) -> str:
    """Return a name-valued path parameter.

    Raises
    ------
    ApiError
        For a name ``pattern`` does not match: 404 when it would name an existing object
        (none can have it), 400 naming the parameter when the call ``creates`` one.
    """
    value = request.match_info[name]
    if not pattern_matches(pattern, value):
        if creates:
            raise bad_request(f"{name} has an invalid format ({pattern})", name)
        raise not_found(what)
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    """Answer JSON."""
    return web.Response(
        status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json"
    )
