"""Bad input gets a 4xx naming the field: never a 500, never a job that wedges its node.

One regression test per hole the API had: integers of thousands of digits, nesting 200,000
deep, lone surrogates anywhere in a body (keys too), NaN and Infinity, Unicode digits taken
as ids, names with a trailing newline, 405 answers without ``Allow``. Bodies go as raw
bytes: a client library would refuse to encode most of them. After each batch, what was
accepted before is still there and a valid call still works.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from cplat.testing.service import ADMIN, Service, running_service, token
from cplat_server.errors import ApiError
from cplat_server.keys import ascii_int, nesting_exceeds, parse_json
from cplat_server.schemas import MAX_DEPTH, NAME, TEXT, pattern_matches

MEMBER = token("mia", "vision", "member")
QUOTA = b'{"nominal":{"cpu_milli":1,"memory_mib":1,"gpu_milli":0}'
NODE = "n0"


async def send(
    svc: Service, method: str, path: str, tok: str, body: bytes | None = None
) -> tuple[int, Any, dict[str, str]]:
    """Send ``body`` as is to the percent-encoded ``path``."""
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    url = URL(svc.url + path, encoded=True)
    async with svc.session.request(method, url, data=body, headers=headers) as r:
        ctype = r.headers.get("Content-Type", "")
        out = await r.json() if "json" in ctype else await r.text()
        return r.status, out, dict(r.headers)


def run(tmp: Path, main: Callable[[Service, list[int]], Awaitable[list[int] | None]]) -> None:
    """Run ``main`` against a service holding a node, a pool and two jobs.

    ``main`` returns the ids of the jobs it had accepted, if any. Then the jobs listed must
    be exactly those, the pool must be unchanged, and a valid submission must still work.
    """

    async def go() -> None:
        async with running_service(tmp, node_timeout=3600.0) as svc:
            st, _ = await svc.call(
                "POST", "/v1/nodes", ADMIN, json={"name": NODE, "cpu_milli": 1, "memory_mib": 1}
            )
            assert st in (200, 201)
            st, _ = await svc.call("PUT", "/v1/pools/p", ADMIN, json={"description": "kept"})
            assert st == 200
            ids = [(await svc.submit(MEMBER, name=f"kept{i}"))["id"] for i in range(2)]
            accepted = ids + (await main(svc, ids) or [])
            _, page = await svc.call("GET", "/v1/jobs", MEMBER)
            assert [j["id"] for j in page["jobs"]] == accepted, page
            _, pools = await svc.call("GET", "/v1/pools", ADMIN)
            assert [(p["name"], p["description"]) for p in pools["pools"]] == [("p", "kept")]
            after = await svc.submit(MEMBER, name="after")
            assert after["id"] == accepted[-1] + 1

    asyncio.run(go())


async def expect(
    svc: Service,
    method: str,
    path: str,
    tok: str,
    body: bytes | None,
    status: int,
    field: str | None,
) -> dict[str, Any]:
    got, out, _ = await send(svc, method, path, tok, body)
    what = f"{method} {path} {body[:80] if body else b''!r}"
    assert got == status, (what, got, out)
    assert out["error"]["field"] == field, (what, out)
    return dict(out["error"])


HUGE = b"9" * 5000


def test_integers_of_thousands_of_digits_are_400(tmp_path: Path) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        for method, path, tok, body, field in (
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"priority":%s}',
                "priority",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"priority":-%s}',
                "priority",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"tasks":{"resources":{"cpu_milli":%s}}}',
                "tasks.resources.cpu_milli",
            ),
            (
                "PUT",
                "/v1/quotas/vision",
                ADMIN,
                b'{"nominal":{"cpu_milli":%s,"memory_mib":1,"gpu_milli":0}}',
                "nominal.cpu_milli",
            ),
            (
                "POST",
                f"/v1/nodes/{NODE}/heartbeat",
                ADMIN,
                b'{"tasks":[{"job_id":%s,"attempt":0,"rank":0,"state":"running"}]}',
                "tasks[0].job_id",
            ),
            ("POST", f"/v1/jobs/{ids[0]}/checkpoints", MEMBER, b'{"step":%s,"uri":"u"}', "step"),
            # Where no schema names the field, the parser still does.
            (
                "POST",
                "/v1/nodes",
                ADMIN,
                b'{"name":"g","cpu_milli":1,"memory_mib":1,'
                b'"gpus":[{"index":0,"mig_instances":[%s]}]}',
                "gpus[0].mig_instances[0]",
            ),
        ):
            err = await expect(svc, method, path, tok, body % HUGE, 400, field)
            assert "out of range" in err["message"], err

    run(tmp_path, main)


def test_nesting_200000_deep_is_400(tmp_path: Path) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000

    async def main(svc: Service, ids: list[int]) -> list[int]:
        for method, path, tok, body in (
            ("POST", "/v1/jobs", MEMBER, deep),
            ("POST", "/v1/jobs", MEMBER, b'{"name":"x","command":' + deep + b"}"),
            ("POST", "/v1/jobs", MEMBER, b'{"a":' * 150_000 + b"1" + b"}" * 150_000),
            ("POST", "/v1/jobs", MEMBER, b"[" * 200_000),  # never closed
            ("POST", f"/v1/nodes/{NODE}/heartbeat", ADMIN, b'{"tasks":' + deep + b"}"),
            ("PUT", "/v1/pools/p", ADMIN, b'{"description":' + deep + b"}"),
        ):
            err = await expect(svc, method, path, tok, body, 400, "body")
            assert f"deeper than {MAX_DEPTH}" in err["message"], err
        # The bound is on structure, not on brackets inside strings.
        ok = b'{"name":"brackets","command":["echo","' + b"[{" * 5000 + b'"]}'
        st, job, _ = await send(svc, "POST", "/v1/jobs", MEMBER, ok)
        assert st == 201 and job["command"][1] == "[{" * 5000, job
        # Nesting up to the bound is fine where a schema allows it (a GPU's MIG list).
        inner = MAX_DEPTH - 4  # body, gpus, the GPU, mig_instances
        mig = b"[" * inner + b"]" * inner
        node = b'{"name":"m","cpu_milli":1,"memory_mib":1,"gpus":[{"index":0,"mig_instances":'
        st, out, _ = await send(svc, "POST", "/v1/nodes", ADMIN, node + b"[" + mig + b"]}]}")
        assert st == 201, out
        too_deep = node + b"[[" + mig + b"]]}]}"
        await expect(svc, "POST", "/v1/nodes", ADMIN, too_deep, 400, "body")
        return [job["id"]]

    run(tmp_path, main)


SURROGATE = b"\\ud800"


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"ok\\udc00ok", b"\\udc00\\ud800"])
def test_lone_surrogates_anywhere_are_400(tmp_path: Path, escape: bytes) -> None:
    def s(text: bytes) -> bytes:
        return text.replace(b"@", escape)

    async def main(svc: Service, ids: list[int]) -> None:
        job = ids[0]
        cases: list[tuple[str, str, str, bytes, str]] = [
            ("PUT", "/v1/pools/p", ADMIN, s(b'{"description":"@"}'), "description"),
            ("PUT", "/v1/pools/q", ADMIN, s(b'{"description":"@"}'), "description"),
            ("POST", f"/v1/jobs/{job}/checkpoints", MEMBER, s(b'{"step":1,"uri":"@"}'), "uri"),
            (
                "POST",
                f"/v1/jobs/{job}/logs",
                ADMIN,
                s(
                    b'{"chunks":[{"attempt":0,"rank":0,"data":"fine"},{"attempt":0,"rank":0,"data":"@"}]}'
                ),
                "chunks[1].data",
            ),
            ("POST", "/v1/jobs", MEMBER, s(b'{"name":"x","command":["echo","@"]}'), "command[1]"),
            ("POST", "/v1/jobs", MEMBER, s(b'{"name":"x","command":"echo @"}'), "command"),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                s(b'{"name":"x","command":["true"],"env":{"A":"@"}}'),
                "env.A",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                s(b'{"name":"x","command":["true"],"workdir":"@"}'),
                "workdir",
            ),
            ("POST", "/v1/jobs", MEMBER, s(b'{"name":"@","command":["true"]}'), "name"),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                s(b'{"name":"x","project":"@","command":["true"]}'),
                "project",
            ),
            (
                "POST",
                "/v1/nodes",
                ADMIN,
                s(b'{"name":"n1","cpu_milli":1,"memory_mib":1,"labels":{"rack":"@"}}'),
                "labels.rack",
            ),
            (
                "POST",
                f"/v1/nodes/{NODE}/tasks",
                ADMIN,
                s(b'{"job_id":%d,"attempt":0,"rank":0,"state":"running","reason":"@"}' % job),
                "reason",
            ),
            (
                "POST",
                f"/v1/nodes/{NODE}/heartbeat",
                ADMIN,
                s(b'{"gpus":[{"index":0,"healthy":false,"reason":"@"}]}'),
                "gpus[0].reason",
            ),
        ]
        for method, path, tok, body, field in cases:
            err = await expect(svc, method, path, tok, body, 400, field)
            assert "lone surrogate" in err["message"], err
        # In keys, the field names the key with the surrogate escaped (JSON-safe text).
        body = s(b'{"name":"x","command":["true"],"env":{"@":"1"}}')
        err = await expect(
            svc, "POST", "/v1/jobs", MEMBER, body, 400, "env." + escape.decode("ascii")
        )
        assert "lone surrogate" in err["message"], err
        body = s(b'{"name":"n2","cpu_milli":1,"memory_mib":1,"labels":{"@":"x"}}')
        err = await expect(
            svc, "POST", "/v1/nodes", ADMIN, body, 400, "labels." + escape.decode("ascii")
        )
        # Nothing of the refused logs was kept (the valid chunk came in the same request).
        _, logs = await svc.call("GET", f"/v1/jobs/{job}/logs", MEMBER)
        assert logs["logs"] == [], logs

    run(tmp_path, main)


def test_text_that_is_not_utf8_or_holds_nul_is_400(tmp_path: Path) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        for body, field in (
            (b'{"name":"x","command":["\xff"]}', "body"),
            (b'{"name":"x","command":["\xed\xa0\x80"]}', "body"),  # a surrogate in UTF-8 form
            (b"\xff\xfe{\x00}\x00", "body"),
            ('{"name": "x", "command": ["true"]}'.encode("utf-16"), "body"),
            (b'{"name":"x","command":["true"],"env":{"A":"a\\u0000b"}}', "env.A"),
            (b'{"name":"x","command":["true"],"env":{"\\u0000":"1"}}', "env.\\x00"),
        ):
            await expect(svc, "POST", "/v1/jobs", MEMBER, body, 400, field)
        body = b'{"name":"n3","cpu_milli":1,"memory_mib":1,"labels":{"a\\u0000":"x"}}'
        await expect(svc, "POST", "/v1/nodes", ADMIN, body, 400, "labels.a\\x00")

    run(tmp_path, main)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_nan_and_infinity_are_400(tmp_path: Path, literal: bytes) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        for method, path, tok, body, field in (
            ("PUT", "/v1/quotas/vision", ADMIN, QUOTA + b',"overcommit":%s}', "overcommit"),
            (
                "PUT",
                "/v1/quotas/vision",
                ADMIN,
                b'{"nominal":{"cpu_milli":%s,"memory_mib":1,"gpu_milli":0}}',
                "nominal.cpu_milli",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"priority":%s}',
                "priority",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"env":{"A":%s}}',
                "env.A",
            ),
            (
                "POST",
                f"/v1/jobs/{ids[0]}/checkpoints",
                MEMBER,
                b'{"step":1,"uri":"u","size_bytes":%s}',
                "size_bytes",
            ),
            (
                "POST",
                "/v1/nodes",
                ADMIN,
                b'{"name":"g","cpu_milli":1,"memory_mib":1,"gpus":[{"index":0,"extra":%s}]}',
                "gpus[0].extra",
            ),
        ):
            err = await expect(svc, method, path, tok, body % literal, 400, field)
            assert "finite" in err["message"], err
        _, quotas = await svc.call("GET", "/v1/quotas", ADMIN)
        assert quotas["quotas"] == []
        # A finite overcommit is still taken.
        st, out, _ = await send(
            svc, "PUT", "/v1/quotas/vision", ADMIN, QUOTA + b',"overcommit":1.5}'
        )
        assert st == 200 and out["overcommit"] == 1.5, out

    run(tmp_path, main)


def test_ids_are_ascii_digits_only(tmp_path: Path) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        assert ids == [1, 2]
        # Job 2 exists: DEVANAGARI DIGIT TWO, SUPERSCRIPT TWO and FULLWIDTH DIGIT TWO must not
        # name it, and neither may other spellings int() takes.
        for segment in ("%E0%A5%A8", "%C2%B2", "%EF%BC%92", "%D9%A2", "+2", "%202", "2%20", "2%0A"):
            for suffix in ("", "/events", "/logs", "/checkpoints"):
                await expect(svc, "GET", f"/v1/jobs/{segment}{suffix}", MEMBER, None, 404, None)
            await expect(svc, "POST", f"/v1/jobs/{segment}/cancel", MEMBER, None, 404, None)
        st, job, _ = await send(svc, "GET", "/v1/jobs/2", MEMBER)
        assert st == 200 and job["id"] == 2
        st, job, _ = await send(svc, "GET", "/v1/jobs/0002", MEMBER)
        assert st == 200 and job["id"] == 2  # leading zeros are still ASCII digits
        for query, field in (
            ("cursor=%C2%B2", "cursor"),
            ("cursor=%E0%A5%A8", "cursor"),
            ("cursor=-1", "cursor"),
            ("cursor=1%0A", "cursor"),
            ("cursor=" + "9" * 5000, "cursor"),
            ("limit=%E0%A5%A8", "limit"),
            ("limit=1_0", "limit"),
            ("limit=+5", "limit"),
            ("limit=%205", "limit"),
            ("limit=" + "9" * 5000, "limit"),
        ):
            await expect(svc, "GET", f"/v1/jobs?{query}", MEMBER, None, 400, field)
        for query, field in (("after=%C2%B2", "after"), ("limit=%EF%BC%91", "limit")):
            await expect(svc, "GET", f"/v1/jobs/1/events?{query}", MEMBER, None, 400, field)
        for query, field in (("rank=%E0%A5%A6", "rank"), ("attempt=%C2%B9", "attempt")):
            await expect(svc, "GET", f"/v1/jobs/1/logs?{query}", MEMBER, None, 400, field)
        await expect(
            svc, "GET", f"/v1/nodes/{NODE}/assignments?wait=%E0%A5%A7", ADMIN, None, 400, "wait"
        )
        await expect(svc, "GET", "/v1/audit?after=%C2%B2", ADMIN, None, 400, "after")
        _, page = await svc.call("GET", "/v1/jobs?cursor=1", MEMBER)
        assert [j["id"] for j in page["jobs"]] == [2]

    run(tmp_path, main)


def test_names_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        for method, path, tok, body, field in (
            ("POST", "/v1/jobs", MEMBER, b'{"name":"x\\n","command":["true"]}', "name"),
            (
                "POST",
                "/v1/jobs",
                ADMIN,
                b'{"name":"x","project":"vision\\n","command":["true"]}',
                "project",
            ),
            (
                "POST",
                "/v1/jobs",
                MEMBER,
                b'{"name":"x","command":["true"],"env":{"A\\n":"1"}}',
                "env.A\n",
            ),
            ("POST", "/v1/nodes", ADMIN, b'{"name":"n\\n","cpu_milli":1,"memory_mib":1}', "name"),
            ("PUT", "/v1/quotas/vision", ADMIN, QUOTA + b',"pool":"p\\n"}', "pool"),
            ("PUT", "/v1/pools/p%0A", ADMIN, b"{}", "name"),
            ("PUT", "/v1/quotas/vision%0A", ADMIN, QUOTA + b"}", "project"),
            ("GET", "/v1/jobs?project=vision%0A", ADMIN, None, "project"),
            ("GET", "/v1/audit?project=vision%0A", ADMIN, None, "project"),
            ("GET", "/v1/jobs/stream?project=vision%0A", ADMIN, None, "project"),
        ):
            await expect(svc, method, path, tok, body, 400, field)
        for method, path in (
            ("GET", f"/v1/nodes/{NODE}%0A"),
            ("POST", f"/v1/nodes/{NODE}%0A/cordon"),
            ("DELETE", "/v1/pools/p%0A"),
            ("DELETE", "/v1/quotas/vision%0A"),
        ):
            await expect(svc, method, path, ADMIN, None, 404, None)
        _, nodes = await svc.call("GET", "/v1/nodes", ADMIN)
        assert [n["name"] for n in nodes["nodes"]] == [NODE]
        _, page = await svc.call("GET", "/v1/jobs?user=mia%0A", MEMBER)
        assert page["jobs"] == []  # a user filter is free text: it matches no one

    run(tmp_path, main)


def test_405_answers_say_what_is_allowed(tmp_path: Path) -> None:
    async def main(svc: Service, ids: list[int]) -> None:
        for method, path, allowed in (
            ("DELETE", "/v1/jobs", {"GET", "POST"}),
            ("PUT", "/v1/jobs/1", {"GET"}),
            ("GET", "/v1/jobs/1/cancel", {"POST"}),
            ("PATCH", "/v1/pools/p", {"PUT", "DELETE"}),
            ("POST", "/v1/cluster", {"GET"}),
        ):
            st, out, headers = await send(svc, method, path, ADMIN)
            assert st == 405 and out["error"]["code"] == "method_not_allowed", (path, out)
            assert allowed <= set(headers["Allow"].split(",")), (path, headers.get("Allow"))

    run(tmp_path, main)


def test_the_parser_alone() -> None:
    assert parse_json(b'{"a":[1,2.5,"x",null,true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json(("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()) is not None

    def deep(value: Any) -> bool:
        return nesting_exceeds(json.dumps(value).encode(), MAX_DEPTH)

    def nest(n: int, inner: Any = 1) -> Any:
        for i in range(n):
            inner = [inner] if i % 2 else {"k": inner}
        return inner

    assert not deep(nest(MAX_DEPTH)) and deep(nest(MAX_DEPTH + 1))
    assert not deep([nest(MAX_DEPTH - 1)] * 50)  # wide is fine, however many brackets
    assert nesting_exceeds(b"[" * (MAX_DEPTH + 1), MAX_DEPTH)  # never closed
    # Brackets in strings, escaped quotes and backslashes included, are text...
    assert not deep(["[" * 100, '\\"[[[' * 50, "\\" * 7 + "{" * 40, "]" * 40])
    assert not deep({"[" * 40: nest(MAX_DEPTH - 1, "]]]")})
    # ...and cannot hide real depth: ["]",["]",[... nests 41 deep.
    assert nesting_exceeds(b"[" + b'"]",[' * 40 + b"1" + b"]" * 41, MAX_DEPTH)
    assert nesting_exceeds(b"[" + b'"\\\\",[' * 40 + b"1" + b"]" * 41, MAX_DEPTH)
    for broken in (b"[" * 40 + b"}" * 40, b'["' + b"[" * 40, b"{[}" * 40):
        # Not JSON: whatever the answer, parse_json refuses it with 400 naming the body.
        with pytest.raises(ApiError) as exc:
            parse_json(broken)
        assert exc.value.field == "body"
    for raw, field in (
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "body"),
        (b'{"a":{"b":[0,"\\ud800"]}}', "a.b[1]"),
        (b'{"a":[NaN]}', "a[0]"),
        (b'{"a":' + HUGE + b"}", "a"),
        (b"\xc3", "body"),
        (b"{", "body"),
    ):
        with pytest.raises(ApiError) as exc:
            parse_json(raw)
        assert exc.value.status == 400 and exc.value.field == field, (raw[:40], exc.value.message)
    assert [ascii_int(t) for t in ("7", "-7", "007")] == [7, -7, 7]
    for text in ("\u0967", "\u00b2", "\uff17", "+7", " 7", "7\n", "1_0", "", "-"):
        assert ascii_int(text) is None, text
    assert ascii_int("9" * 5000) == 2**53  # out of every range, without converting it
    assert pattern_matches(NAME, "a.b-c_1") and not pattern_matches(NAME, "a\n")
    assert not pattern_matches(NAME, "\u0967")  # ECMA classes are ASCII
    assert pattern_matches(TEXT, "line\n") and not pattern_matches(TEXT, "a\x00")
