"""The service in-process for tests: a free port, a real store, optional real agents.

Tests and benchmarks share these builders: :func:`running_service` starts ``cplat serve``'s
app (SQLite in a temporary data dir, or PostgreSQL at ``$CPLAT_TEST_PG_DSN``), :func:`token`
signs tokens with the test secret, :class:`Service` calls the API and starts agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cplat_server.app import create_app
from cplat_server.auth import create_token
from cplat_server.config import ServiceConfig

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
PG_DSN = os.environ.get("CPLAT_TEST_PG_DSN", "")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def token(
    user: str = "ana",
    project: str = "vision",
    role: str = "member",
    cluster_admin: bool = False,
    ttl: int = 3600,
) -> str:
    """Return a token signed with :data:`SECRET` for ``user`` in ``project`` with ``role``."""
    return create_token(SECRET, user, project, role, cluster_admin=cluster_admin, ttl=ttl)


ADMIN = token("root", "system", "admin", cluster_admin=True)


@dataclass
class Service:
    """A running service: its URL, an HTTP session, the app and its settings, started agents."""

    url: str
    session: aiohttp.ClientSession
    app: web.Application
    cfg: ServiceConfig
    agents: list[asyncio.Task[None]] = field(default_factory=list)

    async def call(
        self, method: str, path: str, tok: str | None = None, **kw: Any
    ) -> tuple[int, Any]:
        """Send a request with ``tok`` as bearer token; return the status and the body."""
        headers = kw.pop("headers", {})
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        async with self.session.request(method, self.url + path, headers=headers, **kw) as r:
            ctype = r.headers.get("Content-Type", "")
            body = await r.json() if "json" in ctype else await r.text()
            return r.status, body

    async def submit(self, tok: str, **job: Any) -> dict[str, Any]:
        """Submit a job (fields of ``POST /v1/jobs``) and return it; fails unless 201."""
        body = {"name": "job", "command": ["true"], **job}
        status, data = await self.call("POST", "/v1/jobs", tok, json=body)
        assert status == 201, data
        return dict(data)

    async def wait(
        self, job_id: int, tok: str, states: set[str] | None = None, timeout: float = 20
    ) -> dict[str, Any]:
        """Return the job once its state is one of ``states`` (default: a final state)."""
        want = states or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            status, job = await self.call("GET", f"/v1/jobs/{job_id}", tok)
            assert status == 200, job
            if job["state"] in want:
                return dict(job)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stuck in {job['state']}: {job['reason']}")
            await asyncio.sleep(0.05)

    async def start_agent(self, name: str, work: Path, **kw: Any) -> None:
        """Start a real node agent in this event loop and wait until it has registered."""
        from cplat.runtime.agent import Agent

        # Tasks run as the test's own user unless a test asks otherwise: tests/test_isolation.py
        # covers task users, which could not reach this interpreter nor the temporary dirs.
        kw.setdefault("task_user", "self")
        agent = Agent(self.url, ADMIN, name=name, work_dir=work, heartbeat_interval=0.5, **kw)
        self.agents.append(asyncio.create_task(agent.run()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, _ = await self.call("GET", f"/v1/nodes/{name}", ADMIN)
            if status == 200:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"agent {name} did not register")


async def reset_postgres(dsn: str) -> None:
    """Empty the ``public`` schema of the test database (every table, every row)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running_service(tmp: Path, backend: str = "sqlite", **cfg: Any) -> AsyncIterator[Service]:
    """Run the service until the block ends; ``cfg`` overrides :class:`ServiceConfig` fields."""
    db = ""
    if backend == "postgres":
        await reset_postgres(PG_DSN)
        db = PG_DSN
    config = replace(
        ServiceConfig(
            port=0, data_dir=tmp / "data", db=db, jwt_secret=SECRET, local_agent=False, tick=0.2
        ),
        **cfg,
    )
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    from cplat_server.keys import CONTROLLER

    app[CONTROLLER].server_url = url  # the tasks' CPLAT_SERVER (the port was 0 in the config)
    async with aiohttp.ClientSession() as session:
        svc = Service(url, session, app, config)
        try:
            yield svc
        finally:
            for t in svc.agents:
                t.cancel()
            for t in svc.agents:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await runner.cleanup()
