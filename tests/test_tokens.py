"""Token ids, job-token lifetimes, revocation across servers, and the signing secret's check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from cplat.cli.main import main
from cplat.errors import InputError
from cplat.store import RevokedToken, open_store
from cplat.testing.service import ADMIN, PG_DSN, SECRET, Service, running_service, token
from cplat_server.auth import (
    JOB_TOKEN_SLACK,
    Revocations,
    create_token,
    job_token_expiry,
    token_id,
    token_id_expiry,
    verify,
)
from cplat_server.config import jwt_secret, load_config
from cplat_server.errors import ApiError

#: The promise: a revocation is refused by every server within this many seconds.
EFFECTIVE_WITHIN = 1.0


def claims_of(tok: str) -> dict[str, Any]:
    return dict(jwt.decode(tok, SECRET, algorithms=["HS256"]))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgres" and not PG_DSN:
        pytest.skip("set CPLAT_TEST_PG_DSN to run the PostgreSQL variant")
    yield str(request.param)


@contextlib.asynccontextmanager
async def two_servers(
    tmp: Path, backend: str, **cfg: Any
) -> AsyncIterator[tuple[Service, Service]]:
    """Two servers, each with its own controller and process state, on one store."""
    async with running_service(tmp / "a", backend, **cfg) as a:
        async with running_service(tmp / "b", db=a.cfg.store_url, **cfg) as b:
            yield a, b


async def _register(svc: Service, name: str = "n1") -> None:
    body = {"name": name, "cpu_milli": 8000, "memory_mib": 16384, "address": "10.0.0.1"}
    status, out = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
    assert status in (200, 201), out


async def _job_token(svc: Service, tok: str, node: str = "n1", **job: Any) -> tuple[int, str]:
    """Submit a job with ``tok``; return its id and the token its processes would get."""
    rec = await svc.submit(tok, tasks={"resources": {"cpu_milli": 100}}, **job)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Earlier jobs' assignments (never reported) make a poll answer at once: look again
        # until the scheduler has placed this one.
        status, work = await svc.call("GET", f"/v1/nodes/{node}/assignments?wait=1", ADMIN)
        assert status == 200, work
        mine = [a for a in work["assignments"] if a["job_id"] == rec["id"]]
        if mine:
            return int(rec["id"]), str(mine[0]["token"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {rec['id']} was never assigned")


async def _refused_within(svcs: tuple[Service, ...], tok: str, since: float) -> float:
    """Poll until every server answers 401 token_revoked; return the seconds it took."""
    pending = list(svcs)
    while pending:
        for svc in list(pending):
            status, body = await svc.call("GET", "/v1/jobs", tok)
            if status == 401:
                assert body["error"]["code"] == "token_revoked", body
                pending.remove(svc)
            else:
                assert status == 200, body
        if time.monotonic() - since > 5:
            raise AssertionError("the revocation never took effect")
        await asyncio.sleep(0.02)
    return time.monotonic() - since


# Token ids and lifetimes --------------------------------------------------------------------


def test_every_token_has_an_id_that_carries_its_expiry() -> None:
    tok = create_token(SECRET, "ana", "vision", "member", ttl=600, now=1_000_000)
    claims = jwt.decode(tok, options={"verify_signature": False})  # long expired: no check
    assert token_id(tok) == claims["jti"]
    assert token_id_expiry(claims["jti"]) == claims["exp"] == 1_000_600
    other = create_token(SECRET, "ana", "vision", "member", ttl=600, now=1_000_000)
    assert token_id(other) != token_id(tok)  # random, not derived from the claims
    for bad in ("", "abc", "x" * 20, "bad id.123", "abcdefgh.", "abcdefgh.12a"):
        assert token_id_expiry(bad) is None
    assert token_id("garbage") == ""


def test_job_token_expiry_is_the_earliest_bound() -> None:
    now = 1_000_000.0
    # A 2-minute submitter: its job's token ends with it, not years later.
    assert job_token_expiry(now, 86400, now + 120, 7 * 86400) == now + 120
    # The service's maximum caps a long run time of a long-lived submitter.
    assert job_token_expiry(now, 10**8, now + 10**9, 7 * 86400) == now + 7 * 86400
    # A short run time bounds it (plus the slack to report at the end).
    assert job_token_expiry(now, 60, None, 7 * 86400) == now + 60 + JOB_TOKEN_SLACK
    # A submitter already expired: the job's token is born expired.
    assert job_token_expiry(now, 60, now - 5, 7 * 86400) == now - 5


def test_a_two_minute_token_yields_a_job_token_of_at_most_two_minutes(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path, max_job_token_ttl=900) as svc:
            await _register(svc)
            short = token("ana", "vision", "member", ttl=120)
            _, jt = await _job_token(svc, short, name="short")
            parent, job = claims_of(short), claims_of(jt)
            assert job["exp"] <= parent["exp"], (job, parent)
            assert job["par"] == parent["jti"] and job["jti"] != parent["jti"]
            assert (job["sub"], job["project"], job["role"], job["cluster_admin"]) == (
                "ana",
                "vision",
                "member",
                False,
            )
            # A long-lived submitter: the service's maximum (900 s here) bounds it.
            long = token("ana", "vision", "member", ttl=30 * 86400)
            _, jt = await _job_token(svc, long, name="long", max_runtime=10**6)
            job = claims_of(jt)
            assert job["exp"] - job["iat"] <= 900
            # A short run time bounds it too.
            _, jt = await _job_token(svc, long, name="brief", max_runtime=60)
            job = claims_of(jt)
            assert job["exp"] - job["iat"] <= 60 + JOB_TOKEN_SLACK

    asyncio.run(main_())


def test_max_job_token_ttl_setting(tmp_path: Path) -> None:
    assert load_config(env={}).max_job_token_ttl == 7 * 86400
    f = tmp_path / "serve.toml"
    f.write_text("[serve]\nmax_job_token_ttl = 3600\nidempotency_ttl = 60\n")
    cfg = load_config(f, env={"CPLAT_MAX_JOB_TOKEN_TTL": "1800"})
    assert (cfg.max_job_token_ttl, cfg.idempotency_ttl) == (1800, 60)
    for bad in ("0", "-5", "soon"):
        with pytest.raises(InputError) as err:
            load_config(env={"CPLAT_MAX_JOB_TOKEN_TTL": bad})
        assert "max_job_token_ttl" in str(err.value).lower()


# Revocation -----------------------------------------------------------------------------


def test_revocations_merge_only_add_and_forget_the_expired() -> None:
    r = Revocations()
    r.merge([("a.100", 100.0), ("b.300", 300.0)], now=50.0)
    r.merge([], now=50.0)  # a refresh that read the store before a revocation: nothing lost
    assert "a.100" in r and "b.300" in r
    r.merge([], now=200.0)
    assert "a.100" not in r and "b.300" in r and len(r) == 1
    tok = create_token(SECRET, "ana", "vision", "member", ttl=60)
    r.add(token_id(tok), time.time() + 60)
    with pytest.raises(ApiError) as err:
        verify(SECRET, f"Bearer {tok}", r)
    assert (err.value.status, err.value.code) == (401, "token_revoked")
    assert token_id(tok) in err.value.message
    assert verify(SECRET, f"Bearer {tok}").token_id == token_id(tok)


def test_revoking_through_the_api_reaches_every_server_within_a_second(
    tmp_path: Path, backend: str
) -> None:
    async def main_() -> None:
        async with two_servers(tmp_path, backend) as (a, b):
            await _register(a)
            tok = token("ana", "vision", "member")
            other = token("ana", "vision", "member")
            job_id, jt = await _job_token(a, tok)
            for svc in (a, b):
                assert (await svc.call("GET", "/v1/jobs", tok))[0] == 200
                # The job's token works on either server, for its own job.
                assert (await svc.call("GET", f"/v1/jobs/{job_id}", jt))[0] == 200
            # Only cluster admins revoke, and only token ids.
            body = {"id": token_id(tok)}
            st, err = await a.call(
                "POST", "/v1/tokens/revoke", token("x", "vision", "admin"), json=body
            )
            assert st == 403, err
            st, err = await a.call("POST", "/v1/tokens/revoke", ADMIN, json={"id": "nope"})
            assert st == 400 and err["error"]["field"] == "id", err
            st, out = await a.call("POST", "/v1/tokens/revoke", ADMIN, json=body)
            assert st == 200 and out["newly_revoked"] is True, out
            since = time.monotonic()
            # The revoking server refuses it at once.
            st, err = await a.call("GET", "/v1/jobs", tok)
            assert st == 401 and err["error"]["code"] == "token_revoked", err
            assert token_id(tok) in err["error"]["message"]
            assert await _refused_within((a, b), tok, since) < EFFECTIVE_WITHIN
            # The job token derived from it is revoked with it, everywhere.
            for svc in (a, b):
                st, err = await svc.call("GET", f"/v1/jobs/{job_id}", jt)
                assert st == 401 and err["error"]["code"] == "token_revoked", err
                assert "revoked" in err["error"]["message"]
            # Another token of the same user is untouched.
            assert (await b.call("GET", "/v1/jobs", other))[0] == 200
            st, out = await b.call("POST", "/v1/tokens/revoke", ADMIN, json=body)
            assert st == 200 and out["newly_revoked"] is False
            # The revocation is audited.
            _, log = await a.call("GET", "/v1/audit", ADMIN)
            assert any(e["target"] == f"token/{token_id(tok)}" for e in log["entries"])

    asyncio.run(main_())


def test_revoking_on_the_command_line_reaches_running_servers(
    tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main_() -> None:
        async with two_servers(tmp_path, backend) as (a, b):
            await _register(a)
            tok = token("ana", "vision", "member")
            job_id, jt = await _job_token(a, tok)
            args = ["token", "revoke", token_id(tok), "--db", a.cfg.store_url]
            assert await asyncio.to_thread(main, args) == 0
            since = time.monotonic()
            assert await _refused_within((a, b), tok, since) < EFFECTIVE_WITHIN
            for svc in (a, b):
                assert (await svc.call("GET", f"/v1/jobs/{job_id}", jt))[0] == 401
            # A server started afterwards knows it from its first request on.
            async with running_service(tmp_path / "c", db=a.cfg.store_url) as c:
                st, err = await c.call("GET", "/v1/jobs", tok)
                assert st == 401 and err["error"]["code"] == "token_revoked"

    asyncio.run(main_())
    out = capsys.readouterr().out
    assert "revoked token" in out


def test_token_revoke_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "revoke", "not-an-id", "--data-dir", str(tmp_path)]) == 2
    assert "not a token id" in capsys.readouterr().err
    tok = create_token(SECRET, "ana", "vision", "member")
    # No store there: say so rather than create an empty one.
    assert main(["token", "revoke", token_id(tok), "--data-dir", str(tmp_path / "none")]) == 2
    assert "no store" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_revocations_are_pruned_after_the_token_expires(tmp_path: Path) -> None:
    async def main_() -> None:
        store = await open_store(str(tmp_path / "s.db"))
        try:
            now = time.time()
            assert await store.revoke_token(RevokedToken("old.1", now, now - 1, "t"))
            assert await store.revoke_token(RevokedToken("new.2", now, now + 60, "t"))
            assert not await store.revoke_token(RevokedToken("new.2", now, now + 60, "t"))
            assert [r.token_id for r in await store.revoked_tokens(now)] == ["new.2"]
            assert await store.prune_expired(now) == 1
            assert [r.token_id for r in await store.revoked_tokens(now - 10)] == ["new.2"]
        finally:
            await store.close()

    asyncio.run(main_())


# The signing secret ---------------------------------------------------------------------


def test_token_create_prints_the_id_apart_from_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPLAT_JWT_SECRET", SECRET)
    argv = ["token", "create", "--user", "u", "--project", "p", "--ttl", "2m"]
    assert main([*argv, "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    claims = claims_of(out.strip())  # stdout holds the token alone
    assert f"token id: {claims['jti']}" in err
    assert f"cplat token revoke {claims['jti']}" in err
    assert claims["exp"] - claims["iat"] == 120


def test_short_or_empty_secrets_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["token", "create", "--user", "u", "--project", "p", "--data-dir", str(tmp_path)]
    monkeypatch.setenv("CPLAT_JWT_SECRET", "x" * 31)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CPLAT_JWT_SECRET" in err and "31 bytes" in err and "32" in err
    monkeypatch.setenv("CPLAT_JWT_SECRET", "x" * 32)
    assert main(argv) == 0
    capsys.readouterr()
    monkeypatch.delenv("CPLAT_JWT_SECRET")
    (tmp_path / "jwt-secret").write_text("\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "jwt-secret") in err and "empty" in err
    (tmp_path / "jwt-secret").write_text("short\n")
    assert main(argv) == 2
    assert "5 bytes" in capsys.readouterr().err
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\njwt_secret = "tiny"\n')
    with pytest.raises(InputError) as exc:
        jwt_secret(load_config(f, env={}))
    assert "jwt_secret setting" in str(exc.value)


def _serve(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from cplat.cli.main import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "serve", "--data-dir", str(data), "--port", "0"]
    return subprocess.run(
        [*cmd, "--no-local-agent"], env=env, capture_output=True, text=True, timeout=120
    )


def test_serve_refuses_a_short_or_empty_secret_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CPLAT_JWT_SECRET"}
    done = _serve(tmp_path / "a", {**env, "CPLAT_JWT_SECRET": "too-short"})
    assert done.returncode == 2, done
    assert "CPLAT_JWT_SECRET" in done.stderr and "Traceback" not in done.stderr
    data = tmp_path / "b"
    data.mkdir()
    (data / "jwt-secret").write_text("")
    done = _serve(data, env)
    assert done.returncode == 2, done
    assert re.search(r"jwt-secret.* is empty", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
