"""The live service end to end: real store, real agents, real processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from cplat.runtime.discovery import device_slots
from cplat.testing.service import ADMIN, PG_DSN, running_service, token

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            not PG_DSN, reason="set CPLAT_TEST_PG_DSN to run against PostgreSQL; .ci/run does"
        ),
    ),
]
MEMBER = token("ana", "vision", "member")
PY = sys.executable


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_run_as_processes_and_report(tmp_path: Path, backend: str) -> None:
    async def main() -> None:
        async with running_service(tmp_path, backend) as svc:
            await svc.start_agent("node-a", tmp_path / "agent-a")
            ok = await svc.submit(
                MEMBER,
                name="hello",
                command=[
                    PY,
                    "-c",
                    "import os; print('hello', os.environ['RANK'], "
                    "os.environ['WORLD_SIZE'], os.environ['GREETING'])",
                ],
                env={"GREETING": "hi"},
                tasks={"count": 1, "resources": {"cpu_milli": 100, "memory_mib": 64}},
            )
            bad = await svc.submit(
                MEMBER,
                name="fails",
                command="echo oops >&2; exit 3",
                tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
            )
            done = await svc.wait(ok["id"], MEMBER)
            failed = await svc.wait(bad["id"], MEMBER)
            assert done["state"] == "SUCCEEDED" and done["exit_code"] == 0
            assert failed["state"] == "FAILED" and failed["exit_code"] == 3
            assert done["placement"] == [{"rank": 0, "node": "node-a", "gpus": []}]
            status, logs = await svc.call("GET", f"/v1/jobs/{ok['id']}/logs", MEMBER)
            assert status == 200
            assert "hello 0 1 hi" in "".join(c["data"] for c in logs["logs"])
            status, logs = await svc.call("GET", f"/v1/jobs/{bad['id']}/logs", MEMBER)
            assert any(c["stream"] == "stderr" and "oops" in c["data"] for c in logs["logs"])
            status, evs = await svc.call("GET", f"/v1/jobs/{ok['id']}/events", MEMBER)
            states = [e["state"] for e in evs["events"]]
            assert states == ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]

    run(main())


def test_gang_gets_distributed_environment(tmp_path: Path) -> None:
    script = (
        "import os;"
        "keys=['RANK','WORLD_SIZE','LOCAL_RANK','LOCAL_WORLD_SIZE','MASTER_ADDR','MASTER_PORT'];"
        "print(' '.join(k+'='+os.environ[k] for k in keys));"
        "print('HOSTS', open(os.environ['CPLAT_HOSTFILE']).read().replace(chr(10),';'))"
    )

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await svc.start_agent("node-a", tmp_path / "a")
            await svc.start_agent("node-b", tmp_path / "b")
            status, nodes = await svc.call("GET", "/v1/nodes", MEMBER)
            cpu = nodes["nodes"][0]["cpu_milli"]
            # Each task takes more than half a node, so the gang spans both nodes.
            job = await svc.submit(
                MEMBER,
                name="gang",
                command=[PY, "-c", script],
                tasks={"count": 2, "resources": {"cpu_milli": cpu // 2 + 1, "memory_mib": 64}},
            )
            done = await svc.wait(job["id"], MEMBER)
            _, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", MEMBER)
            assert done["state"] == "SUCCEEDED" and done["attempt"] == 1, (done, evs)
            assert sorted(p["node"] for p in done["placement"]) == ["node-a", "node-b"]
            _, logs = await svc.call("GET", f"/v1/jobs/{job['id']}/logs", MEMBER)
            lines = [ln for c in logs["logs"] for ln in c["data"].splitlines() if "RANK=" in ln]
            assert len(lines) == 2, (logs, evs)
            env = [dict(kv.split("=", 1) for kv in ln.split()) for ln in lines]
            assert sorted(e["RANK"] for e in env) == ["0", "1"]
            assert {e["WORLD_SIZE"] for e in env} == {"2"}
            assert {e["LOCAL_WORLD_SIZE"] for e in env} == {"1"}
            assert len({e["MASTER_ADDR"] + e["MASTER_PORT"] for e in env}) == 1

    run(main())


def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await svc.start_agent("node-a", tmp_path / "a")
            job = await svc.submit(
                MEMBER,
                name="sleeper",
                command=[PY, "-c", "import time; time.sleep(60)"],
                tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
            )
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            status, out = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 200 and out["state"] == "CANCELLED"
            status, again = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 409 and again["error"]["field"] == "state"
            # The node is free again: the next job runs.
            nxt = await svc.submit(
                MEMBER,
                name="next",
                command=["true"],
                tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
            )
            assert (await svc.wait(nxt["id"], MEMBER))["state"] == "SUCCEEDED"
            _, node = await svc.call("GET", "/v1/nodes/node-a", ADMIN)
            assert node["jobs"] == []

    run(main())


async def _register(svc: Any, name: str, gpus: int = 0, model: str = "A100") -> None:
    body = {
        "name": name,
        "cpu_milli": 8000,
        "memory_mib": 16384,
        "address": "10.0.0.1",
        "gpus": [
            {"index": i, "model": model, "memory_mib": 81920, "healthy": True} for i in range(gpus)
        ],
    }
    status, out = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
    assert status in (200, 201), out


def test_silent_node_goes_down_and_its_job_is_requeued(tmp_path: Path) -> None:
    async def main() -> None:
        # The job is requeued once the node's lease and grace have run out too.
        async with running_service(tmp_path, node_timeout=0.6, lease=0.4, grace=0.2) as svc:
            await _register(svc, "gpu-1", gpus=2)
            job = await svc.submit(
                MEMBER,
                name="train",
                command=["true"],
                tasks={"resources": {"num_gpu": 2, "cpu_milli": 1000}},
            )
            status, work = await svc.call("GET", "/v1/nodes/gpu-1/assignments?wait=5", ADMIN)
            assert [a["job_id"] for a in work["assignments"]] == [job["id"], job["id"]][:1]
            assert work["assignments"][0]["gpus"] == [0, 1]
            # No heartbeat follows: the node is marked down and the job goes back to the queue.
            requeued = await svc.wait(job["id"], MEMBER, {"PENDING"}, timeout=10)
            assert requeued["attempt"] == 1 and requeued["placement"] == []
            _, node = await svc.call("GET", "/v1/nodes/gpu-1", ADMIN)
            assert node["state"] == "down"
            _, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", MEMBER)
            assert any(e["state"] == "PREEMPTED" and "down" in e["message"] for e in evs["events"])
            # A heartbeat brings the node back and the job is placed again.
            await svc.call("POST", "/v1/nodes/gpu-1/heartbeat", ADMIN, json={"tasks": []})
            again = await svc.wait(job["id"], MEMBER, {"SCHEDULED"})
            assert again["attempt"] == 2

    run(main())


def test_unhealthy_gpu_gets_no_new_work(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "gpu-1", gpus=2)
            hb = {"tasks": [], "gpus": [{"index": 0, "healthy": False, "reason": "ECC errors"}]}
            status, _ = await svc.call("POST", "/v1/nodes/gpu-1/heartbeat", ADMIN, json=hb)
            assert status == 200
            one = await svc.submit(
                MEMBER,
                name="one",
                command=["true"],
                tasks={"resources": {"num_gpu": 1, "cpu_milli": 100}},
            )
            placed = await svc.wait(one["id"], MEMBER, {"SCHEDULED"})
            assert placed["placement"][0]["gpus"] == [1]
            two = await svc.submit(
                MEMBER,
                name="two",
                command=["true"],
                tasks={"resources": {"num_gpu": 2, "cpu_milli": 100}},
            )
            await asyncio.sleep(0.6)
            _, waiting = await svc.call("GET", f"/v1/jobs/{two['id']}", MEMBER)
            assert waiting["state"] == "PENDING"
            _, cluster = await svc.call("GET", "/v1/cluster", MEMBER)
            assert cluster["gpus"] == {"total": 2, "unhealthy": 1, "mig_mode": 0}

    run(main())


def test_requeued_job_resumes_from_its_latest_checkpoint(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            job = await svc.submit(
                MEMBER, name="ck", command=["true"], tasks={"resources": {"cpu_milli": 100}}
            )
            _, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
            a = work["assignments"][0]
            assert a["resume_from"] is None
            report = {
                "job_id": job["id"],
                "attempt": a["attempt"],
                "rank": 0,
                "state": "running",
                "pid": 1,
            }
            await svc.call("POST", "/v1/nodes/n1/tasks", ADMIN, json=report)
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            # The job's own token (handed to its processes) records checkpoints.
            jt = a["token"]
            for step, uri, complete in ((100, "s3://b/100", True), (200, "s3://b/200", False)):
                st, ck = await svc.call(
                    "POST",
                    f"/v1/jobs/{job['id']}/checkpoints",
                    jt,
                    json={"step": step, "uri": uri, "complete": complete},
                )
                assert st == 201, ck
            st, _ = await svc.call(
                "POST",
                f"/v1/jobs/{job['id']}/checkpoints",
                jt,
                json={"step": 300, "uri": "x", "kind": "incremental"},
            )
            assert st == 400
            st, _ = await svc.call("POST", "/v1/nodes/n1/drain", ADMIN)
            assert st == 200
            await svc.wait(job["id"], MEMBER, {"PENDING"})
            await svc.call("POST", "/v1/nodes/n1/uncordon", ADMIN)
            await svc.wait(job["id"], MEMBER, {"SCHEDULED"})
            # Attempt 2 is handed out only once attempt 1 is known to have stopped.
            stopped = {**report, "state": "exited", "exit_code": -15, "reason": "cancelled"}
            await svc.call("POST", "/v1/nodes/n1/tasks", ADMIN, json=stopped)
            fresh: list[dict[str, Any]] = []
            for _ in range(3):  # the first answer may carry only the cancel of attempt 1
                _, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
                fresh = [x for x in work["assignments"] if x["attempt"] == 2]
                if fresh:
                    break
            assert fresh and fresh[0]["resume_from"] == "s3://b/100"

    run(main())


def test_event_stream_reports_state_changes(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            headers = {"Authorization": f"Bearer {MEMBER}"}
            async with svc.session.get(svc.url + "/v1/jobs/stream", headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                job = await svc.submit(
                    MEMBER, name="s", command=["true"], tasks={"resources": {"cpu_milli": 100}}
                )
                seen: list[str] = []

                async def read() -> None:
                    async for line in resp.content:
                        text = line.decode()
                        if text.startswith("data:") and f'"id": {job["id"]}' in text:
                            seen.append(text)
                            if "SCHEDULED" in text:
                                return

                await asyncio.wait_for(read(), timeout=10)
                assert any("SCHEDULED" in s for s in seen)
            other = token("bob", "audio", "member")
            async with svc.session.get(
                svc.url + "/v1/jobs/stream?project=vision",
                headers={"Authorization": f"Bearer {other}"},
            ) as resp:
                assert resp.status == 404

    run(main())


def test_metrics_health_and_spec(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await svc.submit(MEMBER, name="m", command=["true"])
            status, text = await svc.call("GET", "/metrics")
            assert status == 200 and "cplat_jobs_submitted_total 1.0" in text
            assert 'cplat_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in text
            status, health = await svc.call("GET", "/healthz")
            assert status == 200 and health["status"] == "ok"
            status, spec = await svc.call("GET", "/openapi.json")
            assert status == 200 and spec["openapi"].startswith("3.1")
            from cplat_server.routes import ROUTES

            for r in ROUTES:
                assert r.method.lower() in spec["paths"][r.path]
            status, page = await svc.call("GET", "/docs")
            assert status == 200 and "POST /v1/jobs" in page

    run(main())


def test_mig_mode_gpus_without_instances_are_kept_out_of_placement(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            body = {
                "name": "mig-1",
                "cpu_milli": 8000,
                "memory_mib": 16384,
                "gpus": [
                    {
                        "index": 0,
                        "model": "A100-SXM4-80GB",
                        "mig_mode": True,
                        "mig_instances": [{"gi_id": 1, "profile": "3g.40gb"}],
                    },
                    {"index": 1, "model": "A100-SXM4-80GB", "mig_mode": False},
                ],
            }
            status, _ = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
            assert status == 201
            # A model family name selects the precise NVML name.
            job = await svc.submit(
                MEMBER,
                name="fam",
                command=["true"],
                tasks={"resources": {"num_gpu": 1, "gpu_models": ["a100"]}},
            )
            placed = await svc.wait(job["id"], MEMBER, {"SCHEDULED"})
            # Placements name device slots: the MIG-mode GPU has no instance with a UUID, so
            # it has no slot, and slot 0 is GPU 1 (the agent maps it back the same way).
            assert placed["placement"][0]["gpus"] == [0]
            assert [s.gpu for s in device_slots(body["gpus"])] == [1]
            _, cluster = await svc.call("GET", "/v1/cluster", MEMBER)
            assert cluster["gpus"]["mig_mode"] == 1
            assert cluster["capacity"]["gpu_milli"] == 1000

    run(main())


def test_tasks_stopped_with_their_agent_are_requeued_not_failed(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            job = await svc.submit(
                MEMBER, name="j", command=["true"], tasks={"resources": {"cpu_milli": 100}}
            )
            _, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
            a = work["assignments"][0]
            base = {"job_id": job["id"], "attempt": a["attempt"], "rank": 0}
            await svc.call("POST", "/v1/nodes/n1/tasks", ADMIN, json={**base, "state": "running"})
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            await svc.call(
                "POST",
                "/v1/nodes/n1/tasks",
                ADMIN,
                json={**base, "state": "exited", "exit_code": -15, "reason": "agent stopped"},
            )
            again = await svc.wait(job["id"], MEMBER, {"SCHEDULED"})
            assert again["attempt"] == 2 and again["exit_code"] is None
            # A real failure of the next attempt fails the job.
            base["attempt"] = 2
            await svc.call(
                "POST",
                "/v1/nodes/n1/tasks",
                ADMIN,
                json={**base, "state": "exited", "exit_code": 1},
            )
            failed = await svc.wait(job["id"], MEMBER)
            assert failed["state"] == "FAILED" and failed["exit_code"] == 1

    run(main())


def test_jobs_over_their_time_limit_are_stopped(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            job = await svc.submit(
                MEMBER,
                name="long",
                command=["sleep", "100"],
                max_runtime=1,
                tasks={"resources": {"cpu_milli": 100}},
            )
            _, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
            a = work["assignments"][0]
            await svc.call(
                "POST",
                "/v1/nodes/n1/tasks",
                ADMIN,
                json={"job_id": job["id"], "attempt": a["attempt"], "rank": 0, "state": "running"},
            )
            done = await svc.wait(job["id"], MEMBER, timeout=10)
            assert done["state"] == "FAILED" and "max runtime" in done["reason"]
            # The agent is told to stop the task.
            _, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=0", ADMIN)
            assert work["cancel"] == [{"job_id": job["id"], "attempt": a["attempt"]}]

    run(main())


def test_job_state_writes_survive_a_store_outage(tmp_path: Path) -> None:
    from cplat_server.keys import STORE

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, "n1")
            store = svc.app[STORE]
            real = store.update_jobs
            failures = {"left": 3}

            async def flaky(changes: Any) -> None:
                if failures["left"]:
                    failures["left"] -= 1
                    raise ConnectionError("database restarting")
                await real(changes)

            store.update_jobs = flaky  # type: ignore[method-assign]
            job = await svc.submit(
                MEMBER, name="j", command=["true"], tasks={"resources": {"cpu_milli": 100}}
            )
            placed = await svc.wait(job["id"], MEMBER, {"SCHEDULED"}, timeout=10)
            assert failures["left"] == 0 and placed["placement"][0]["node"] == "n1"
            _, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", MEMBER)
            assert [e["state"] for e in evs["events"]] == ["PENDING", "SCHEDULED"]

    run(main())
