"""Idempotent submissions: ``Idempotency-Key`` on ``POST /v1/jobs``, kept by the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cplat.cli.main import main
from cplat.client import ApiError, Client
from cplat.store import AuditIn, IdempotencyIn, NewJob, Store, StoreError, open_store
from cplat.store.schema import MIGRATIONS
from cplat.testing.service import PG_DSN, Service, running_service, token

ANA = token("ana", "vision", "member")
KEY = "Idempotency-Key"
JOB = {"name": "train", "command": ["true"], "tasks": {"resources": {"cpu_milli": 100}}}


async def post(svc: Service, tok: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {KEY: key} if key is not None else {}
    return await svc.call("POST", "/v1/jobs", tok, json=body or JOB, headers=headers)


async def job_ids(svc: Service, tok: str) -> list[int]:
    status, page = await svc.call("GET", "/v1/jobs", tok)
    assert status == 200, page
    return [j["id"] for j in page["jobs"]]


# The API ------------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_first_job(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            key = str(uuid.uuid4())
            st, first = await post(svc, ANA, key)
            assert st == 201, first
            async with svc.session.post(
                svc.url + "/v1/jobs",
                json=JOB,
                headers={KEY: key, "Authorization": f"Bearer {ANA}"},
            ) as r:
                again = await r.json()
                assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
            assert again["id"] == first["id"] and again["name"] == "train"
            # A retry that spells a default out is the same submission.
            st, same = await post(svc, ANA, key, {**JOB, "priority": 0, "project": "vision"})
            assert (st, same["id"]) == (200, first["id"])
            assert await job_ids(svc, ANA) == [first["id"]]
            # Without a key, or with a fresh one, each submission is a new job.
            assert (await post(svc, ANA, None))[0] == 201
            assert (await post(svc, ANA, str(uuid.uuid4())))[0] == 201
            assert len(await job_ids(svc, ANA)) == 3
            # The key is the caller's: another user (or project) with it gets its own job.
            bob = token("bob", "vision", "member")
            st, other = await post(svc, bob, key)
            assert st == 201 and other["id"] != first["id"]
            st, other = await post(svc, token("ana", "speech", "member"), key)
            assert st == 201 and other["id"] != first["id"]

    asyncio.run(main_())


def test_the_same_key_with_another_body_is_a_conflict(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            st, first = await post(svc, ANA, "k-1")
            assert st == 201
            st, err = await post(svc, ANA, "k-1", {**JOB, "command": ["false"]})
            assert st == 409, err
            assert err["error"]["field"] == KEY and str(first["id"]) in err["error"]["message"]
            assert await job_ids(svc, ANA) == [first["id"]]

    asyncio.run(main_())


def test_concurrent_duplicates_create_one_job(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            key = str(uuid.uuid4())
            answers = await asyncio.gather(*(post(svc, ANA, key) for _ in range(20)))
            statuses = sorted(st for st, _ in answers)
            assert statuses == [200] * 19 + [201], answers
            assert len({body["id"] for _, body in answers}) == 1
            assert await job_ids(svc, ANA) == [answers[0][1]["id"]]

    asyncio.run(main_())


def test_keys_survive_a_restart_and_expire(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            st, first = await post(svc, ANA, "survivor")
            assert st == 201
        async with running_service(tmp_path, idempotency_ttl=1) as svc:
            st, again = await post(svc, ANA, "survivor")
            assert (st, again["id"]) == (200, first["id"])
            st, short = await post(svc, ANA, "brief")
            assert st == 201
            await asyncio.sleep(1.2)
            st, fresh = await post(svc, ANA, "brief")
            assert st == 201 and fresh["id"] != short["id"]

    asyncio.run(main_())


async def raw_post(svc: Service, header: bytes, body: bytes) -> tuple[int, Any]:
    """POST /v1/jobs with header bytes sent exactly as given (clients would refuse some)."""
    host, port = svc.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: Bearer {ANA}\r\nContent-Type: application/json\r\n".encode()
            + header
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(payload) if payload.strip().startswith(b"{") else payload


def test_invalid_keys_are_refused_naming_the_header(tmp_path: Path) -> None:
    body = json.dumps(JOB).encode()

    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            for header in (
                b"Idempotency-Key: " + b"k" * 129 + b"\r\n",
                b"Idempotency-Key: caf\xc3\xa9\r\n",
                b"Idempotency-Key: a\tb\r\n",
                b"Idempotency-Key: \r\n",
                b"Idempotency-Key: one\r\nIdempotency-Key: two\r\n",
            ):
                st, err = await raw_post(svc, header, body)
                assert st == 400, (header, err)
                assert err["error"]["field"] == KEY, (header, err)
            st, ok = await raw_post(svc, b"Idempotency-Key: " + b"k" * 128 + b"\r\n", body)
            assert st == 201, ok
            assert len(await job_ids(svc, ANA)) == 1

    asyncio.run(main_())


def test_the_header_is_in_the_api_document(tmp_path: Path) -> None:
    from cplat_server.openapi import spec

    op = spec("x")["paths"]["/v1/jobs"]["post"]
    [param] = [p for p in op["parameters"] if p["name"] == KEY]
    assert param["in"] == "header" and param["schema"]["maxLength"] == 128
    assert {"200", "201", "409"} <= set(op["responses"])


# The client and the command line -----------------------------------------------------------


@contextlib.asynccontextmanager
async def lossy_proxy(
    svc: Service, lose: int, fail: int = 0
) -> AsyncIterator[tuple[list[str], str]]:
    """Run a proxy in front of ``svc`` that loses answers.

    It answers the first ``fail`` submissions 503 without passing them on, then passes the
    next ``lose`` on but drops their answers (the job is created; the client never hears so).
    Yields the Idempotency-Key of every submission it saw, and its URL.
    """
    keys: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST":
            keys.append(request.headers.get(KEY, ""))
            if len(keys) <= fail:
                return web.json_response({"error": {"code": "busy"}}, status=503)
        passed = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")
        }
        async with svc.session.request(
            request.method, svc.url + request.path_qs, data=body, headers=passed
        ) as r:
            payload, status = await r.read(), r.status
        if request.method == "POST" and fail < len(keys) <= fail + lose:
            assert request.transport is not None
            request.transport.close()  # the answer is lost on the way back
            raise ConnectionResetError("answer dropped")
        return web.Response(body=payload, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield keys, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_the_client_retries_a_lost_answer_with_the_same_key(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            async with lossy_proxy(svc, lose=1, fail=1) as (keys, url):
                client = Client(url, ANA, timeout=10)
                job = await asyncio.to_thread(client.submit, "lost", ["true"], cpu_milli=100)
                assert len(keys) == 3 and len(set(keys)) == 1, keys
                assert uuid.UUID(keys[0]).version == 4
                assert await job_ids(svc, ANA) == [job["id"]]
                # Each logical submission draws its own key.
                await asyncio.to_thread(client.submit, "next", ["true"], cpu_milli=100)
                assert len(set(keys)) == 2
                # A caller's own key makes a repeat across runs return the same job.
                same = [
                    await asyncio.to_thread(
                        client.submit, "mine", ["true"], cpu_milli=100, idempotency_key="run-7"
                    )
                    for _ in range(2)
                ]
                assert same[0]["id"] == same[1]["id"]
                with pytest.raises(ApiError) as err:
                    await asyncio.to_thread(
                        client.submit, "other", ["true"], idempotency_key="run-7"
                    )
                assert err.value.status == 409 and err.value.field == KEY

    asyncio.run(main_())


def test_job_submit_sends_a_key_and_survives_a_lost_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            async with lossy_proxy(svc, lose=1) as (keys, url):
                argv = ["job", "submit", "--server", url, "--token", ANA, "--", "true"]
                assert await asyncio.to_thread(main, argv) == 0
                assert len(keys) == 2 and keys[0] == keys[1] and keys[0], keys
                [job_id] = await job_ids(svc, ANA)
                assert f"submitted job {job_id} " in capsys.readouterr().out
                mine = [*argv[:2], "--idempotency-key", "nightly-1", *argv[2:]]
                assert await asyncio.to_thread(main, mine) == 0
                assert await asyncio.to_thread(main, mine) == 0
                assert keys[-2:] == ["nightly-1", "nightly-1"]
                assert len(await job_ids(svc, ANA)) == 2

    asyncio.run(main_())


# The store ----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "cplat.db")
        return
    if not PG_DSN:
        pytest.skip("set CPLAT_TEST_PG_DSN to run the PostgreSQL variant")
    import asyncpg

    schema = f"test_{uuid.uuid4().hex[:16]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}search_path={schema}"
    finally:
        asyncio.run(admin(f"DROP SCHEMA {schema} CASCADE"))


def _job(name: str = "j", at: float = 1000.0) -> NewJob:
    return NewJob("vision", "ana", name, {"command": ["true"]}, at, "tok.1", 5000.0)


def _key(key: str, fingerprint: str = "f1", at: float = 1000.0, ttl: float = 60) -> IdempotencyIn:
    return IdempotencyIn("vision", "ana", key, fingerprint, at, at + ttl)


def test_store_keeps_keys_with_their_jobs(store_url: str) -> None:
    async def main_() -> None:
        store: Store = await open_store(store_url)
        try:
            audit = [AuditIn(1000.0, "ana", "vision", "POST /v1/jobs", "job/{id}", 201, {})]
            first = await store.create_job_idempotent(_job(), _key("k"), audit)
            assert first.created and first.job.token_id == "tok.1"
            assert first.job.token_expires_at == 5000.0
            assert await store.get_job(first.job.id) == first.job
            again = await store.create_job_idempotent(_job("j2", 1010.0), _key("k", "f2", 1010.0))
            assert (again.created, again.job.id, again.fingerprint) == (False, first.job.id, "f1")
            assert [e.target for e in await store.list_audit()] == [f"job/{first.job.id}"]
            # Once expired the key is free again, and pruning forgets it.
            later = await store.create_job_idempotent(_job("j3", 2000.0), _key("k", "f3", 2000.0))
            assert later.created and later.job.id != first.job.id
            assert await store.prune_expired(1e9) == 1
            assert len(await store.list_jobs()) == 2
        finally:
            await store.close()

    asyncio.run(main_())


def test_a_failed_key_write_leaves_no_job_behind(tmp_path: Path) -> None:
    db = tmp_path / "cplat.db"

    async def main_() -> None:
        store = await open_store(str(db))
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER no_keys BEFORE INSERT ON idempotency_keys "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        conn.close()
        try:
            audit = [AuditIn(1000.0, "ana", "vision", "POST /v1/jobs", "job/{id}", 201, {})]
            with pytest.raises(StoreError, match="disk on fire"):
                await store.create_job_idempotent(_job(), _key("k"), audit)
            assert await store.list_jobs() == [] and await store.list_audit() == []
        finally:
            await store.close()

    asyncio.run(main_())


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at REAL NOT NULL)"
    )
    for statement in MIGRATIONS[0].sqlite:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'initial schema', 0)")
    conn.execute(
        'INSERT INTO jobs (project, "user", name, state, spec, submitted_at, updated_at) '
        "VALUES ('vision', 'ana', 'old', 'PENDING', '{}', 1, 1)"
    )
    conn.close()

    async def main_() -> None:
        store = await open_store(str(db))
        try:
            [job] = await store.list_jobs()
            assert (job.name, job.token_id, job.token_expires_at) == ("old", "", None)
            now = time.time()
            assert await store.revoked_tokens(now) == []
        finally:
            await store.close()

    asyncio.run(main_())
