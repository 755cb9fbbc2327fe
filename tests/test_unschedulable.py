"""Jobs that can never run say so: held with the reason in words, or rejected at submission.

The service runs in-process with nodes registered through the API (no agents, no processes):
what matters is what the controller knows of the nodes' shapes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cplat.live.feasibility import ClusterShape, NodeShape
from cplat.live.spec import TaskResources
from cplat.testing.service import ADMIN, running_service, token

MEMBER = token("ana", "vision", "member")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _node(name: str, cpus: int, memory_gib: int, gpus: int = 0, model: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "cpu_milli": cpus * 1000,
        "memory_mib": memory_gib * 1024,
        "gpus": [{"index": i, "model": model} for i in range(gpus)],
    }


def _job(cpu_milli: int = 1000, memory_mib: int = 512, num_gpu: int = 0, **extra: Any) -> Any:
    res: dict[str, Any] = {"cpu_milli": cpu_milli, "memory_mib": memory_mib, "num_gpu": num_gpu}
    res.update(extra.pop("resources", {}))
    return {
        "name": "big",
        "command": ["true"],
        "tasks": {"count": extra.pop("count", 1), "resources": res},
        **extra,
    }


async def _register(svc: Any, body: dict[str, Any]) -> None:
    status, data = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
    assert status in (200, 201), data


def test_held_with_the_reason_until_a_node_that_fits_joins(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, _node("small-a", 2, 8))
            await _register(svc, _node("small-b", 2, 8))
            status, job = await svc.call("POST", "/v1/jobs", MEMBER, json=_job(64_000))
            assert status == 201, job
            held = "unschedulable: no node has 64 CPUs; the largest has 2 (small-a)"
            assert job["state"] == "PENDING" and job["reason"] == held
            # It stays held (not "queued") across cycles, and says so in its events.
            await asyncio.sleep(0.5)
            status, again = await svc.call("GET", f"/v1/jobs/{job['id']}", MEMBER)
            assert again["state"] == "PENDING" and again["reason"] == held
            status, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", MEMBER)
            assert "held: no node has 64 CPUs" in evs["events"][-1]["message"]
            status, summary = await svc.call("GET", "/v1/cluster", ADMIN)
            assert summary["jobs"]["unschedulable"] == 1 and summary["jobs"]["pending"] == 1
            # A held job does not block the queue behind it (FCFS heads would wait for ever).
            small = await svc.submit(MEMBER, **_job(1000))
            ok = await svc.wait(small["id"], MEMBER, {"SCHEDULED", "RUNNING"})
            assert ok["placement"][0]["node"] in ("small-a", "small-b")
            # A node that fits joins: the held job is queued and placed there.
            await _register(svc, _node("big", 64, 256))
            placed = await svc.wait(job["id"], MEMBER, {"SCHEDULED", "RUNNING"})
            assert placed["placement"] == [{"rank": 0, "node": "big", "gpus": []}]
            status, evs = await svc.call("GET", f"/v1/jobs/{job['id']}/events", MEMBER)
            assert any("a node that can run it registered" in e["message"] for e in evs["events"])

    run(main())


@pytest.mark.parametrize(
    ("job", "field", "words"),
    [
        (_job(64_000), "tasks.resources.cpu_milli", "no node has 64 CPUs; the largest has 2 (n1)"),
        (
            _job(1000, 1000 * 1024),
            "tasks.resources.memory_mib",
            "no node has 1000 GiB of memory; the largest has 8 GiB (n1)",
        ),
        (_job(num_gpu=1), "tasks.resources.num_gpu", "no node has 1 GPU; the largest has 0 (n1)"),
        (
            _job(num_gpu=1, resources={"gpu_models": ["H100"]}),
            "tasks.resources.gpu_models",
            "no node has GPU model H100 (no node has GPUs)",
        ),
        (
            _job(2000, count=3),
            "tasks.count",
            "all nodes together hold 2 task(s) of this size at once; the job asks for 3",
        ),
    ],
)
def test_rejected_on_a_complete_cluster(
    tmp_path: Path, job: dict[str, Any], field: str, words: str
) -> None:
    async def main() -> None:
        async with running_service(tmp_path, unschedulable="reject") as svc:
            await _register(svc, _node("n1", 2, 8))
            await _register(svc, _node("n2", 2, 4))
            status, err = await svc.call("POST", "/v1/jobs", MEMBER, json=job)
            assert status == 400, err
            assert err["error"] == {"code": "invalid", "message": words, "field": field}
            # Nothing was stored: the list is empty.
            status, listed = await svc.call("GET", "/v1/jobs", MEMBER)
            assert listed["jobs"] == []
            # A request that fits is accepted as usual.
            ok = await svc.submit(MEMBER, **_job(2000, count=2))
            assert ok["reason"] == "queued"

    run(main())


def test_reject_holds_while_no_node_is_registered(tmp_path: Path) -> None:
    """An empty cluster says nothing about its nodes to come: even ``reject`` holds then."""

    async def main() -> None:
        async with running_service(tmp_path, unschedulable="reject") as svc:
            job = await svc.submit(MEMBER, **_job(64_000))
            assert job["state"] == "PENDING"
            await _register(svc, _node("n1", 2, 8))
            await asyncio.sleep(0.4)
            status, again = await svc.call("GET", f"/v1/jobs/{job['id']}", MEMBER)
            assert again["reason"].startswith("unschedulable: no node has 64 CPUs")

    run(main())


def test_a_node_that_shrinks_holds_what_no_longer_fits(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, _node("n1", 4, 8))
            await svc.call("POST", "/v1/nodes/n1/cordon", ADMIN)  # nothing starts meanwhile
            job = await svc.submit(MEMBER, **_job(4000))
            assert job["reason"] == "queued"
            await _register(svc, _node("n1", 2, 8))  # the same node, re-registered smaller
            await asyncio.sleep(0.4)
            status, again = await svc.call("GET", f"/v1/jobs/{job['id']}", MEMBER)
            held = "unschedulable: no node has 4 CPUs; the largest has 2 (n1)"
            assert again["reason"] == held

    run(main())


def test_the_setting_is_checked(tmp_path: Path) -> None:
    from cplat.errors import InputError
    from cplat_server.config import load_config

    with pytest.raises(InputError) as info:
        load_config(env={"CPLAT_UNSCHEDULABLE": "drop"})
    assert info.value.field == "unschedulable"
    assert load_config(env={}).unschedulable == "hold"


def test_cluster_shape_counts_every_node_and_shares() -> None:
    shape = ClusterShape(
        [
            ("g1", NodeShape(8000, 65536, 2, "A100-SXM4-80GB")),
            ("g2", NodeShape(8000, 65536, 2, "A100-SXM4-80GB")),
            ("c1", NodeShape(64000, 262144, 0, "")),
        ]
    )
    share = TaskResources(cpu_milli=1000, memory_mib=1024, num_gpu=1, gpu_milli=250)
    assert shape.check(share, 16) is None  # 4 shares per GPU, 4 GPUs
    over = shape.check(share, 17)
    assert over is not None and over.field == "tasks.count"
    family = TaskResources(num_gpu=2, gpu_models=("a100",))
    assert shape.check(family, 2) is None  # a family name selects the precise model
    no_model = shape.check(TaskResources(num_gpu=1, gpu_models=("V100",)), 1)
    assert no_model is not None
    assert no_model.message == "no node has GPU model V100 (the models here: A100-SXM4-80GB)"
    # Each dimension fits some node, but no node has all three at once.
    mixed = shape.check(TaskResources(cpu_milli=16000, memory_mib=1024, num_gpu=1), 1)
    assert mixed is not None and mixed.field == "tasks.resources"
    assert ClusterShape([]).check(TaskResources(cpu_milli=10**9), 1) is None


def test_cli_wait_timeout_prints_why_it_waits(tmp_path: Path, capsys: Any) -> None:
    """``cplat job submit --wait --wait-timeout`` names the reason of a held job."""
    import threading

    from cplat.cli import jobs as job_cli

    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []
    url: list[str] = []

    async def serve() -> None:
        async with running_service(tmp_path) as svc:
            await _register(svc, _node("tiny", 2, 8))
            url.append(svc.url)
            stop.append(asyncio.get_running_loop())
            ready.set()
            while not getattr(serve, "done", False):
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        argv = ["job", "submit", "--server", url[0], "--token", MEMBER, "--cpu", "64"]
        argv += ["--wait", "--wait-timeout", "0.3", "--", "true"]
        assert job_cli.main(argv) == 1
    finally:
        serve.done = True  # type: ignore[attr-defined]
        thread.join(20)
    out, err = capsys.readouterr()
    why = "unschedulable: no node has 64 CPUs; the largest has 2 (tiny)"
    assert f"it waits: {why}" in out
    assert err == f"error: job 1 is still PENDING after 0.3 s (reason: {why})\n"
