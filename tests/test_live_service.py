"""The live policies through the service's API: ``/v1/reservations`` (who may create, list
and delete; bad input; the store keeps them across a restart), ``/v1/fairshare`` (the
profile's queue sort, per project, only one's own project for non-admins) and the submission
fields of exclusive and elastic jobs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
from cplat.store import open_store  # noqa: E402
from cplat.store.base import ReservationIn  # noqa: E402
from cplat.testing.service import ADMIN, running_service, token  # noqa: E402
from cplat_server.keys import CONTROLLER  # noqa: E402

MEMBER = token("ana", "vision", "member")
VIEWER = token("vic", "vision", "viewer")
OTHER = token("olga", "audio", "admin")
PROFILE = '[queue_sort]\nname = "fairshare"\nhalf_life = 600\n'


async def _register(svc: Any, name: str, gpus: int = 0) -> None:
    body = {
        "name": name,
        "cpu_milli": 8000,
        "memory_mib": 16384,
        "address": "10.0.0.1",
        "gpus": [
            {"index": i, "model": "A100", "memory_mib": 81920, "healthy": True} for i in range(gpus)
        ],
    }
    status, out = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
    assert status in (200, 201), out


def test_reservations_api(tmp_path: Path) -> None:
    async def main() -> None:
        now = int(time.time())
        window = {"start": now + 3600, "end": now + 7200}
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1", gpus=8)
            await _register(svc, "n2", gpus=4)
            ok = {**window, "owner": "vision", "nodes": ["n1"]}
            status, res = await svc.call("POST", "/v1/reservations", ADMIN, json=ok)
            assert status == 201, res
            assert res["nodes"] == ["n1"] and res["owner"] == "vision" and not res["active"]
            status, cap = await svc.call(
                "POST",
                "/v1/reservations",
                ADMIN,
                json={**window, "capacity": {"gpus": 2}, "drain": True},
            )
            assert status == 201 and cap["nodes"] == ["n2"], cap  # n1 is taken then
            assert svc.app[CONTROLLER].cluster.reservations.keys() == {res["id"], cap["id"]}
            status, _ = await svc.call(
                "POST",
                "/v1/reservations",
                ADMIN,
                json={**window, "owner": "audio", "nodes": ["n2"]},
            )
            assert status == 201
            # Who may do what.
            for tok in (MEMBER, OTHER):
                status, err = await svc.call("POST", "/v1/reservations", tok, json=ok)
                assert status == 403, err
                status, _ = await svc.call("DELETE", f"/v1/reservations/{res['id']}", tok)
                assert status == 403
            status, seen = await svc.call("GET", "/v1/reservations", VIEWER)
            assert status == 200
            # Its own project's and the maintenance window; not audio's.
            assert sorted(r["owner"] for r in seen["reservations"]) == ["", "vision"]
            status, seen = await svc.call("GET", "/v1/reservations", ADMIN)
            assert len(seen["reservations"]) == 3
            status, _ = await svc.call("GET", "/v1/reservations")
            assert status == 401
            # Bad input names the field.
            bad: list[tuple[dict[str, Any], str]] = [
                ({"start": now + 10, "end": now + 5, "nodes": ["n1"]}, "end"),
                ({"start": now - 100, "end": now - 10, "nodes": ["n1"]}, "end"),
                ({**window, "nodes": ["nope"]}, "nodes"),
                ({**window, "nodes": ["n1"], "capacity": {"gpus": 1}}, "nodes"),
                ({**window}, "nodes"),
                ({**window, "capacity": {"gpus": 1000}}, "capacity"),
                ({**window, "nodes": ["n1"], "owner": "x", "drain": True}, "owner"),
                ({**window, "nodes": ["../etc"]}, "nodes"),
                ({**window, "nodes": ["n1"], "owner": "a b"}, "owner"),
                ({**window, "start": 2**60, "nodes": ["n1"]}, "start"),
                ({**window, "start": now, "end": now + 10**9, "nodes": ["n1"]}, "end"),
            ]
            for body, field in bad:
                status, err = await svc.call("POST", "/v1/reservations", ADMIN, json=body)
                assert status == 400, (body, err)
                assert err["error"]["field"].startswith(field), (body, err)
            status, _ = await svc.call(
                "POST",
                "/v1/reservations",
                ADMIN,
                data=b"{",
                headers={"Content-Type": "application/json"},
            )
            assert status == 400
            for path in ("/v1/reservations/0", "/v1/reservations/abc", "/v1/reservations/99999"):
                status, _ = await svc.call("DELETE", path, ADMIN)
                assert status == 404
            status, _ = await svc.call("DELETE", f"/v1/reservations/{cap['id']}", ADMIN)
            assert status == 204
            assert cap["id"] not in svc.app[CONTROLLER].cluster.reservations
            status, _ = await svc.call("DELETE", f"/v1/reservations/{cap['id']}", ADMIN)
            assert status == 404
        # The store keeps them over a restart.
        async with running_service(tmp_path) as svc:
            status, seen = await svc.call("GET", "/v1/reservations", ADMIN)
            assert sorted(r["owner"] for r in seen["reservations"]) == ["audio", "vision"]

    asyncio.run(main())


def test_store_keeps_reservations(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        try:
            rec = await store.add_reservation(
                ReservationIn("p", 10, 20, ("a", "b"), False, {"nodes": ["a", "b"]}, "root", 1.5)
            )
            assert rec.id >= 1 and rec.nodes == ("a", "b")
            assert await store.list_reservations() == [rec]
            assert await store.delete_reservation(rec.id)
            assert not await store.delete_reservation(rec.id)
            assert await store.list_reservations() == []
        finally:
            await store.close()

    asyncio.run(main())


def test_fairshare_view_follows_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)

    async def main() -> None:
        async with running_service(tmp_path, profile=str(profile)) as svc:
            await _register(svc, "n1")
            cluster = svc.app[CONTROLLER].cluster
            assert cluster.queue_sort == ("fairshare", {"half_life": 600})
            # Usage of work that ran before (a restart's history), by project.
            from cplat.policy.fairshare import PastUsage

            now = int(time.time())
            cluster.add_history(
                [PastUsage("audio", "olga", (8000.0, 0.0, 0.0), now - 600, now)], now
            )
            status, view = await svc.call("GET", "/v1/fairshare", ADMIN)
            assert status == 200, view
            assert view["policy"] == "fairshare" and view["half_life"] == 600
            rows = {r["project"]: r for r in view["projects"]}
            assert rows["audio"]["usage"] > 0 and rows["audio"]["factor"] < 1
            status, mine = await svc.call("GET", "/v1/fairshare", MEMBER)
            assert status == 200 and all(r["project"] == "vision" for r in mine["projects"])
            status, _ = await svc.call("GET", "/v1/fairshare")
            assert status == 401

    asyncio.run(main())


def test_exclusive_and_elastic_submission_fields(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            body = {"name": "j", "command": ["true"], "tasks": {"count": 4, "min_count": 5}}
            status, err = await svc.call("POST", "/v1/jobs", MEMBER, json=body)
            assert status == 400 and err["error"]["field"] == "tasks.min_count", err
            body = {"name": "j", "command": ["true"], "exclusive": "yes"}
            status, err = await svc.call("POST", "/v1/jobs", MEMBER, json=body)
            assert status == 400 and err["error"]["field"] == "exclusive", err

    asyncio.run(main())


def test_pending_jobs_show_their_queue_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cplat.cli import jobs as job_cli

    def task(cpu: int) -> dict[str, Any]:
        return {"count": 1, "resources": {"cpu_milli": cpu, "memory_mib": 64}}

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            running = await svc.submit(MEMBER, tasks=task(8000))
            await svc.wait(running["id"], MEMBER, {"SCHEDULED"})
            # The node is taken: these queue, the higher priority first, then by submission.
            low1 = await svc.submit(MEMBER, tasks=task(8000))
            high = await svc.submit(OTHER, tasks=task(8000), priority=5)
            low2 = await svc.submit(MEMBER, tasks=task(8000))
            want = {running["id"]: None, low1["id"]: 2, high["id"]: 1, low2["id"]: 3}
            deadline = time.monotonic() + 10
            while True:
                status, page = await svc.call("GET", "/v1/jobs", ADMIN)
                assert status == 200, page
                got = {j["id"]: j["queue_position"] for j in page["jobs"]}
                if got == want or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert got == want
            # Positions count every project's jobs: vision sees that one job is ahead.
            status, job = await svc.call("GET", f"/v1/jobs/{low1['id']}", MEMBER)
            assert status == 200 and job["queue_position"] == 2
            status, job = await svc.call("GET", f"/v1/jobs/{running['id']}", MEMBER)
            assert job["queue_position"] is None
            # The CLI lists the queued jobs in that order, each with its position.
            monkeypatch.setenv("CPLAT_SERVER", svc.url)
            monkeypatch.setenv("CPLAT_TOKEN", ADMIN)
            assert await asyncio.to_thread(job_cli.main, ["job", "list"]) == 0
            rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
            assert [int(r[0]) for r in rows] == [running["id"], high["id"], low1["id"], low2["id"]]
            assert [r[4:6] for r in rows[1:]] == [["PENDING", "#1"], ["PENDING", "#2"],
                                                  ["PENDING", "#3"]]  # fmt: skip

    asyncio.run(main())


def test_preemption_grace_end_to_end_with_a_real_agent(tmp_path: Path) -> None:
    """A victim checkpoints within its grace, is requeued, and its next attempt resumes."""
    from test_live_agent_policies import TRAINER

    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    profile = tmp_path / "p.toml"
    profile.write_text('[queue]\norder = "priority"\npreemption = "priority"\ngrace_period = 20\n')

    async def main() -> None:
        import sys

        async with running_service(tmp_path, profile=str(profile)) as svc:
            await svc.start_agent("node-a", tmp_path / "work", stop_grace=0.1)
            status, node = await svc.call("GET", "/v1/nodes/node-a", ADMIN)
            assert status == 200, node
            whole = {"count": 1, "resources": {"cpu_milli": node["cpu_milli"], "memory_mib": 64}}
            low = await svc.submit(MEMBER, tasks=whole, command=[sys.executable, str(script)])
            await svc.wait(low["id"], MEMBER, {"RUNNING"})
            deadline = time.monotonic() + 10
            while True:  # the task has installed its SIGTERM handler
                _, logs = await svc.call("GET", f"/v1/jobs/{low['id']}/logs", MEMBER)
                if any("training" in c["data"] for c in logs["logs"]):
                    break
                assert time.monotonic() < deadline, logs
                await asyncio.sleep(0.05)
            high = await svc.submit(OTHER, tasks=whole, priority=10)
            job = await svc.wait(low["id"], MEMBER, {"PREEMPTED"})
            assert "grace" in job["reason"]
            # The agent waits for the task (not its own 0.1 s): it checkpoints and exits, the
            # victim is requeued at once, long before its 20 s grace is over.
            started = time.monotonic()
            assert (await svc.wait(high["id"], OTHER))["state"] == "SUCCEEDED"
            assert time.monotonic() - started < 15
            done = await svc.wait(low["id"], MEMBER)
            assert done["state"] == "SUCCEEDED" and done["attempt"] == 2, done
            _, logs = await svc.call("GET", f"/v1/jobs/{low['id']}/logs", MEMBER)
            text = "".join(c["data"] for c in logs["logs"])
            assert "checkpointed" in text and 'resumed {"step": 1234}' in text, text
            _, events = await svc.call("GET", f"/v1/jobs/{low['id']}/events", MEMBER)
            assert [e["state"] for e in events["events"]].count("FAILED") == 0

    asyncio.run(main())
