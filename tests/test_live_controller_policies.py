"""The live policies wired into the controller, on a virtual clock with hand-driven agents:
maintenance windows drain and bring back their nodes, preemption victims get their grace
(cancels that carry it, no requeue before their tasks are gone or the grace is over, a
checkpoint to resume from), elastic jobs grow in place, and a restarted controller gets back
the reservations and the fair-share history from the store (on SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cplat.live.clock import VirtualClock
from cplat.live.controller import Controller, past_usage
from cplat.live.spec import JobSpec, TaskResources
from cplat.profile import POLICIES
from cplat.runtime.live import LiveCluster, LiveReservation
from cplat.scheduler import QueuePolicy
from cplat.store import open_store
from cplat.store.base import CheckpointIn, JobChange, JobRecord, NewJob, ReservationIn, Store

PG_DSN = os.environ.get("CPLAT_TEST_PG_DSN", "")
FOREVER = 10**9
GRACE_QUEUE = QueuePolicy(order="priority", preemption="priority", grace_period=30)


async def _pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: SQLite, or PostgreSQL in a schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield sqlite(tmp_path)
        return
    if not PG_DSN:
        pytest.skip("set CPLAT_TEST_PG_DSN to run the PostgreSQL store tests")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_pg_admin(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}search_path={schema}"
    finally:
        asyncio.run(_pg_admin(f"DROP SCHEMA {schema} CASCADE"))


@asynccontextmanager
async def controller(
    db: str,
    *,
    queue: QueuePolicy | None = None,
    queue_sort: tuple[str, dict[str, Any]] | None = None,
    start: float = 0.0,
) -> AsyncIterator[tuple[Controller, VirtualClock]]:
    """A controller without its own loop on a virtual clock, on the store at ``db``."""
    store = await open_store(db)
    clock = VirtualClock(start)
    cluster = LiveCluster(
        POLICIES["bestfit"], queue or QueuePolicy(order="priority"), queue_sort=queue_sort
    )
    ctrl = Controller(
        store, cluster, lambda rec, runtime: "tok", node_timeout=FOREVER, lease=FOREVER,
        clock=clock,
    )  # fmt: skip
    try:
        await ctrl.start(loop=False)
        yield ctrl, clock
        await ctrl.stop()
    finally:
        await store.close()


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cplat.db'}"


async def register(ctrl: Controller, name: str, cpu: int = 8) -> None:
    await ctrl.register_node({"name": name, "cpu_milli": cpu * 1000, "memory_mib": 65536})


async def submit(
    ctrl: Controller, at: float, *, cpu: int = 8, priority: int = 0, count: int = 1,
    min_count: int | None = None, project: str = "p",
) -> int:  # fmt: skip
    spec = JobSpec(
        command=("train",),
        count=count,
        min_count=min_count,
        resources=TaskResources(cpu_milli=cpu * 1000, memory_mib=1024),
        priority=priority,
        max_runtime=10_000,
    )
    (rec,) = await ctrl.store.create_jobs([NewJob(project, "u", "j", spec.to_dict(), at)])
    ctrl.accept([rec])
    return rec.id


async def take(ctrl: Controller, name: str) -> dict[str, Any]:
    """Poll node ``name`` like its agent; report what it was given running."""
    work = await ctrl.assignments(name, 0)
    for a in work["assignments"]:
        rep = {"job_id": a["job_id"], "attempt": a["attempt"], "rank": a["rank"]}
        await ctrl.task_report(name, {**rep, "state": "running"})
    return work


async def exited(
    ctrl: Controller, name: str, job_id: int, attempt: int, rank: int = 0, code: int = 0,
    reason: str = "",
) -> None:  # fmt: skip
    rep = {"job_id": job_id, "attempt": attempt, "rank": rank, "state": "exited"}
    await ctrl.task_report(name, {**rep, "exit_code": code, "reason": reason})


async def stored(ctrl: Controller, job_id: int) -> JobRecord:
    await ctrl.persist([])  # the ordered writer has written everything before this
    rec = await ctrl.store.get_job(job_id)
    assert rec is not None
    return rec


# Maintenance windows --------------------------------------------------------------------------


def test_drain_window_drains_its_nodes_and_brings_them_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path)) as (ctrl, clock):
            await register(ctrl, "n1")
            job = await submit(ctrl, 0)
            await ctrl.step()
            await take(ctrl, "n1")
            assert (await stored(ctrl, job)).state == "RUNNING"
            # A window added while the job runs: from 100 on, n1 is drained.
            ctrl.cluster.add_reservation(LiveReservation(1, 100, 200, ("n1",), drain=True))
            clock.set(99)
            await ctrl.step()
            assert (await ctrl.store.get_node("n1")).state == "up"  # type: ignore[union-attr]
            clock.set(100)
            await ctrl.step()
            node = await ctrl.store.get_node("n1")
            assert node is not None and node.state == "draining"
            rec = await stored(ctrl, job)
            events = [e.message for e in await ctrl.store.job_events(job)]
            assert rec.state == "PENDING" and "node n1 drained for a maintenance window" in events
            assert (await ctrl.assignments("n1", 0))["cancel"] == [{"job_id": job, "attempt": 1}]
            clock.set(200)
            await ctrl.step()
            node = await ctrl.store.get_node("n1")
            assert node is not None and node.state == "up"
            assert ctrl.nodes["n1"].rec.state == "up"

    asyncio.run(main())


def test_a_window_end_leaves_an_operators_cordon_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path)) as (ctrl, clock):
            await register(ctrl, "n1")
            ctrl.cluster.add_reservation(LiveReservation(1, 10, 20, ("n1",), drain=True))
            clock.set(10)
            await ctrl.step()
            assert ctrl.nodes["n1"].rec.state == "draining"
            await ctrl.set_node_state("n1", "cordoned")
            clock.set(20)
            await ctrl.step()
            assert ctrl.nodes["n1"].rec.state == "cordoned"
            # A window deleted while it drains gives its nodes back.
            ctrl.cluster.add_reservation(LiveReservation(2, 30, 90, ("n1",), drain=True))
            await ctrl.set_node_state("n1", "up")
            clock.set(30)
            await ctrl.step()
            assert ctrl.nodes["n1"].rec.state == "draining"
            assert ctrl.cluster.remove_reservation(2)
            clock.set(31)
            await ctrl.step()
            assert ctrl.nodes["n1"].rec.state == "up"

    asyncio.run(main())


# Preemption with a grace period ---------------------------------------------------------------


def test_preemption_victim_gets_its_grace_then_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path), queue=GRACE_QUEUE) as (ctrl, clock):
            await register(ctrl, "n1")
            low = await submit(ctrl, 0, project="low")
            await ctrl.step()
            await take(ctrl, "n1")
            clock.set(5)
            high = await submit(ctrl, 5, project="high", priority=10)
            await ctrl.step()
            # The victim is told to stop with the scheduler's grace; it is not requeued yet.
            work = await ctrl.assignments("n1", 0)
            assert work["cancel"] == [{"job_id": low, "attempt": 1, "grace": 30}]
            rec = await stored(ctrl, low)
            assert rec.state == "PREEMPTED" and "grace" in rec.reason and rec.placement
            assert (await stored(ctrl, high)).state == "PENDING"
            clock.set(15)
            await ctrl.step()
            assert (await stored(ctrl, high)).state == "PENDING"  # the victim still holds n1
            hb = await ctrl.heartbeat(
                "n1", {"tasks": [{"job_id": low, "attempt": 1, "rank": 0, "state": "running"}]}
            )
            assert hb == [{"job_id": low, "attempt": 1, "grace": 20}]  # what is left of it
            # It checkpoints (the agent records it before the exit) and stops: a normal stop.
            await ctrl.store.add_checkpoint(
                CheckpointIn(low, 1, 1, "/ck/low", 0, "full", None, True, 16.0)
            )
            clock.set(16)
            await exited(ctrl, "n1", low, 1, code=0, reason="cancelled")
            rec = await stored(ctrl, low)
            assert rec.state == "PENDING" and rec.finished_at is None
            assert not ctrl.cluster.in_grace(low)
            await ctrl.step()
            assert (await stored(ctrl, high)).state == "SCHEDULED"
            await take(ctrl, "n1")
            clock.set(20)
            await exited(ctrl, "n1", high, 1)
            await ctrl.step()
            (again,) = (await take(ctrl, "n1"))["assignments"]
            assert (again["job_id"], again["attempt"]) == (low, 2)
            assert again["resume_from"] == "/ck/low"

    asyncio.run(main())


def test_a_victims_stopped_tasks_do_not_fail_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path), queue=GRACE_QUEUE) as (ctrl, clock):
            await register(ctrl, "n1")
            low = await submit(ctrl, 0, project="low", cpu=4, count=2)
            await ctrl.step()
            await take(ctrl, "n1")
            clock.set(5)
            await submit(ctrl, 5, project="high", priority=10)
            await ctrl.step()
            # Rank 1 had no SIGTERM handler: killed by it, which is how a stop looks.
            await exited(ctrl, "n1", low, 1, rank=1, code=-15, reason="cancelled")
            assert (await stored(ctrl, low)).state == "PREEMPTED"
            await exited(ctrl, "n1", low, 1, rank=0, code=0, reason="cancelled")
            rec = await stored(ctrl, low)
            assert rec.state == "PENDING" and rec.exit_code is None

    asyncio.run(main())


def test_a_victim_that_ignores_its_grace_is_requeued_when_it_ends(tmp_path: Path) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path), queue=GRACE_QUEUE) as (ctrl, clock):
            await register(ctrl, "n1")
            low = await submit(ctrl, 0, project="low")
            await ctrl.step()
            await take(ctrl, "n1")
            clock.set(5)
            high = await submit(ctrl, 5, project="high", priority=10)
            await ctrl.step()
            clock.set(34)
            await ctrl.step()
            assert (await stored(ctrl, low)).state == "PREEMPTED"
            clock.set(35)
            await ctrl.step()
            assert (await stored(ctrl, low)).state == "PENDING"
            assert (await stored(ctrl, high)).state == "SCHEDULED"
            # A stopped task's report (SIGKILLed at the end of the grace) fails nothing.
            await exited(ctrl, "n1", low, 1, code=-9, reason="cancelled")
            assert (await stored(ctrl, low)).state == "PENDING"

    asyncio.run(main())


# Elastic jobs ---------------------------------------------------------------------------------


def test_elastic_job_grows_in_place_with_its_rendezvous(tmp_path: Path) -> None:
    async def main() -> None:
        async with controller(sqlite(tmp_path)) as (ctrl, clock):
            await register(ctrl, "n1", cpu=4)
            await register(ctrl, "n2", cpu=4)
            blocker = await submit(ctrl, 0, cpu=4)
            await ctrl.step()
            for n in ("n1", "n2"):
                await take(ctrl, n)
            clock.set(1)
            elastic = await submit(ctrl, 1, cpu=4, count=2, min_count=1)
            await ctrl.step()
            got = [a for n in ("n1", "n2") for a in (await take(ctrl, n))["assignments"]]
            (first,) = got
            assert first["elastic"] == {"min_tasks": 1, "max_tasks": 2}
            assert first["world_size"] == 1
            assert (await stored(ctrl, elastic)).state == "RUNNING"
            where = ctrl.jobs[blocker].tasks[0].node
            clock.set(10)
            await exited(ctrl, where, blocker, 1)
            await ctrl.step()
            (second,) = (await take(ctrl, where))["assignments"]
            # Same attempt, a new rank: it joins the running ranks' rendezvous.
            assert (second["job_id"], second["attempt"], second["rank"]) == (elastic, 1, 1)
            assert second["world_size"] == 2 and second["elastic"]["max_tasks"] == 2
            assert second["master_port"] == first["master_port"]
            rec = await stored(ctrl, elastic)
            assert rec.state == "RUNNING" and len(rec.placement) == 2
            assert (await ctrl.store.get_job(blocker)).state == "SUCCEEDED"  # type: ignore[union-attr]
            # A rank the job no longer has is stopped alone, not with the whole attempt.
            await ctrl.task_report(
                where, {"job_id": elastic, "attempt": 1, "rank": 5, "state": "running"}
            )
            cancels = (await ctrl.assignments(where, 0))["cancel"]
            assert cancels == [{"job_id": elastic, "attempt": 1, "rank": 5}]

    asyncio.run(main())


# Recovery -------------------------------------------------------------------------------------


async def _finish(store: Store, job_id: int, started: float, finished: float | None) -> None:
    changes = [JobChange(job_id, started, state="RUNNING", started_at=started, attempt=1)]
    if finished is not None:
        changes.append(JobChange(job_id, finished, state="SUCCEEDED", finished_at=finished))
    await store.update_jobs(changes)


def test_store_lists_finished_jobs_since(db: str) -> None:
    async def main() -> None:
        store = await open_store(db)
        try:
            spec = JobSpec(command=("x",)).to_dict()
            recs = await store.create_jobs([NewJob("p", "u", f"j{i}", spec, 0.0) for i in range(4)])
            ids = [r.id for r in recs]
            await _finish(store, ids[0], 10.0, 50.0)  # ended before `since`
            await _finish(store, ids[1], 10.0, 150.0)
            await _finish(store, ids[2], 10.0, None)  # still running
            # Cancelled before it ever started: no work to count.
            await store.update_jobs([JobChange(ids[3], 120.0, state="CANCELLED", finished_at=120)])
            assert [r.id for r in await store.finished_jobs(100.0)] == [ids[1]]
            assert [r.id for r in await store.finished_jobs(0.0)] == ids[:2]
        finally:
            await store.close()

    asyncio.run(main())


def test_restart_recovers_reservations_and_fair_share_history(db: str) -> None:
    sort = ("fairshare", {"half_life": 1000})
    now = 20_000.0  # history reaches back to 10_000

    async def main() -> None:
        async with controller(db, queue_sort=sort) as (ctrl, _):
            store = ctrl.store
            await register(ctrl, "n1")
            await ctrl.set_node_state("n1", "draining")  # a drain window that began
            spec = JobSpec(
                command=("x",), count=2, resources=TaskResources(cpu_milli=2000, memory_mib=512)
            ).to_dict()
            old, recent = await store.create_jobs(
                [NewJob("a", "u", "old", spec, 0.0), NewJob("a", "u", "recent", spec, 0.0)]
            )
            await _finish(store, old.id, 0.0, 9_000.0)  # ended over 10 half-lives ago
            await _finish(store, recent.id, now - 200, now - 100)
            for owner, start, end, drain in (("team", 25_000, 30_000, False), ("", 0, 5000, True)):
                await store.add_reservation(
                    ReservationIn(owner, start, end, ("n1",), drain, {}, "root", 0.0)
                )
        async with controller(db, queue_sort=sort, start=now) as (ctrl, _):
            assert sorted(r.owner for r in ctrl.cluster.reservations.values()) == ["", "team"]
            await ctrl.step()  # the first cycle builds the scheduler
            # The drain window ended while the server was away: its node comes back, and the
            # window is gone from the store (a later restart must not undo a new drain).
            assert ctrl.nodes["n1"].rec.state == "up"
            assert [r.owner for r in await ctrl.store.list_reservations()] == ["team"]
            rows = {r["project"]: r for r in ctrl.cluster.fairshare(int(now))["projects"]}
            rec = await ctrl.store.get_job(recent.id)
            assert rec is not None
            expected = LiveCluster(POLICIES["bestfit"], QueuePolicy(), queue_sort=sort)
            expected.add_history([past_usage(rec, now)], int(now))
            expected.upsert_node(ctrl.cluster.nodes[0], int(now))
            expected.flush(int(now))
            want = expected.fairshare(int(now))["projects"][0]["usage"]
            assert rows["a"]["usage"] == pytest.approx(want) and want > 0
            assert past_usage(rec, now).demand == (4000.0, 1024.0, 0.0)

    asyncio.run(main())
