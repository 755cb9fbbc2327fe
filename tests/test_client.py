"""The typed client (cplat.client) and ``cplat job`` (cplat.cli.jobs) against a fake service.

The fake implements just enough of docs/service.md's Jobs API, in aiohttp on 127.0.0.1 in a
thread with its own event loop: submit (with validation), get (jobs advance one state per
read, so waits and follows end), list with cursor pages, cancel, logs with ``next`` pages,
events, checkpoints, nodes, cluster, quotas, and error answers in the documented format.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from cplat.cli import jobs as job_cli
from cplat.client import (
    DEFAULT_SERVER,
    Allocation,
    ApiError,
    Client,
    ServerUnreachableError,
    WaitTimeoutError,
)
from cplat.errors import InputError

TOKEN = "good-token"
JOB_FIELDS = {
    "name",
    "project",
    "tasks",
    "priority",
    "gang",
    "max_runtime",
    "checkpoint",
    "command",
    "env",
    "workdir",
    "on_failure",
    "max_restarts",
}
LOG_PAGE = 2  # small, so that reading logs takes several pages
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status)


class FakeService:
    """State and routes of the fake service."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self.logs: list[dict[str, Any]] = []  # every job's chunks, with "job_id"
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.quotas: dict[str, dict[str, Any]] = {}
        self.checkpoints: list[dict[str, Any]] = []

    def add_job(self, state: str = "PENDING", *, auto: bool = False, **fields: Any) -> int:
        job_id = len(self.jobs) + 1
        job: dict[str, Any] = {
            "id": job_id,
            "name": f"job-{job_id}",
            "project": "vision",
            "user": "ana",
            "state": state,
            "reason": "queued" if state == "PENDING" else "",
            "priority": 0,
            "tasks": {
                "count": 1,
                "resources": {
                    "cpu_milli": 1000,
                    "memory_mib": 1024,
                    "num_gpu": 0,
                    "gpu_milli": 1000,
                    "gpu_models": [],
                },
            },
            "gang": True,
            "max_runtime": 86400,
            "checkpoint": None,
            "command": ["true"],
            "env": {},
            "workdir": None,
            "on_failure": "fail",
            "max_restarts": 0,
            "attempt": 0,
            "placement": [],
            "submitted_at": 1795776000.0 + job_id,
            "started_at": None,
            "finished_at": None,
            "exit_code": 0 if state == "SUCCEEDED" else None,
            "_auto": auto,
        }
        job.update(fields)
        self.jobs[job_id] = job
        return job_id

    def add_log(self, job_id: int, rank: int, stream: str, data: str) -> None:
        self.logs.append(
            {
                "seq": len(self.logs) + 1,
                "job_id": job_id,
                "attempt": 1,
                "rank": rank,
                "stream": stream,
                "data": data,
                "at": 1795776100.0,
            }
        )

    def advance(self, job: dict[str, Any]) -> None:
        """Move a submitted job one step: PENDING -> RUNNING -> SUCCEEDED or FAILED."""
        if not job["_auto"]:
            return
        if job["state"] == "PENDING":
            job.update(state="RUNNING", reason="", attempt=1, started_at=1795776001.0)
            for rank in range(job["tasks"]["count"]):
                self.add_log(job["id"], rank, "stdout", f"hello from {rank}\n")
            self.add_log(job["id"], 0, "stderr", "warming up\n")
        elif job["state"] == "RUNNING":
            code = int(job["env"].get("EXIT", "0"))
            self.add_log(job["id"], 0, "stdout", "done\n")
            job.update(
                state="SUCCEEDED" if code == 0 else "FAILED",
                exit_code=code,
                finished_at=1795776002.0,
            )

    @staticmethod
    def public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    # Routes ----------------------------------------------------------------------------
    def app(self) -> web.Application:
        @web.middleware
        async def record_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else None
            self.requests.append((request.method, request.path, dict(request.query), body))
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return _error(401, "unauthorized", "missing or invalid token")
            return await handler(request)

        app = web.Application(middlewares=[record_and_auth])
        app.router.add_post("/v1/jobs", self.submit)
        app.router.add_get("/v1/jobs", self.list_jobs)
        app.router.add_get("/v1/jobs/{id}", self.get_job)
        app.router.add_post("/v1/jobs/{id}/cancel", self.cancel)
        app.router.add_get("/v1/jobs/{id}/logs", self.get_logs)
        app.router.add_get("/v1/jobs/{id}/events", self.events)
        app.router.add_post("/v1/jobs/{id}/checkpoints", self.add_checkpoint)
        app.router.add_get("/v1/nodes", self.nodes)
        app.router.add_get("/v1/cluster", self.cluster)
        app.router.add_get("/v1/quotas", self.list_quotas)
        app.router.add_put("/v1/quotas/{project}", self.put_quota)
        return app

    def _job(self, request: web.Request) -> dict[str, Any] | None:
        return self.jobs.get(int(request.match_info["id"]))

    async def submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        for key in body:
            if key not in JOB_FIELDS:
                return _error(400, "invalid", f"unknown field {key!r}", key)
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", body.get("name", "")):
            return _error(400, "invalid", "expected 1-128 of [A-Za-z0-9._-]", "name")
        if not body.get("command"):
            return _error(400, "invalid", "expected a non-empty command", "command")
        if not 1 <= body["tasks"]["count"] <= 1024:
            return _error(400, "invalid", "expected 1 to 1024 tasks", "tasks.count")
        fields = {k: v for k, v in body.items() if v is not None}
        fields.setdefault("project", "vision")
        job_id = self.add_job(auto=True, **fields)
        return web.json_response(self.public(self.jobs[job_id]), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        after = int(q.get("cursor", "0"))
        limit = int(q.get("limit", "100"))
        match = [
            j
            for j in self.jobs.values()
            if j["id"] > after and all(j[k] == q[k] for k in ("project", "state", "user") if k in q)
        ]
        page = match[:limit]
        more = len(match) > limit
        return web.json_response(
            {
                "jobs": [self.public(j) for j in page],
                "next_cursor": str(page[-1]["id"]) if more else None,
            }
        )

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = int(request.match_info["id"])
        if job_id == 500:
            return web.Response(status=500, text="boom\ninternal details")
        if job_id == 502:
            return web.Response(
                status=502, text="<html><body>bad gateway</body></html>", content_type="text/html"
            )
        if job_id == 777:  # slower than a client's timeout
            await asyncio.sleep(0.5)
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "not_found", f"no job {job_id}")
        self.advance(job)
        return web.json_response(self.public(job))

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _error(404, "not_found", "no such job")
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return _error(409, "conflict", f"job {job['id']} already finished")
        job.update(state="CANCELLED", reason="cancelled by ana", _auto=False)
        return web.json_response(self.public(job))

    async def get_logs(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _error(404, "not_found", "no such job")
        q = request.query
        after = int(q.get("after", "0"))
        match = [
            {k: v for k, v in c.items() if k != "job_id"}
            for c in self.logs
            if c["job_id"] == job["id"]
            and c["seq"] > after
            and all(c[k] == int(q[k]) for k in ("rank", "attempt") if k in q)
        ]
        page = match[:LOG_PAGE]
        nxt = page[-1]["seq"] if len(match) > LOG_PAGE else None
        return web.json_response({"logs": page, "next": nxt})

    async def events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _error(404, "not_found", "no such job")
        events = [{"id": 1, "at": job["submitted_at"], "state": "PENDING", "message": "queued"}]
        return web.json_response({"events": events})

    async def add_checkpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        record = {"id": len(self.checkpoints) + 1, "job_id": int(request.match_info["id"])}
        record.update(body)
        self.checkpoints.append(record)
        return web.json_response(record, status=201)

    async def nodes(self, request: web.Request) -> web.Response:
        node = {
            "name": "gpu-1",
            "state": "up",
            "cpu_milli": 64000,
            "memory_mib": 524288,
            "gpus": [{"index": 0, "model": "A100"}],
            "labels": {},
            "rack": "r1",
            "spine": "s1",
            "hostname": "gpu-1",
            "address": "10.0.0.1",
            "heartbeat_at": 1795776000.0,
            "allocated": {"cpu_milli": 0, "memory_mib": 0, "gpu_milli": 0},
            "jobs": [],
        }
        return web.json_response({"nodes": [node]})

    async def cluster(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": {"up": 1}, "jobs": {"PENDING": len(self.jobs)}})

    async def list_quotas(self, request: web.Request) -> web.Response:
        return web.json_response({"quotas": list(self.quotas.values())})

    async def put_quota(self, request: web.Request) -> web.Response:
        body = await request.json()
        quota = {"project": request.match_info["project"], **body}
        self.quotas[quota["project"]] = quota
        return web.json_response(quota)


class ServerThread:
    """Run an aiohttp app on 127.0.0.1 (a free port) in a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        # A short shutdown timeout: the slow route must not hold up the teardown.
        self.runner = web.AppRunner(self.app, shutdown_timeout=0.1)
        self.url = ""

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    def __enter__(self) -> ServerThread:
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def server(fake: FakeService, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # the fake is local: never through a proxy
    with ServerThread(fake.app()) as thread:
        monkeypatch.setenv("CPLAT_SERVER", thread.url)
        monkeypatch.setenv("CPLAT_TOKEN", TOKEN)
        monkeypatch.setattr(job_cli, "POLL_INTERVAL", 0.01)
        yield thread.url


@pytest.fixture
def client(server: str) -> Client:
    return Client(server, TOKEN, timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Client ----------------------------------------------------------------------------------
def test_submit_sends_the_documented_body(client: Client, fake: FakeService) -> None:
    job = client.submit(
        "train",
        ["python", "train.py"],
        project="vision",
        count=2,
        cpu_milli=4000,
        memory_mib=16384,
        num_gpu=1,
        gpu_models=("A100",),
        priority=5,
        gang=False,
        max_runtime=3600,
        checkpoint={"interval": 600, "cost": 30},
        env={"LR": "0.1"},
        workdir="/work",
        on_failure="restart",
        max_restarts=3,
    )
    assert job["id"] == 1 and job["state"] == "PENDING" and job["name"] == "train"
    method, path, _, body = fake.requests[-1]
    assert (method, path) == ("POST", "/v1/jobs")
    assert body == {
        "name": "train",
        "project": "vision",
        "tasks": {
            "count": 2,
            "resources": {
                "cpu_milli": 4000,
                "memory_mib": 16384,
                "num_gpu": 1,
                "gpu_milli": 1000,
                "gpu_models": ["A100"],
            },
        },
        "priority": 5,
        "gang": False,
        "max_runtime": 3600,
        "checkpoint": {"interval": 600, "cost": 30},
        "command": ["python", "train.py"],
        "env": {"LR": "0.1"},
        "workdir": "/work",
        "on_failure": "restart",
        "max_restarts": 3,
    }


def test_submit_leaves_unset_optional_fields_to_the_service(
    client: Client, fake: FakeService
) -> None:
    client.submit("shell", "echo hi && sleep 1")
    body = fake.requests[-1][3]
    assert body["command"] == "echo hi && sleep 1"  # one string: run by /bin/sh -c
    for key in ("project", "max_runtime", "checkpoint", "env", "workdir"):
        assert key not in body


def test_get_cancel_and_wrong_state(client: Client, fake: FakeService) -> None:
    job_id = fake.add_job("RUNNING")
    assert client.get(job_id)["state"] == "RUNNING"
    assert client.cancel(job_id)["state"] == "CANCELLED"
    with pytest.raises(ApiError) as info:
        client.cancel(job_id)
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert str(info.value) == f"job {job_id} already finished"


def test_list_follows_cursors_across_three_pages(client: Client, fake: FakeService) -> None:
    for _ in range(7):
        fake.add_job("PENDING")
    fake.add_job("RUNNING")
    jobs = list(client.list(state="PENDING", limit=3))
    assert [j["id"] for j in jobs] == list(range(1, 8))
    pages = [q for m, p, q, _ in fake.requests if (m, p) == ("GET", "/v1/jobs")]
    assert [q.get("cursor") for q in pages] == [None, "3", "6"]
    assert all(q["limit"] == "3" and q["state"] == "PENDING" for q in pages)
    assert "project" not in pages[0] and "user" not in pages[0]


def test_list_is_lazy(client: Client, fake: FakeService) -> None:
    for _ in range(5):
        fake.add_job()
    first = next(iter(client.list(limit=2)))
    assert first["id"] == 1
    assert sum(1 for m, p, _, _ in fake.requests if p == "/v1/jobs") == 1


def test_logs_read_every_page_and_filter(client: Client, fake: FakeService) -> None:
    job_id = fake.add_job("RUNNING", tasks={"count": 2, "resources": {}})
    for i in range(5):
        fake.add_log(job_id, i % 2, "stdout", f"line {i}\n")
    chunks = client.logs(job_id)
    assert [c["data"] for c in chunks] == [f"line {i}\n" for i in range(5)]
    assert [c["seq"] for c in chunks] == [1, 2, 3, 4, 5]
    assert [c["data"] for c in client.logs(job_id, rank=1)] == ["line 1\n", "line 3\n"]
    assert [c["seq"] for c in client.logs(job_id, after=3)] == [4, 5]
    assert client.logs(job_id, attempt=2) == []


def test_follow_logs_until_finished_and_drained(client: Client, fake: FakeService) -> None:
    job = client.submit("run", ["python", "x.py"], count=2)
    chunks = list(client.follow_logs(job["id"], poll=0.01))
    assert [(c["rank"], c["stream"], c["data"]) for c in chunks] == [
        (0, "stdout", "hello from 0\n"),
        (1, "stdout", "hello from 1\n"),
        (0, "stderr", "warming up\n"),
        (0, "stdout", "done\n"),  # written as the job finished: still drained
    ]
    assert fake.jobs[job["id"]]["state"] == "SUCCEEDED"


def test_wait_returns_the_finished_job(client: Client) -> None:
    job = client.submit("run", ["false"], env={"EXIT": "3"})
    done = client.wait(job["id"], timeout=5, poll=0.01)
    assert (done["state"], done["exit_code"]) == ("FAILED", 3)


def test_wait_times_out(client: Client, fake: FakeService) -> None:
    job_id = fake.add_job("RUNNING")
    with pytest.raises(WaitTimeoutError) as info:
        client.wait(job_id, timeout=0.05, poll=0.01)
    assert info.value.job["state"] == "RUNNING"
    assert f"job {job_id} is still RUNNING" in str(info.value)


def test_events_checkpoints_and_resources(client: Client, fake: FakeService) -> None:
    job_id = fake.add_job("RUNNING")
    assert client.events(job_id)[0]["state"] == "PENDING"
    record = client.add_checkpoint(job_id, 100, "s3://b/ck-100", 2048)
    assert record["id"] == 1
    assert fake.requests[-1][3] == {
        "step": 100,
        "uri": "s3://b/ck-100",
        "size_bytes": 2048,
        "kind": "full",
        "parent": None,
        "complete": True,
    }
    [node] = client.nodes()
    assert node["name"] == "gpu-1" and node["allocated"]["gpu_milli"] == 0
    assert client.cluster()["nodes"] == {"up": 1}
    nominal: Allocation = {"cpu_milli": 8000, "memory_mib": 65536, "gpu_milli": 4000}
    client.put_quota("vision", nominal, pool="org/research", overcommit=1.5)
    assert fake.requests[-1][1:4:2] == (
        "/v1/quotas/vision",
        {"nominal": nominal, "pool": "org/research", "overcommit": 1.5},
    )
    assert client.quotas()[0]["pool"] == "org/research"


# Errors ----------------------------------------------------------------------------------
def test_bad_input_names_the_field(client: Client) -> None:
    with pytest.raises(ApiError) as info:
        client.submit("bad name!", ["true"])
    err = info.value
    assert (err.status, err.code, err.field) == (400, "invalid", "name")
    assert str(err) == "expected 1-128 of [A-Za-z0-9._-] (field: name)"


def test_unauthorized_and_not_found(server: str, client: Client) -> None:
    with pytest.raises(ApiError) as info:
        Client(server, "wrong").get(1)
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with pytest.raises(ApiError) as info:
        client.get(999)
    assert (info.value.status, info.value.code, info.value.field) == (404, "not_found", None)


def test_error_bodies_that_are_not_json(client: Client) -> None:
    with pytest.raises(ApiError) as info:
        client.get(500)
    assert (info.value.status, info.value.code) == (500, "http_500")
    assert info.value.message == "boom internal details"  # one line
    with pytest.raises(ApiError) as info:
        client.get(502)
    assert (info.value.status, info.value.message) == (502, "Bad Gateway")


def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServerUnreachableError) as info:
        Client(url, TOKEN, timeout=2).get(1)
    assert isinstance(info.value, ConnectionError)
    assert info.value.server == url and url in str(info.value)


def test_slow_server_times_out_as_unreachable(server: str) -> None:
    with pytest.raises(ServerUnreachableError, match="no answer within 0.1 s"):
        Client(server, TOKEN, timeout=0.1).get(777)


def test_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPLAT_SERVER", raising=False)
    monkeypatch.delenv("CPLAT_TOKEN", raising=False)
    assert (Client().server, Client().token) == (DEFAULT_SERVER, "")
    monkeypatch.setenv("CPLAT_SERVER", "head:9000/")
    monkeypatch.setenv("CPLAT_TOKEN", "secret-jwt")
    client = Client()
    assert (client.server, client.token) == ("http://head:9000", "secret-jwt")
    assert "secret-jwt" not in repr(client)
    with pytest.raises(ValueError, match="http"):
        Client("ftp://head", "t")


# Value parsers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("16Gi", 16384),
        ("512Mi", 512),
        ("2048", 2048),
        ("1.5Gi", 1536),
        ("16G", 16384),
        ("1TiB", 1048576),
        ("100Ki", 1),
        ("0", 0),
    ],
)
def test_parse_memory(text: str, mib: int) -> None:
    assert job_cli.parse_memory(text) == mib


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("90s", 90)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert job_cli.parse_duration(text) == seconds


def test_parse_cpu_share_and_env() -> None:
    assert [job_cli.parse_cpu(t) for t in ("4", "0.5", "500m", "0.0001")] == [4000, 500, 500, 1]
    assert job_cli.parse_gpu_share("0.25") == 250
    assert job_cli.parse_env(["A=1", "B=x=y", "A=2", "C="]) == {"A": "2", "B": "x=y", "C": ""}


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (job_cli.parse_memory, "lots"),
        (job_cli.parse_memory, "-1Gi"),
        (job_cli.parse_duration, "0"),
        (job_cli.parse_duration, "2 weeks"),
        (job_cli.parse_cpu, "-1"),
        (job_cli.parse_cpu, "four"),
        (job_cli.parse_gpu_share, "1.5"),
        (job_cli.parse_gpu_share, "0"),
        (job_cli.parse_env, ["novalue"]),
        (job_cli.parse_env, ["=x"]),
    ],
)
def test_parsers_reject_bad_values(parse: Any, text: Any) -> None:
    with pytest.raises(InputError):
        parse(text)


# CLI -------------------------------------------------------------------------------------
def test_cli_submit_maps_options_to_the_request(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = job_cli.main(
        [
            "job",
            "submit",
            "--name",
            "train",
            "--tasks",
            "2",
            "--cpu",
            "4",
            "--memory",
            "16Gi",
            "--gpus",
            "1",
            "--gpu-model",
            "A100",
            "--gpu-model",
            "H100",
            "--priority",
            "5",
            "--max-runtime",
            "2h",
            "--env",
            "LR=0.1",
            "--env",
            "OPTS=a=b",
            "--workdir",
            "/work",
            "--on-failure",
            "restart",
            "--max-restarts",
            "2",
            "--",
            "python",
            "train.py",
            "--lr",
            "0.1",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert out == "submitted job 1 (train, PENDING)\n"
    body = fake.requests[-1][3]
    assert body["tasks"] == {
        "count": 2,
        "resources": {
            "cpu_milli": 4000,
            "memory_mib": 16384,
            "num_gpu": 1,
            "gpu_milli": 1000,
            "gpu_models": ["A100", "H100"],
        },
    }
    assert body["max_runtime"] == 7200
    assert body["env"] == {"LR": "0.1", "OPTS": "a=b"}
    assert body["command"] == ["python", "train.py", "--lr", "0.1"]
    assert (body["priority"], body["workdir"]) == (5, "/work")
    assert (body["on_failure"], body["max_restarts"], body["gang"]) == ("restart", 2, True)


def test_cli_submit_defaults_and_gpu_share(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = job_cli.main(
        ["job", "submit", "--gpu-share", "0.5", "--json", "--", "/usr/bin/nvidia-smi"]
    )
    out, _ = capsys.readouterr()
    assert rc == 0 and json.loads(out)["id"] == 1
    body = fake.requests[-1][3]
    assert body["name"] == "nvidia-smi"  # named after the program
    assert body["tasks"]["resources"]["num_gpu"] == 1
    assert body["tasks"]["resources"]["gpu_milli"] == 500
    assert body["tasks"]["resources"]["memory_mib"] == 1024
    assert "max_runtime" not in body


@pytest.mark.parametrize(("exit_env", "rc"), [("0", 0), ("3", 3)])
def test_cli_submit_wait_exits_with_the_job_code(
    server: str, capsys: pytest.CaptureFixture[str], exit_env: str, rc: int
) -> None:
    argv = ["job", "submit", "--wait", "--env", f"EXIT={exit_env}", "--", "sh", "-c", "x"]
    assert job_cli.main(argv) == rc
    out, _ = capsys.readouterr()
    state = "SUCCEEDED" if rc == 0 else "FAILED"
    assert out.splitlines()[-1] == f"job 1 {state} (exit {exit_env})"


def test_cli_wait_timeout(
    server: str,
    fake: FakeService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(fake, "advance", lambda job: None)  # the job never leaves PENDING
    argv = ["job", "submit", "--wait", "--wait-timeout", "0.05", "--", "sleep", "9"]
    assert job_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: job 1 is still PENDING after 0.05 s (reason: queued)\n"


@pytest.mark.parametrize(
    ("argv", "rc", "line"),
    [
        (
            ["job", "submit", "--name", "bad name!", "--", "true"],
            2,
            "error: expected 1-128 of [A-Za-z0-9._-] (field: name)",
        ),
        (
            ["job", "submit", "--memory", "lots", "--", "true"],
            2,
            "error: expected a size like 16Gi, 512Mi or 2048 (MiB), got 'lots' (field: --memory)",
        ),
        (
            ["job", "submit", "--max-runtime", "soon", "--", "true"],
            2,
            "error: expected a duration like 3600, 30m, 2h or 1h30m, got 'soon' "
            "(field: --max-runtime)",
        ),
        (
            ["job", "submit", "--name", "x"],
            2,
            "error: give the command to run after --, as in: -- python train.py (field: command)",
        ),
        (["job", "get", "999"], 2, "error: no job 999"),
        (["job", "get", "500"], 1, "error: boom internal details"),
        (["job", "logs", "999"], 2, "error: no job 999"),
        (["job", "get", "1", "--token", "wrong"], 2, "error: missing or invalid token"),
        (["job", "list", "--server", "ftp://x"], 2, None),
    ],
)
def test_cli_errors_are_one_line(
    server: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    rc: int,
    line: str | None,
) -> None:
    assert job_cli.main(argv) == rc
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "Traceback" not in err
    if line is not None:
        assert err == line + "\n"


def test_cli_cancel_twice_is_a_conflict(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = fake.add_job("RUNNING")
    assert job_cli.main(["job", "cancel", str(job_id)]) == 0
    assert capsys.readouterr().out == f"cancelled job {job_id} (CANCELLED)\n"
    assert job_cli.main(["job", "cancel", str(job_id)]) == 2
    assert capsys.readouterr().err == f"error: job {job_id} already finished\n"


def test_cli_missing_token_gets_a_hint(
    server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CPLAT_TOKEN")
    assert job_cli.main(["job", "list"]) == 2
    assert capsys.readouterr().err == (
        "error: missing or invalid token; give --token or set CPLAT_TOKEN\n"
    )


def test_cli_unreachable_server_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("CPLAT_SERVER", url)
    assert job_cli.main(["job", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the cplat server at {url}: ")
    assert err.endswith("(give --server or set CPLAT_SERVER)\n") and err.count("\n") == 1


def test_cli_list_table_json_and_limit(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(150):  # more than one page of the CLI's 100
        fake.add_job("PENDING")
    fake.add_job("SUCCEEDED", name="etl")
    assert job_cli.main(["job", "list", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == list(range(1, 152))
    assert job_cli.main(["job", "list", "--state", "succeeded"]) == 0
    out = capsys.readouterr().out
    assert out.split()[:11] == [
        "ID",
        "NAME",
        "PROJECT",
        "USER",
        "STATE",
        "TASKS",
        "CPU",
        "MEMORY",
        "GPU",
        "SUBMITTED",
        "REASON",
    ]
    row = out.splitlines()[1].split()
    assert row[:9] == ["151", "etl", "vision", "ana", "SUCCEEDED", "(exit", "0)", "1", "1"]
    assert job_cli.main(["job", "list", "--limit", "2", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [1, 2]
    assert job_cli.main(["job", "list", "--user", "nobody"]) == 0
    assert capsys.readouterr().out == "no jobs\n"


def test_cli_get_and_events(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = fake.add_job(
        "RUNNING",
        name="train",
        command=["python", "train.py", "--tag", "a b"],
        placement=[{"rank": 0, "node": "gpu-1", "gpus": [0, 1]}],
    )
    assert job_cli.main(["job", "get", str(job_id)]) == 0
    out = capsys.readouterr().out
    assert f"job          {job_id} train\n" in out
    assert "command      python train.py --tag 'a b'\n" in out
    assert "placement    0:gpu-1[0,1]\n" in out
    assert job_cli.main(["job", "get", "--json", str(job_id)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "train"
    assert job_cli.main(["job", "events", str(job_id)]) == 0
    assert capsys.readouterr().out.split()[2:] == ["PENDING", "queued"]


def test_cli_logs_by_stream_and_rank(
    server: str, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = fake.add_job("RUNNING", tasks={"count": 2, "resources": {}})
    fake.add_log(job_id, 0, "stdout", "a\nb")
    fake.add_log(job_id, 1, "stdout", "c\n")
    fake.add_log(job_id, 0, "stdout", "-continued\n")
    fake.add_log(job_id, 1, "stderr", "oops\n")
    assert job_cli.main(["job", "logs", str(job_id)]) == 0
    out, err = capsys.readouterr()
    assert out == "[0] a\n[0] b[1] c\n-continued\n"
    assert err == "[1] oops\n"
    assert job_cli.main(["job", "logs", "--rank", "1", str(job_id)]) == 0
    assert capsys.readouterr() == ("c\n", "oops\n")


def test_cli_logs_follow(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert job_cli.main(["job", "submit", "--json", "--", "python", "x.py"]) == 0
    job_id = json.loads(capsys.readouterr().out)["id"]
    assert job_cli.main(["job", "logs", "--follow", str(job_id)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("hello from 0\ndone\n", "warming up\n")


def test_wait_rides_out_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    from cplat.client import Client, ServerUnreachableError

    client = Client("http://127.0.0.1:9", "t")
    answers: list[Any] = [
        {"id": 1, "state": "RUNNING"},
        ServerUnreachableError("http://127.0.0.1:9", "refused"),
        ServerUnreachableError("http://127.0.0.1:9", "refused"),
        {"id": 1, "state": "SUCCEEDED", "exit_code": 0},
    ]

    def get(job_id: int) -> Any:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(client, "get", get)
    assert client.wait(1, poll=0.01)["state"] == "SUCCEEDED"
    answers[:] = [ServerUnreachableError("http://127.0.0.1:9", "refused")] * 50
    with pytest.raises(ServerUnreachableError):
        client.wait(1, poll=0.01, outage=0.05)


def test_follow_logs_rides_out_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    from cplat.client import Client, ServerUnreachableError

    client = Client("http://127.0.0.1:9", "t")
    down = ServerUnreachableError("http://127.0.0.1:9", "refused")
    states: list[Any] = ["RUNNING", down, "SUCCEEDED", "SUCCEEDED"]
    pages: list[Any] = [[{"seq": 1, "data": "a"}], [{"seq": 2, "data": "b"}], []]

    def get(job_id: int) -> Any:
        s = states.pop(0)
        if isinstance(s, Exception):
            raise s
        return {"id": job_id, "state": s}

    monkeypatch.setattr(client, "get", get)
    monkeypatch.setattr(client, "logs", lambda job_id, **kw: pages.pop(0))
    assert [c["data"] for c in client.follow_logs(1, poll=0.01)] == ["a", "b"]
