"""Property-based fuzzing of every operation of the API: no input may get a 5xx.

Every operation of the route table (the one ``/openapi.json`` is made from) gets generated
requests, with a cluster-admin token and with a project member's: path parameters, queries
and bodies that are valid-shaped, valid-shaped with hostile values planted at random depths,
or hostile throughout. Hostile means what a client library would refuse to send and what
the stores and the agents cannot keep: nesting 200,000 deep, integers of thousands of digits,
bytes that are not UTF-8, lone surrogates (sent as the raw bytes ``"\\ud800"``), ``NaN`` and
``Infinity``, Unicode digits and names ending in a newline, wrong types, huge strings.

Every answer must be below 500, an error must be the JSON error object, and a 405 must say
what is allowed. The service runs in-process (a real store and controller, no agents) on
one event loop that each example drives. ``CPLAT_FUZZ_EXAMPLES`` raises the examples per
operation and token for a longer run with fresh random cases.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from cplat.testing.service import ADMIN, Service, running_service, token
from cplat_server.routes import ROUTES, Route
from cplat_server.schemas import MAX_INT, Schema

MEMBER = token("ana", "vision", "member", ttl=86400)
#: Examples per operation and token. The default run is derandomized (the same cases every
#: time, as CI wants); a run with CPLAT_FUZZ_EXAMPLES set draws fresh cases each time.
EXAMPLES = int(os.environ.get("CPLAT_FUZZ_EXAMPLES", "30"))
DERANDOMIZE = "CPLAT_FUZZ_EXAMPLES" not in os.environ
#: A request taking longer than this is a hang, not a slow answer.
REQUEST_TIMEOUT = 20.0
STREAM = "/v1/jobs/stream"
#: Longest request line the HTTP server reads (aiohttp's default ``max_line_size``).
LINE_LIMIT = 8190
LONG_POLL = "/v1/nodes/{name}/assignments"


@dataclass(frozen=True)
class Raw:
    """JSON text spliced into a body as is: what ``json.dumps`` cannot or will not write."""

    data: bytes


# Hostile values -------------------------------------------------------------------------
_DEEP = [Raw(b"[" * n + b"]" * n) for n in (33, 2_000, 200_000)] + [
    Raw(b'{"a":' * 40 + b"1" + b"}" * 40)
]
_NUMBERS = [
    Raw(b"9" * 5000),
    Raw(b"-" + b"9" * 5000),
    Raw(b"1" + b"0" * 30),
    Raw(b"NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"1e400"),
    Raw(b"-1e400"),
    Raw(b"1." + b"5" * 5000),
    2**63,
    -(2**63) - 1,
    MAX_INT + 1,
    -1,
    0.5,
    1.0,
    1e300,
]
_BAD_TEXT = [
    Raw(b'"\\ud800"'),
    Raw(b'"ok\\udfffok"'),
    Raw(b'"\\udc00\\ud800"'),
    Raw(b'"\xff\xfe"'),
    Raw(b'"\xed\xa0\x80"'),  # a surrogate encoded as UTF-8: not UTF-8
    Raw(b'"\xc0\xaf"'),  # an overlong encoding
    "\x00",
    "tr\x00ue",
    "name\n",
    "\u00b2",
    "\u0968",
    "\uff11",
    "x" * 70_000,
    "",
    " ",
    "../../etc/passwd",
]
_BAD_KEYS = [
    {"\ud800": 1},
    {"\x00": "x"},
    {"": None},
    {"A\n": "x"},
    {"x" * 300: "y"},
]
_WRONG_TYPES: list[Any] = [None, True, False, [], {}, [None], {"a": []}, "1", "true"]

#: Text Hypothesis may build from: every code point, lone surrogates included.
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
#: A lone surrogate or a NUL: text no store keeps.
_LONE = st.characters(categories=["Cs"]) | st.just("\x00")


def hostile() -> st.SearchStrategy[Any]:
    """One hostile JSON value."""
    # Hypothesis picks a branch uniformly: text, where most fields are, gets three.
    return st.one_of(
        st.sampled_from(_BAD_TEXT),
        st.sampled_from(_NUMBERS),
        st.tuples(_ANY_TEXT, _LONE, _ANY_TEXT).map("".join),
        st.sampled_from(_DEEP),
        st.sampled_from(_BAD_KEYS),
        st.sampled_from(_WRONG_TYPES),
        _ANY_TEXT,
        st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
    )


# Valid-shaped values from the request schemas -------------------------------------------
#: What the schemas write as "no NUL": Hypothesis' regex strategy would build huge strings.
_FREE_TEXT = "^[^\\u0000]*$"


@st.composite
def from_schema(draw: st.DrawFn, schema: Schema, rate: int, depth: int = 0) -> Any:
    """Draw a value of ``schema``; each node is replaced by a hostile one with ``rate`` %."""
    if rate and draw(st.integers(0, 99)) < rate:
        return draw(hostile())
    if "anyOf" in schema:
        return draw(from_schema(draw(st.sampled_from(schema["anyOf"])), rate, depth))
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = draw(st.sampled_from(kind))
    if kind == "object" or (kind is None and "properties" in schema):
        return draw(_object(schema, rate, depth))
    if kind == "array":
        items = schema.get("items")
        item = from_schema(items, rate, depth + 1) if items is not None else _json_leaf()
        lo = schema.get("minItems", 0)
        return draw(st.lists(item, min_size=lo, max_size=min(schema.get("maxItems", 3), lo + 3)))
    if kind == "string":
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 24), 24)
        pattern = schema.get("pattern")
        if pattern is None or pattern == _FREE_TEXT:
            return draw(st.text(st.characters(exclude_characters="\x00"), min_size=lo, max_size=hi))
        return draw(st.from_regex(pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi))
    if kind == "integer":
        lo, hi = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
        value = draw(st.integers(lo, hi))
        # An integral float is an integer in JSON: the handlers must take 3.0 for 3.
        return float(value) if abs(value) < 2**53 and draw(st.booleans()) else value
    if kind == "number":
        return draw(
            st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
            | st.integers(int(schema.get("minimum", 0)), int(schema.get("maximum", 10)))
        )
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "null":
        return None
    return draw(_json_leaf())


def _object(schema: Schema, rate: int, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    base = st.fixed_dictionaries(
        {k: from_schema(v, rate, depth + 1) for k, v in props.items() if k in required},
        optional={
            k: from_schema(v, rate, depth + 1) for k, v in props.items() if k not in required
        },
    )
    extra = schema.get("additionalProperties", True)
    if extra is False:
        return base
    names = schema.get("propertyNames", {}).get("pattern")
    keys = st.from_regex(names, fullmatch=True) if names else st.text(max_size=8)
    values = from_schema(extra, rate, depth + 1) if isinstance(extra, dict) else _json_leaf()
    more = st.dictionaries(keys.filter(lambda k: k not in props), values, max_size=3)
    return st.tuples(base, more).map(lambda bm: {**bm[1], **bm[0]})


def _json_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))


def dump(value: Any) -> bytes:
    """Serialise ``value`` to JSON bytes, splicing ``Raw`` pieces in as they are.

    ``json.dumps`` escapes lone surrogates (``"\\ud800"``) and writes ``NaN``; numbers of
    thousands of digits and bytes that are not UTF-8 come as ``Raw``.
    """
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        return (
            b"{"
            + b",".join(json.dumps(k).encode() + b":" + dump(v) for k, v in value.items())
            + b"}"
        )
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value).encode()


_WHOLE_BODIES = [
    b"",
    b"null",
    b"[]",
    b"[1,2]",
    b'"x"',
    b"{",
    b"\xef\xbb\xbf{}",  # a byte-order mark
    '{"name": "x"}'.encode("utf-16"),
    b"\xff" * 64,
    b"{}" * 3,
    b'{"a":1,"a":2}',
    b"[" * 200_000 + b"]" * 200_000,
    b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
    b"[" * 200_000,
    b'"\\ud800"',
    b"NaN",
    b"9" * 5000,
]


def body_for(route: Route) -> st.SearchStrategy[bytes | None]:
    """Bodies: none, hostile bytes, or JSON from the route's schema (clean or with plants)."""
    whole = st.one_of(st.sampled_from(_WHOLE_BODIES), st.binary(max_size=64))
    if route.body is None:
        return st.one_of(st.none(), whole, from_schema({}, 0).map(dump))
    schema = route.body
    return st.one_of(
        from_schema(schema, 0).map(dump),
        from_schema(schema, 8).map(dump),
        from_schema(schema, 40).map(dump),
        whole,
        hostile().map(dump),
    )


# Paths and queries ----------------------------------------------------------------------
def _enc(text: str) -> str:
    """Percent-encode ``text`` for a URL; a lone surrogate goes as its UTF-8-like bytes."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


_RAW_SEGMENTS = ["%ED%A0%80", "%FF", "%C0%AF", "%00", "x%0A", "%2E%2E", "%2F", "%25"]
_IDS = ["1", "2", "0", "-1", "01", "99999999999999999999", "9" * 5000, "1.0", "1e3", " 1", "+1"]
_UNICODE_DIGITS = ["\u00b2", "\u0968", "\uff11", "\u0661", "1\n", "\u2167"]
_NAMES = ["0", "vision", "n0", "A", "system", "bad name", "a" * 200, "a\n", ".x", "-x"]


def path_value(param: str) -> st.SearchStrategy[str]:
    """Encoded values of a path parameter (``id``, ``name``, ``project``)."""
    known = _IDS if param == "id" else _NAMES
    plain = st.sampled_from(known + _UNICODE_DIGITS) | _ANY_TEXT.filter(bool)
    return plain.map(_enc) | st.sampled_from(_RAW_SEGMENTS) | st.integers(0, 5).map(str)


def query_for(route: Route) -> st.SearchStrategy[dict[str, str]]:
    """Encoded query parameters: the route's own and a stray one, with any values."""
    names = [q.name for q in route.query] + ["zz"]
    values = (
        st.sampled_from(_IDS + _UNICODE_DIGITS + _NAMES + ["", "PENDING", "true"]).map(_enc)
        | _ANY_TEXT.map(_enc)
        | st.sampled_from(_RAW_SEGMENTS)
        | st.integers(-5, 2000).map(str)
    )
    return st.dictionaries(st.sampled_from(names), values, max_size=len(names))


def _blocks(query: dict[str, str]) -> bool:
    """Whether a long poll or a log follow would wait: a positive ``wait`` as read."""
    wait = query.get("wait")
    return wait is not None and re.fullmatch("[0-9]+", wait) is not None and int(wait[:6]) > 0


def header_value() -> st.SearchStrategy[str]:
    """Values of the request headers a route reads (beyond Authorization)."""
    # No control characters: the client refuses them (CR and LF would end the header).
    return st.sampled_from(["k", "", " ", "x" * 300, "\u00e9", "\u0968", "a\tb"]) | st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20
    )


# The service ----------------------------------------------------------------------------
@dataclass
class Live:
    loop: asyncio.AbstractEventLoop
    svc: Service
    seeded_job: int

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, REQUEST_TIMEOUT))


async def _seed(svc: Service) -> int:
    """Objects the generated ids and names can hit, so that not every call is a 404."""
    job = await svc.submit(MEMBER, name="seeded")
    for method, path, body in (
        ("POST", "/v1/nodes", {"name": "0", "cpu_milli": 8000, "memory_mib": 16384}),
        ("PUT", "/v1/pools/0", {"description": "seeded"}),
        (
            "PUT",
            "/v1/quotas/vision",
            {"nominal": {"cpu_milli": 8000, "memory_mib": 16384, "gpu_milli": 0}},
        ),
    ):
        status, answer = await svc.call(method, path, ADMIN, json=body)
        assert status in (200, 201), (method, path, status, answer)
    return int(job["id"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    # No heartbeats come: the seeded node stays up for the whole run.
    ctx = running_service(tmp_path_factory.mktemp("fuzz"), node_timeout=3600.0)
    svc = loop.run_until_complete(ctx.__aenter__())
    try:
        yield Live(loop, svc, loop.run_until_complete(_seed(svc)))
    finally:
        loop.run_until_complete(ctx.__aexit__(None, None, None))
        loop.close()


async def _send(
    svc: Service,
    method: str,
    path: str,
    tok: str,
    body: bytes | None,
    ctype: str | None,
    extra: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {**(extra or {}), "Authorization": f"Bearer {tok}"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    url = URL(svc.url + path, encoded=True)
    async with svc.session.request(method, url, data=body, headers=headers) as r:
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            return r.status, dict(r.headers), b""  # a stream never ends: the status is enough
        return r.status, dict(r.headers), await r.read()


def _check_answer(status: int, headers: dict[str, str], raw: bytes, what: str) -> None:
    assert status < 500, f"{what} -> {status}: {raw[:500]!r}"
    if len(f"{what} HTTP/1.1") > LINE_LIMIT:
        # The HTTP parser refuses the request line before any route sees it (plain text).
        assert status == 400, what
        return
    if status >= 400:
        assert headers.get("Content-Type", "").startswith("application/json"), what
        err = json.loads(raw)["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str), what
        assert err["field"] is None or isinstance(err["field"], str), what
    if status == 405:
        assert headers.get("Allow"), what


def _route_id(r: Route) -> str:
    return f"{r.method} {r.path}"


@pytest.mark.parametrize("tok", [ADMIN, MEMBER], ids=["cluster-admin", "member"])
@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_no_input_gets_a_server_error(live: Live, route: Route, tok: str, data: Any) -> None:
    path = re.sub(r"{(\w+)}", lambda m: data.draw(path_value(m.group(1)), m.group(1)), route.path)
    query = data.draw(query_for(route), "query")
    if _blocks(query):
        query["wait"] = "0"  # every case would last up to 60 s
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    body = data.draw(body_for(route), "body")
    ctype = data.draw(
        st.sampled_from(["application/json", "application/json", None, "text/plain"]), "ctype"
    )
    extra = {h.name: data.draw(header_value(), h.name) for h in getattr(route, "headers", ())}
    status, headers, raw = live.run(_send(live.svc, route.method, path, tok, body, ctype, extra))
    _check_answer(status, headers, raw, f"{route.method} {path}")


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT", "OPTIONS"])
def test_wrong_methods_are_405_with_allow(live: Live, method: str) -> None:
    for route in ROUTES:
        path = re.sub(r"{\w+}", "0", route.path)
        allowed = {r.method for r in ROUTES if re.sub(r"{\w+}", "0", r.path) == path}
        if method in allowed or (route.path == "/v1/jobs/{id}" and method == "PUT"):
            continue
        status, headers, raw = live.run(_send(live.svc, method, path, ADMIN, None, None))
        _check_answer(status, headers, raw, f"{method} {path}")
        assert status == 405, (method, path, status)
        assert allowed <= set(headers["Allow"].split(",")), (path, headers["Allow"])


def test_the_service_is_whole_after_the_fuzzing(live: Live) -> None:
    async def main() -> None:
        status, health = await live.svc.call("GET", "/healthz")
        assert status == 200 and health["status"] == "ok", health
        status, job = await live.svc.call("GET", f"/v1/jobs/{live.seeded_job}", MEMBER)
        assert status == 200 and job["name"] == "seeded", job
        status, ok = await live.svc.call(
            "POST", "/v1/jobs", MEMBER, json={"name": "after", "command": ["true"]}
        )
        assert status == 201, ok

    live.run(main())


def test_every_operation_is_fuzzed() -> None:
    # The route table is what /openapi.json lists: a new operation is fuzzed without edits.
    from cplat_server.app import VERSION
    from cplat_server.openapi import spec

    listed = {(m.upper(), p) for p, ops in spec(VERSION)["paths"].items() for m in ops}
    assert {(r.method, r.path) for r in ROUTES} == {x for x in listed if x[1].startswith("/v1")}
    assert STREAM in {r.path for r in ROUTES} and LONG_POLL in {r.path for r in ROUTES}
