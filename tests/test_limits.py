"""Limits an operator expects, TLS, and env redaction for viewers.

- Per-user caps on event streams and log follows (one pool of ``max_streams_per_user``): the
  next one answers 429 with a JSON reason and ``Retry-After``; slots come back when callers
  hang up; other users are not affected; ``/metrics`` counts the rejections. A log follow
  (``GET /v1/jobs/{id}/logs?wait=``) answers as soon as output arrives.
- The submission rate limit per token (token bucket): 429 with ``Retry-After``, other tokens
  and cluster admins unaffected, refused submissions not audited, and the bucket refills.
- TLS: ``cplat serve --tls-cert/--tls-key`` with a certificate made here by the ``openssl``
  command; the local agent (pinning the certificate) and a standalone ``cplat agent --ca``
  run jobs; the Python client verifies the server with ``ca=`` and refuses it without; a
  missing key or an unreadable certificate stops ``cplat serve`` with exit code 2.
- A viewer sees a job's env names but no value on every read path (get, list, cancel answer
  of a member, job events, the event stream); members, admins and cluster admins see values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

import aiohttp  # noqa: E402

from cplat.client import Client, ServerUnreachableError  # noqa: E402
from cplat.testing.service import ADMIN, SECRET, Service, running_service, token  # noqa: E402
from cplat_server.config import ServiceConfig, ssl_context  # noqa: E402

PY = sys.executable
MEMBER = token("ana", "vision", "member")
ANA_AGAIN = token("ana", "vision", "member", ttl=7200)  # the same user, another token
BOB = token("bob", "vision", "member")
VIEWER = token("vic", "vision", "viewer")
PROJECT_ADMIN = token("ada", "vision", "admin")
OUTSIDER = token("ola", "audio", "admin")
SECRET_VALUE = "hunter2-not-for-viewers"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def metric(svc: Service, line_start: str) -> float:
    status, text = await svc.call("GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def open_stream(svc: Service, tok: str) -> aiohttp.ClientResponse:
    resp = await svc.session.get(svc.url + "/v1/jobs/stream", headers=auth(tok))
    assert resp.status == 200, await resp.text()
    return resp


def assert_429(status: int, headers: Any, body: Any, code: str) -> int:
    assert status == 429, body
    assert body["error"]["code"] == code, body
    retry = int(headers["Retry-After"])
    assert retry >= 1 and body["error"]["retry_after"] == retry
    return retry


# --- stream caps ----------------------------------------------------------------------------


def test_streams_and_log_follows_share_a_per_user_cap(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path, max_streams_per_user=2) as svc:
            job = await svc.submit(MEMBER, name="quiet", command=["true"])  # no node: pending
            first = await open_stream(svc, MEMBER)
            second = await open_stream(svc, ANA_AGAIN)  # per user, not per token
            try:
                async with svc.session.get(svc.url + "/v1/jobs/stream", headers=auth(MEMBER)) as r:
                    assert_429(r.status, r.headers, await r.json(), "too_many_streams")
                # A log follow takes a slot of the same pool...
                async with svc.session.get(
                    svc.url + f"/v1/jobs/{job['id']}/logs?wait=5", headers=auth(MEMBER)
                ) as r:
                    assert_429(r.status, r.headers, await r.json(), "too_many_streams")
                # ...but reading logs without waiting is not a follow.
                status, page = await svc.call("GET", f"/v1/jobs/{job['id']}/logs", MEMBER)
                assert status == 200 and page["logs"] == []
                # Another user has slots of their own.
                other = await open_stream(svc, BOB)
                other.close()
                assert await metric(svc, 'cplat_limit_rejections_total{limit="streams"}') == 2
                assert await metric(svc, 'cplat_open_streams{kind="stream"}') >= 2
            finally:
                first.close()
            # The slot comes back once the server sees the caller hang up (within a second
            # or two: it looks every GONE_CHECK seconds).
            deadline = time.monotonic() + 5
            while True:
                async with svc.session.get(
                    svc.url + f"/v1/jobs/{job['id']}/logs?wait=1", headers=auth(MEMBER)
                ) as r:
                    if r.status == 200:
                        break
                    assert r.status == 429
                assert time.monotonic() < deadline, "the closed stream kept its slot"
                await asyncio.sleep(0.2)
            second.close()

    run(main())


def test_log_follow_answers_when_output_arrives(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            job = await svc.submit(MEMBER, name="quiet", command=["true"])
            url = f"/v1/jobs/{job['id']}/logs?wait=30"
            follow = asyncio.create_task(svc.call("GET", url, MEMBER))
            await asyncio.sleep(0.5)
            assert not follow.done()
            started = time.monotonic()
            chunk = {"attempt": 1, "rank": 0, "stream": "stdout", "data": "hello\n"}
            status, _ = await svc.call(
                "POST", f"/v1/jobs/{job['id']}/logs", ADMIN, json={"chunks": [chunk]}
            )
            assert status == 200
            status, page = await asyncio.wait_for(follow, 10)
            assert status == 200 and [c["data"] for c in page["logs"]] == ["hello\n"]
            assert time.monotonic() - started < 5
            # Nothing after the last chunk of a follow: it waits, then answers empty.
            status, page = await svc.call(
                "GET", f"/v1/jobs/{job['id']}/logs?wait=1&after={page['next']}", MEMBER
            )
            assert status == 200 and page["logs"] == []
            # A state change ends a follow at once (the caller then sees the new state).
            url = f"/v1/jobs/{job['id']}/logs?wait=30&after={page['next']}"
            follow = asyncio.create_task(svc.call("GET", url, MEMBER))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 200
            status, page = await asyncio.wait_for(follow, 10)
            assert status == 200 and page["logs"] == []
            assert time.monotonic() - started < 5
            status, body = await svc.call("GET", f"/v1/jobs/{job['id']}/logs?wait=61", MEMBER)
            assert status == 400 and body["error"]["field"] == "wait"

    run(main())


# --- submission rate --------------------------------------------------------------------------


def test_submissions_are_rate_limited_per_token(tmp_path: Path) -> None:
    body = {"name": "j", "command": ["true"]}

    async def main() -> None:
        async with running_service(tmp_path, submit_rate=2.0, submit_burst=3) as svc:
            for _ in range(3):
                status, out = await svc.call("POST", "/v1/jobs", MEMBER, json=body)
                assert status == 201, out
            async with svc.session.post(svc.url + "/v1/jobs", headers=auth(MEMBER), json=body) as r:
                retry = assert_429(r.status, r.headers, await r.json(), "rate_limited")
            assert retry == 1  # one token comes back after 0.5 s at 2/s
            # Per token: the same user's other token and a cluster admin go on.
            status, _ = await svc.call("POST", "/v1/jobs", ANA_AGAIN, json=body)
            assert status == 201
            for _ in range(5):
                status, _ = await svc.call("POST", "/v1/jobs", ADMIN, json=body)
                assert status == 201
            assert await metric(svc, 'cplat_limit_rejections_total{limit="submit_rate"}') == 1
            # A refusal changed nothing, so it costs no audit entry.
            status, audit = await svc.call("GET", "/v1/audit?limit=1000", ADMIN)
            assert status == 200
            assert [e for e in audit["entries"] if e["status"] == 429] == []
            await asyncio.sleep(retry)
            status, _ = await svc.call("POST", "/v1/jobs", MEMBER, json=body)
            assert status == 201

    run(main())


def test_no_submission_limit_when_the_rate_is_zero(tmp_path: Path) -> None:
    body = {"name": "j", "command": ["true"]}

    async def main() -> None:
        async with running_service(tmp_path, submit_rate=0.0, submit_burst=1) as svc:
            for _ in range(20):
                status, out = await svc.call("POST", "/v1/jobs", MEMBER, json=body)
                assert status == 201, out

    run(main())


def test_limit_settings_are_checked() -> None:
    from cplat.errors import InputError
    from cplat_server.config import load_config

    cfg = load_config(
        env={"CPLAT_MAX_STREAMS_PER_USER": "4", "CPLAT_SUBMIT_RATE": "5", "CPLAT_LEASE": "12"}
    )
    assert (cfg.max_streams_per_user, cfg.submit_rate, cfg.lease) == (4, 5.0, 12.0)
    for env, field in (
        ({"CPLAT_LEASE": "nan"}, "lease"),
        ({"CPLAT_LEASE": "0"}, "lease"),
        ({"CPLAT_SUBMIT_RATE": "-1"}, "submit_rate"),
        ({"CPLAT_SUBMIT_BURST": "0"}, "submit_burst"),
        ({"CPLAT_MAX_STREAMS_PER_USER": "-1"}, "max_streams_per_user"),
        ({"CPLAT_TLS_CERT": "cert.pem"}, "tls_key"),
    ):
        with pytest.raises(InputError) as err:
            load_config(env=env)
        assert err.value.field == field, (env, err.value)


def test_settings_repr_holds_no_secret() -> None:
    """A logged or printed configuration must not leak the signing key or a store password."""
    cfg = ServiceConfig(
        jwt_secret="jwt-s3cret",
        db="postgresql://cplat:db-s3cret@db/cplat",
        artifact_s3_secret_access_key="s3-s3cret",
    )
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)


# --- env redaction ----------------------------------------------------------------------------


def test_viewers_see_env_names_but_no_values(tmp_path: Path) -> None:
    env = {"DB_PASSWORD": SECRET_VALUE, "MODE": "fast"}

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            seen: list[str] = []

            async def watch() -> None:
                async with svc.session.get(
                    svc.url + "/v1/jobs/stream", headers=auth(VIEWER)
                ) as resp:
                    assert resp.status == 200
                    async for raw in resp.content:
                        seen.append(raw.decode())
                        if '"CANCELLED"' in seen[-1]:
                            return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.3)  # subscribed before the job exists
            job = await svc.submit(MEMBER, name="secretive", command=["true"], env=env)
            assert job["env"] == env  # the submitter is a member
            status, cancelled = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 200 and cancelled["env"] == env
            await asyncio.wait_for(watcher, 10)

            redacted = {"DB_PASSWORD": None, "MODE": None}
            status, one = await svc.call("GET", f"/v1/jobs/{job['id']}", VIEWER)
            assert status == 200 and one["env"] == redacted
            status, page = await svc.call("GET", "/v1/jobs", VIEWER)
            assert status == 200 and [j["env"] for j in page["jobs"]] == [redacted]
            status, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", VIEWER)
            assert status == 200 and evs["events"]
            for answer in (one, page, evs, "".join(seen)):
                assert SECRET_VALUE not in json.dumps(answer)
            assert any('"CANCELLED"' in line for line in seen)
            # Members, project admins and cluster admins see the values.
            for tok in (BOB, PROJECT_ADMIN, ADMIN):
                status, one = await svc.call("GET", f"/v1/jobs/{job['id']}", tok)
                assert status == 200 and one["env"] == env
                status, page = await svc.call("GET", "/v1/jobs?project=vision", tok)
                assert [j["env"] for j in page["jobs"]] == [env]
            # Another project's admin does not even see the job.
            status, _ = await svc.call("GET", f"/v1/jobs/{job['id']}", OUTSIDER)
            assert status == 404
            # The schema says so.
            status, doc = await svc.call("GET", "/openapi.json")
            get = doc["paths"]["/v1/jobs/{id}"]["get"]["responses"]["200"]
            described = get["content"]["application/json"]["schema"]["properties"]["env"]
            assert "viewer" in described["description"] and "null" in described["description"]

    run(main())


# --- TLS ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr.strip()[-300:]}")
    return cert, key


def cli(*args: str) -> list[str]:
    return [PY, "-m", "cplat.cli", *args]


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    env.pop("CPLAT_CA", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until(what: str, check: Any, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (ServerUnreachableError, OSError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            tails = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)


def test_https_round_trip_with_client_and_agents(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    serve_log, agent_log = tmp_path / "serve.log", tmp_path / "agent.log"
    logs = [serve_log, agent_log]
    serve = cli(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        # Tasks as the test's user (tests/test_isolation.py covers task users).
        "--task-user",
        "self",
    )
    agent = cli(
        "agent",
        "--server",
        url,
        "--token",
        ADMIN,
        "--name",
        "node-b",
        "--work-dir",
        str(tmp_path / "agent"),
        "--heartbeat",
        "0.5",
        "--ca",
        str(cert),
        "--task-user",
        "self",
    )
    api = Client(url, ADMIN, timeout=10, ca=cert)
    with process(serve, serve_log), process(agent, agent_log):

        def both_up() -> set[str] | None:
            names = {n["name"] for n in api.nodes() if n["state"] == "up"}
            return names if len(names) == 2 and "node-b" in names else None

        names = wait_until("the local agent and node-b to register", both_up, 30, logs)
        local = next(iter(names - {"node-b"}))
        member = Client(url, MEMBER, timeout=10, ca=cert)
        for runs_on, other in (("node-b", local), (local, "node-b")):
            api.request("POST", f"/v1/nodes/{other}/cordon")
            api.request("POST", f"/v1/nodes/{runs_on}/uncordon")
            job = member.submit("tls", "echo over-tls", cpu_milli=100, memory_mib=64)
            done = member.wait(job["id"], timeout=30)
            assert done["state"] == "SUCCEEDED", (done, logs)
            assert done["placement"][0]["node"] == runs_on
            assert "".join(c["data"] for c in member.logs(job["id"])) == "over-tls\n"
        # Without the CA the client refuses the self-signed server; plain HTTP gets nowhere.
        with pytest.raises(ServerUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
            Client(url, MEMBER, timeout=5, ca=None).cluster()
        with pytest.raises(ServerUnreachableError):
            Client(f"http://127.0.0.1:{port}", MEMBER, timeout=5).cluster()
        # CPLAT_CA is the default bundle.
        os.environ["CPLAT_CA"] = str(cert)
        try:
            assert Client(url, MEMBER, timeout=5).cluster()
        finally:
            del os.environ["CPLAT_CA"]


def test_serve_refuses_to_start_with_a_bad_certificate(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    base = cli("serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()))
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET}
    cases = (
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)], "--tls-cert"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")], "--tls-key"),
        (["--tls-cert", str(key), "--tls-key", str(key)], "--tls-cert"),  # not a certificate
        (["--tls-cert", str(cert)], "tls_key"),
    )
    for flags, field in cases:
        done = subprocess.run(base + flags, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 2, (flags, done.stdout, done.stderr)
        assert field in done.stderr, (flags, done.stderr)
    # The context itself: TLS 1.2 at least.
    ctx = ssl_context(replace(ServiceConfig(), tls_cert=str(cert), tls_key=str(key)))
    assert ctx is not None and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    bad_ca = tmp_path / "not-a-ca.pem"
    bad_ca.write_text("nothing here\n")
    with pytest.raises(ValueError, match="CA bundle"):
        Client("https://127.0.0.1:1", MEMBER, ca=bad_ca)
    refused = subprocess.run(
        cli("agent", "--server", "https://127.0.0.1:1", "--token", ADMIN, "--ca", str(bad_ca)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode == 2 and "--ca" in refused.stderr, refused.stderr
