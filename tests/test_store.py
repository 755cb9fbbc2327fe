"""The durable store, one suite for both backends (SQLite, and PostgreSQL when a DSN is given).

PostgreSQL runs need ``CPLAT_TEST_PG_DSN`` (``postgresql://user:password@host:port/db``); each
test gets a fresh schema there (through ``search_path``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import cplat
from cplat.store import (
    AuditIn,
    CheckpointIn,
    JobChange,
    LogChunk,
    NewJob,
    NodeRecord,
    PoolRecord,
    QuotaRecord,
    Store,
    StoreError,
    open_store,
)
from cplat.store.schema import LATEST_VERSION, migrate_postgres, migrate_sqlite
from cplat.store.sqlite import SqliteStore

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]

PG_DSN = os.environ.get("CPLAT_TEST_PG_DSN", "")
PG_SKIP = "set CPLAT_TEST_PG_DSN to run the PostgreSQL store tests; .ci/run does"


@dataclass
class Backend:
    """Where a test's store lives, and raw access to it behind the store's back."""

    name: str
    url: str
    run: Run[Any]

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.url, isolation_level=None)
            try:
                return [tuple(r) for r in conn.execute(statement).fetchall()]
            finally:
                conn.close()

        async def pg() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(statement)]
            finally:
                await conn.close()

        return self.run(pg())

    def migrate(self) -> list[int]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.url, isolation_level=None)
            try:
                return migrate_sqlite(conn)
            finally:
                conn.close()

        async def pg() -> list[int]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return await migrate_postgres(conn)
            finally:
                await conn.close()

        return self.run(pg())


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """Run coroutines on one event loop for the whole test (an asyncpg pool is tied to one)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, run: Run[Any]) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "cplat.db"), run)
        return
    if not PG_DSN:
        pytest.skip(PG_SKIP)
    import asyncpg

    schema = f"test_{uuid.uuid4().hex[:16]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    run(admin(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield Backend("postgres", f"{PG_DSN}{sep}search_path={schema}", run)
    finally:
        run(admin(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def store(backend: Backend, run: Run[Any]) -> Iterator[Store]:
    s = run(open_store(backend.url))
    try:
        yield s
    finally:
        run(s.close())


def new_job(i: int = 0, project: str = "vision", user: str = "ana", at: float = 1000.0) -> NewJob:
    return NewJob(project, user, f"job-{i}", {"command": ["run", str(i)], "n": i}, at + i)


# Jobs ----------------------------------------------------------------------------------


def test_create_and_get(store: Store, run: Run[Any]) -> None:
    assert run(store.create_jobs([])) == []
    jobs = run(store.create_jobs([new_job(i) for i in range(3)]))
    assert [j.name for j in jobs] == ["job-0", "job-1", "job-2"]
    assert jobs[0].id < jobs[1].id < jobs[2].id
    first = jobs[0]
    assert (first.project, first.user, first.state, first.reason) == (
        "vision",
        "ana",
        "PENDING",
        "queued",
    )
    assert first.spec == {"command": ["run", "0"], "n": 0}
    assert first.submitted_at == first.updated_at == 1000.0
    assert (first.started_at, first.finished_at, first.exit_code) == (None, None, None)
    assert (first.placement, first.attempt) == ([], 0)
    for job in jobs:
        assert run(store.get_job(job.id)) == job
    assert run(store.get_job(jobs[-1].id + 100)) is None
    events = run(store.job_events(first.id))
    assert [(e.job_id, e.state, e.message, e.at) for e in events] == [
        (first.id, "PENDING", "submitted", 1000.0)
    ]


def test_create_refuses_non_json_spec(store: Store, run: Run[Any]) -> None:
    with pytest.raises(ValueError):
        run(store.create_jobs([NewJob("p", "u", "n", {"x": math.nan}, 1.0)]))
    assert run(store.list_jobs()) == []


def test_list_jobs_filters_and_cursor(store: Store, run: Run[Any]) -> None:
    specs = [
        ("vision", "ana"),
        ("nlp", "bob"),
        ("vision", "bob"),
        ("speech", "ana"),
        ("vision", "ana"),
        ("nlp", "ana"),
    ]
    jobs = run(store.create_jobs([new_job(i, p, u) for i, (p, u) in enumerate(specs)]))
    ids = [j.id for j in jobs]
    run(store.update_jobs([JobChange(ids[2], 2000.0, state="RUNNING")]))
    run(store.update_jobs([JobChange(ids[4], 2000.0, state="RUNNING")]))

    def listed(**kw: Any) -> list[int]:
        return [j.id for j in run(store.list_jobs(**kw))]

    assert listed() == ids
    assert listed(projects=["vision"]) == [ids[0], ids[2], ids[4]]
    assert listed(projects=["nlp", "speech"]) == [ids[1], ids[3], ids[5]]
    assert listed(projects=[]) == []
    assert listed(projects=["nobody"]) == []
    assert listed(state="RUNNING") == [ids[2], ids[4]]
    assert listed(state="PENDING") == [ids[0], ids[1], ids[3], ids[5]]
    assert listed(user="bob") == [ids[1], ids[2]]
    assert listed(projects=["vision"], state="RUNNING", user="ana") == [ids[4]]
    assert listed(after=ids[3]) == ids[4:]
    assert listed(limit=2) == ids[:2]
    assert listed(limit=0) == []
    assert listed(projects=["vision", "nlp"], after=ids[1], limit=2) == [ids[2], ids[4]]

    # Walking the cursor visits every job once, in order.
    seen: list[int] = []
    cursor: int | None = None
    while True:
        page = listed(after=cursor, limit=4)
        if not page:
            break
        seen += page
        cursor = page[-1]
    assert seen == ids
    assert run(store.list_jobs(projects=["speech"]))[0] == run(store.get_job(ids[3]))


def test_update_jobs_events_and_clear(store: Store, run: Run[Any]) -> None:
    a, b = run(store.create_jobs([new_job(0), new_job(1)]))
    placement = [{"node": "gpu-1", "gpus": [0, 1]}, {"node": "gpu-2", "gpus": [3]}]
    run(
        store.update_jobs(
            [
                JobChange(a.id, 2000.0, state="SCHEDULED", placement=placement, event="placed"),
                JobChange(
                    a.id, 2001.0, state="RUNNING", reason="running", started_at=2001.0, attempt=1
                ),
                JobChange(b.id, 2002.0, reason="waiting for quota", event="still queued"),
                JobChange(b.id + 1000, 2003.0, state="FAILED", event="never stored"),
            ]
        )
    )
    got = run(store.get_job(a.id))
    assert got is not None
    assert (got.state, got.reason, got.started_at, got.attempt) == ("RUNNING", "running", 2001.0, 1)
    assert got.placement == placement
    assert got.updated_at == 2001.0
    assert got.spec == a.spec and got.submitted_at == a.submitted_at
    events = run(store.job_events(a.id))
    assert [(e.state, e.message, e.at) for e in events] == [
        ("PENDING", "submitted", a.submitted_at),
        ("SCHEDULED", "placed", 2000.0),
    ]
    # An event without a state change records the job's current state.
    assert [(e.state, e.message) for e in run(store.job_events(b.id))][-1] == (
        "PENDING",
        "still queued",
    )
    assert run(store.get_job(b.id + 1000)) is None
    assert all(e.job_id in (a.id, b.id) for e in run(store.job_events(b.id + 1000)))

    run(
        store.update_jobs(
            [JobChange(a.id, 2100.0, state="FAILED", finished_at=2100.0, exit_code=3, event="x")]
        )
    )
    got = run(store.get_job(a.id))
    assert got is not None and (got.finished_at, got.exit_code) == (2100.0, 3)
    # Requeue: clear the run's times and exit code; untouched fields stay.
    run(
        store.update_jobs(
            [
                JobChange(
                    a.id,
                    2200.0,
                    state="PENDING",
                    placement=[],
                    clear=("started_at", "finished_at", "exit_code"),
                    event="requeued",
                )
            ]
        )
    )
    got = run(store.get_job(a.id))
    assert got is not None
    assert (got.state, got.started_at, got.finished_at, got.exit_code) == (
        "PENDING",
        None,
        None,
        None,
    )
    assert (got.placement, got.attempt, got.reason, got.updated_at) == ([], 1, "running", 2200.0)
    # exit_code 0 is a value, not "leave alone".
    run(store.update_jobs([JobChange(a.id, 2300.0, exit_code=0, attempt=0)]))
    got = run(store.get_job(a.id))
    assert got is not None and (got.exit_code, got.attempt) == (0, 0)
    assert [e.message for e in run(store.job_events(a.id))] == [
        "submitted",
        "placed",
        "x",
        "requeued",
    ]


def test_update_jobs_refuses_bad_changes_atomically(store: Store, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    bad = [
        JobChange(job.id, 2.0, clear=("reason",)),
        JobChange(job.id, 2.0, exit_code=1, clear=("exit_code",)),
        JobChange(job.id, 2.0, state="BOGUS"),
    ]
    for change in bad:
        with pytest.raises(ValueError):
            run(store.update_jobs([JobChange(job.id, 2.0, state="RUNNING"), change]))
    assert run(store.get_job(job.id)) == job
    run(store.update_jobs([]))


def test_unfinished_jobs(store: Store, run: Run[Any]) -> None:
    jobs = run(store.create_jobs([new_job(i) for i in range(7)]))
    states = ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"]
    run(
        store.update_jobs(
            [JobChange(j.id, 3.0, state=s) for j, s in zip(jobs, states, strict=True)]
        )
    )
    unfinished = run(store.unfinished_jobs())
    assert [j.state for j in unfinished] == ["PENDING", "SCHEDULED", "RUNNING", "PREEMPTED"]
    assert [j.id for j in unfinished] == sorted(j.id for j in unfinished)


def test_job_events_cursor(store: Store, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    run(store.update_jobs([JobChange(job.id, 10.0 + i, event=f"e{i}") for i in range(5)]))
    events = run(store.job_events(job.id))
    assert [e.message for e in events] == ["submitted", "e0", "e1", "e2", "e3", "e4"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    after = run(store.job_events(job.id, after=events[2].id, limit=2))
    assert [e.message for e in after] == ["e2", "e3"]
    assert run(store.job_events(job.id + 1)) == []


# Logs ----------------------------------------------------------------------------------


def test_logs_order_and_filters(store: Store, run: Run[Any]) -> None:
    a, b = run(store.create_jobs([new_job(0), new_job(1)]))
    chunks = [
        LogChunk(a.id, attempt, rank, "stdout" if i % 2 == 0 else "stderr", f"line {i}\n", 5.0 + i)
        for i, (attempt, rank) in enumerate([(0, 0), (0, 1), (0, 0), (1, 0), (1, 1), (1, 0)])
    ]
    run(store.append_logs(chunks[:3]))
    run(store.append_logs([LogChunk(b.id, 0, 0, "stdout", "other job\n", 6.0)]))
    run(store.append_logs(chunks[3:]))
    run(store.append_logs([]))
    logs = run(store.job_logs(a.id))
    assert [lg.data for lg in logs] == [c.data for c in chunks]
    assert [lg.seq for lg in logs] == sorted(lg.seq for lg in logs)
    assert len({lg.seq for lg in logs}) == len(logs)
    first = logs[0]
    assert (first.job_id, first.attempt, first.rank, first.stream, first.at) == (
        a.id,
        0,
        0,
        "stdout",
        5.0,
    )
    assert [lg.data for lg in run(store.job_logs(a.id, rank=0))] == [
        "line 0\n",
        "line 2\n",
        "line 3\n",
        "line 5\n",
    ]
    assert [lg.data for lg in run(store.job_logs(a.id, attempt=1, rank=1))] == ["line 4\n"]
    assert [lg.data for lg in run(store.job_logs(a.id, after=logs[1].seq, limit=2))] == [
        "line 2\n",
        "line 3\n",
    ]
    assert [lg.data for lg in run(store.job_logs(b.id))] == ["other job\n"]
    assert run(store.job_logs(a.id, limit=0)) == []


def test_logs_keep_any_text(store: Store, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    data = ["héllo ✓ \U0001f680\n", "bell\a tab\t cr\r\n", "nul\0byte\n", "", "x" * 100_000]
    run(store.append_logs([LogChunk(job.id, 0, 0, "stdout", d, 1.0) for d in data]))
    stored = [lg.data for lg in run(store.job_logs(job.id))]
    assert stored == [d.replace("\0", "\ufffd") for d in data]


def test_logs_of_unknown_job_are_refused(store: Store, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    with pytest.raises(StoreError):
        run(
            store.append_logs(
                [
                    LogChunk(job.id, 0, 0, "stdout", "a", 1.0),
                    LogChunk(job.id + 9, 0, 0, "stdout", "b", 1.0),
                ]
            )
        )
    assert run(store.job_logs(job.id)) == []


# Nodes, quotas, pools ------------------------------------------------------------------


def node(name: str, state: str = "up", gpus: int = 2, at: float = 10.0) -> NodeRecord:
    spec = {
        "cpu_milli": 64000,
        "memory_mib": 512 * 1024,
        "gpus": [{"index": i, "uuid": f"GPU-{name}-{i}", "model": "H100"} for i in range(gpus)],
        "rack": "r1",
        "hostname": name,
    }
    return NodeRecord(name, state, spec, {"zone": "a"}, at, at)


def test_nodes_upsert_list_delete(store: Store, run: Run[Any]) -> None:
    run(store.put_node(node("gpu-2")))
    run(store.put_node(node("gpu-1")))
    assert [n.name for n in run(store.list_nodes())] == ["gpu-1", "gpu-2"]
    assert run(store.get_node("gpu-1")) == node("gpu-1")
    assert run(store.get_node("nope")) is None
    replaced = NodeRecord("gpu-1", "cordoned", node("gpu-1", gpus=8).spec, {}, 10.0, 99.0)
    run(store.put_node(replaced))
    assert run(store.get_node("gpu-1")) == replaced
    assert len(run(store.list_nodes())) == 2
    assert run(store.delete_node("gpu-1")) is True
    assert run(store.delete_node("gpu-1")) is False
    assert [n.name for n in run(store.list_nodes())] == ["gpu-2"]


def test_quotas_and_pools(store: Store, run: Run[Any]) -> None:
    vision = QuotaRecord("vision", (64000, 1 << 20, 8000), (1000, 2048, 1000), None, "org/ml", 1.5)
    nlp = QuotaRecord("nlp", (1, 2, 3), lending_limit=(0, 0, 500))
    run(store.put_quota(vision))
    run(store.put_quota(nlp))
    assert run(store.list_quotas()) == [nlp, vision]
    vision2 = QuotaRecord("vision", (1, 1, 1), (0, 0, 0), (1, 1, 1), "", 1.0)
    run(store.put_quota(vision2))
    assert run(store.list_quotas()) == [nlp, vision2]
    assert run(store.delete_quota("nlp")) is True
    assert run(store.delete_quota("nlp")) is False
    assert run(store.list_quotas()) == [vision2]

    research = PoolRecord("org/research", (10, 20, 30), "research cohort")
    org = PoolRecord("org")
    run(store.put_pool(research))
    run(store.put_pool(org))
    assert run(store.list_pools()) == [org, research]
    run(store.put_pool(PoolRecord("org", (1, 2, 3), "capped")))
    assert run(store.list_pools())[0] == PoolRecord("org", (1, 2, 3), "capped")
    run(store.put_pool(PoolRecord("org")))
    assert run(store.list_pools())[0] == org
    assert run(store.delete_pool("org")) is True
    assert run(store.delete_pool("org")) is False
    assert run(store.list_pools()) == [research]


# Checkpoints and audit -----------------------------------------------------------------


def test_checkpoints(store: Store, run: Run[Any]) -> None:
    a, b = run(store.create_jobs([new_job(0), new_job(1)]))
    full = run(
        store.add_checkpoint(
            CheckpointIn(a.id, 0, 100, "s3://ck/100", 1 << 40, "full", None, True, 50.0)
        )
    )
    inc = run(
        store.add_checkpoint(
            CheckpointIn(a.id, 0, 200, "s3://ck/200", 1 << 20, "incremental", full.id, False, 60.0)
        )
    )
    run(store.add_checkpoint(CheckpointIn(b.id, 1, 5, "file:///ck", 10, "full", None, True, 70.0)))
    assert (full.job_id, full.step, full.size_bytes, full.parent, full.complete) == (
        a.id,
        100,
        1 << 40,
        None,
        True,
    )
    assert inc.id > full.id and inc.parent == full.id and inc.complete is False
    assert run(store.list_checkpoints(a.id)) == [full, inc]
    assert [c.uri for c in run(store.list_checkpoints(b.id))] == ["file:///ck"]
    assert run(store.list_checkpoints(b.id + 99)) == []
    with pytest.raises(StoreError):
        run(store.add_checkpoint(CheckpointIn(b.id + 99, 0, 1, "x", 1, "full", None, True, 1.0)))


def test_audit(store: Store, run: Run[Any]) -> None:
    entries = [
        AuditIn(
            100.0 + i,
            "ana",
            "vision" if i % 2 else "nlp",
            "POST /v1/jobs",
            f"job/{i}",
            201,
            {"i": i},
        )
        for i in range(5)
    ]
    run(store.append_audit(entries[:2]))
    run(store.append_audit(entries[2:]))
    run(store.append_audit([]))
    got = run(store.list_audit())
    assert [(e.at, e.user, e.project, e.action, e.target, e.status, e.detail) for e in got] == [
        (e.at, e.user, e.project, e.action, e.target, e.status, e.detail) for e in entries
    ]
    assert [e.id for e in got] == sorted(e.id for e in got)
    assert [e.target for e in run(store.list_audit(project="vision"))] == ["job/1", "job/3"]
    assert [e.target for e in run(store.list_audit(after=got[1].id, limit=2))] == ["job/2", "job/3"]
    assert [e.target for e in run(store.list_audit(project="nlp", after=got[0].id))] == [
        "job/2",
        "job/4",
    ]


def test_submissions_commit_with_their_audit_entries(store: Store, run: Run[Any]) -> None:
    def entry(i: int) -> AuditIn:
        return AuditIn(50.0 + i, "ana", "vision", "POST /v1/jobs", "job/{id}", 201, {"i": i})

    async def burst() -> list[int]:
        # Concurrent calls: the writers merge them into one transaction where they can.
        calls = [store.create_jobs([new_job(i)], audit=[entry(i)]) for i in range(20)]
        return [r[0].id for r in await asyncio.gather(*calls)]

    ids = run(burst())
    got = run(store.list_audit(limit=100))
    assert [(e.target, e.detail) for e in got] == [
        (f"job/{job_id}", {"i": i}) for i, job_id in enumerate(ids)
    ]
    (job,) = run(store.create_jobs([new_job(99)], audit=[entry(99), entry(100)]))
    tail = run(store.list_audit(after=got[-1].id))
    assert [e.target for e in tail] == [f"job/{job.id}", "job/{id}"]


# Concurrency, durability, migrations ---------------------------------------------------


def test_concurrent_creates_get_distinct_ascending_ids(store: Store, run: Run[Any]) -> None:
    async def burst() -> list[list[int]]:
        results = await asyncio.gather(*(store.create_jobs([new_job(i)]) for i in range(200)))
        return [[j.id for j in r] for r in results]

    per_call = run(burst())
    ids = [i for call in per_call for i in call]
    assert len(ids) == len(set(ids)) == 200
    assert [j.id for j in run(store.list_jobs(limit=1000))] == sorted(ids)
    # Both backends funnel writes through one FIFO writer: ids follow submission order.
    assert ids == sorted(ids)

    async def batches() -> list[list[tuple[int, str]]]:
        calls = [store.create_jobs([new_job(10 * i + k) for k in range(5)]) for i in range(20)]
        return [[(j.id, j.name) for j in r] for r in await asyncio.gather(*calls)]

    for i, call in enumerate(run(batches())):
        assert [name for _, name in call] == [f"job-{10 * i + k}" for k in range(5)]
        assert [job_id for job_id, _ in call] == sorted(job_id for job_id, _ in call)
        for job_id, name in call:
            job = run(store.get_job(job_id))
            assert job is not None and job.name == name


def test_one_failing_write_does_not_sink_its_batch(store: Store, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))

    async def mixed() -> list[Any]:
        writes: list[Coroutine[Any, Any, Any]] = []
        for i in range(30):
            if i % 10 == 5:
                writes.append(store.append_logs([LogChunk(job.id + 999, 0, 0, "stdout", "x", 1.0)]))
            else:
                writes.append(store.append_logs([LogChunk(job.id, 0, 0, "stdout", str(i), 1.0)]))
        return await asyncio.gather(*writes, return_exceptions=True)

    outcomes = run(mixed())
    assert [isinstance(o, StoreError) for o in outcomes] == [i % 10 == 5 for i in range(30)]
    assert len(run(store.job_logs(job.id))) == 27


def test_mixed_burst_with_a_failing_write(store: Store, run: Run[Any]) -> None:
    # Creates, updates and a write that fails, all queued together: the backends batch them
    # (PostgreSQL even merges neighbouring creates), yet each call gets its own answer.
    (first,) = run(store.create_jobs([new_job()]))

    async def burst() -> list[Any]:
        writes: list[Coroutine[Any, Any, Any]] = []
        for i in range(40):
            if i == 17:
                writes.append(store.append_logs([LogChunk(first.id + 999, 0, 0, "stdout", "", 1)]))
            elif i % 5 == 4:
                writes.append(store.update_jobs([JobChange(first.id, float(i), reason=f"r{i}")]))
            else:
                writes.append(store.create_jobs([new_job(100 + i), new_job(200 + i)]))
        return await asyncio.gather(*writes, return_exceptions=True)

    outcomes = run(burst())
    assert isinstance(outcomes[17], StoreError)
    created = [o for i, o in enumerate(outcomes) if i != 17 and i % 5 != 4]
    assert all(o is None for i, o in enumerate(outcomes) if i % 5 == 4)
    ids = [j.id for pair in created for j in pair]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 62
    for pair in created:
        for job in pair:
            assert run(store.get_job(job.id)) == job
    got = run(store.get_job(first.id))
    assert got is not None and got.reason == "r39"
    assert len(run(store.list_jobs(limit=1000))) == 63


def test_durable_across_close_and_reopen(backend: Backend, run: Run[Any]) -> None:
    async def write() -> list[int]:
        s = await open_store(backend.url)
        jobs = await s.create_jobs([new_job(i) for i in range(3)])
        await s.update_jobs([JobChange(jobs[1].id, 50.0, state="RUNNING", event="go")])
        await s.append_logs([LogChunk(jobs[1].id, 0, 0, "stdout", "hello\n", 51.0)])
        await s.put_node(node("gpu-1"))
        await s.put_quota(QuotaRecord("vision", (1, 2, 3)))
        await s.put_pool(PoolRecord("org"))
        await s.add_checkpoint(CheckpointIn(jobs[1].id, 0, 1, "u", 1, "full", None, True, 52.0))
        await s.append_audit([AuditIn(53.0, "ana", "vision", "PUT", "quota/vision", 200, {})])
        # Writes queued right before close() are flushed by it.
        pending = asyncio.ensure_future(s.create_jobs([new_job(9)]))
        await asyncio.sleep(0)
        await s.close()
        await s.close()
        assert pending.done()
        with pytest.raises(StoreError):
            await s.create_jobs([new_job()])
        with pytest.raises(StoreError):
            await s.get_job(jobs[0].id)
        return [j.id for j in jobs] + [pending.result()[0].id]

    ids = run(write())

    async def read() -> None:
        s = await open_store(backend.url)
        try:
            assert [j.id for j in await s.list_jobs()] == ids
            job = await s.get_job(ids[1])
            assert job is not None and job.state == "RUNNING"
            assert [e.message for e in await s.job_events(ids[1])] == ["submitted", "go"]
            assert [lg.data for lg in await s.job_logs(ids[1])] == ["hello\n"]
            assert await s.get_node("gpu-1") == node("gpu-1")
            assert await s.list_quotas() == [QuotaRecord("vision", (1, 2, 3))]
            assert await s.list_pools() == [PoolRecord("org")]
            assert len(await s.list_checkpoints(ids[1])) == 1
            assert len(await s.list_audit()) == 1
            # New ids continue after the old ones.
            (new,) = await s.create_jobs([new_job()])
            assert new.id > max(ids)
        finally:
            await s.close()

    run(read())


def test_migrations_twice_are_a_no_op(store: Store, backend: Backend, run: Run[Any]) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    versions = backend.sql("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)]
    assert backend.migrate() == []
    assert backend.migrate() == []
    assert backend.sql("SELECT version FROM schema_version ORDER BY version") == versions
    assert run(store.get_job(job.id)) == job
    again = run(open_store(backend.url))
    run(again.close())
    assert backend.sql("SELECT count(*) FROM jobs") == [(1,)]


def test_schema_newer_than_code_is_refused(backend: Backend, run: Run[Any]) -> None:
    run(run(open_store(backend.url)).close())
    newer = LATEST_VERSION + 1
    backend.sql(
        f"INSERT INTO schema_version (version, name, applied_at) VALUES ({newer}, 'future', 0)"
    )
    with pytest.raises(StoreError, match=f"version {newer}, newer than this cplat"):
        run(open_store(backend.url))
    with pytest.raises(StoreError, match="newer"):
        backend.migrate()


# SQLite specifics ----------------------------------------------------------------------


def test_sqlite_is_wal_and_synchronous_full(tmp_path: Path, run: Run[Any]) -> None:
    async def check() -> tuple[Any, Any]:
        s = await SqliteStore.open(tmp_path / "x.db")
        try:
            write = await s._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
            read = await s._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
            return write, read
        finally:
            await s.close()

    assert run(check()) == (2, 2)  # 2 is FULL
    assert backend_journal(tmp_path / "x.db") == "wal"


def backend_journal(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_open_store_urls(tmp_path: Path, run: Run[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "abs" / "deeper" / "a.db"
    for url, path in [
        (f"sqlite://{absolute}", absolute),
        ("sqlite://rel/b.db", tmp_path / "rel" / "b.db"),
        (str(tmp_path / "plain" / "c.db"), tmp_path / "plain" / "c.db"),
        ("d.db", tmp_path / "d.db"),
    ]:
        s = run(open_store(url))
        assert isinstance(s, SqliteStore)
        run(s.create_jobs([new_job()]))
        run(s.close())
        assert path.is_file(), url
    for bad in ["mysql://localhost/db", "http://example.com/x.db", "sqlite://", ""]:
        with pytest.raises(ValueError, match="store URL"):
            run(open_store(bad))
    with pytest.raises(ValueError, match=r"mysql://localhost/db"):
        run(open_store("mysql://localhost/db"))


def test_sqlite_answered_writes_survive_kill_9(tmp_path: Path, run: Run[Any]) -> None:
    db = tmp_path / "k.db"
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from cplat.store import NewJob, open_store

        async def main():
            s = await open_store({str(db)!r})
            for i in range(20):
                (job,) = await s.create_jobs([NewJob("p", "u", f"j{{i}}", {{}}, 1.0)])
                print(job.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    # The child must import the same cplat as this process (source tree or installed).
    cplat_root = Path(cplat.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(cplat_root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    answered = [int(line) for line in proc.stdout.split()]
    assert len(answered) == 20

    async def check() -> list[int]:
        s = await open_store(str(db))
        try:
            return [j.id for j in await s.list_jobs()]
        finally:
            await s.close()

    assert run(check()) == answered


def test_sqlite_open_failure_is_a_store_error(tmp_path: Path, run: Run[Any]) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError):
        run(open_store(str(tmp_path / "dir.db")))


def test_store_timing_is_reasonable(store: Store, run: Run[Any]) -> None:
    # A smoke check of group commit, not a benchmark (bench/bench_store.py is): 32 concurrent
    # writers must not serialise into one fsync each on a loaded CI machine.
    async def burst() -> float:
        t0 = time.perf_counter()

        async def writer(w: int) -> None:
            for i in range(20):
                await store.create_jobs([new_job(i, user=f"u{w}")])

        await asyncio.gather(*(writer(w) for w in range(32)))
        return time.perf_counter() - t0

    elapsed = run(burst())
    assert len(run(store.list_jobs(limit=10000))) == 640
    assert elapsed < 10.0
