"""One scheduler, two clocks: ``cplat sim`` and the live service place a trace alike.

The same Lublin-Feitelson trace (generated with the same seed) is replayed twice:

- by ``cplat sim`` itself (its command line, with ``--profile`` and ``--log``), which writes
  each start, in order, with the nodes of every task;
- through the live service's controller (:mod:`cplat.live.controller`) with its real SQLite
  store and simulated agents on a virtual clock (:mod:`cplat.testing.sim_agents`), its
  scheduler built from the same profile file exactly as ``cplat serve --profile`` builds it.

Both must start the same jobs at the same second, in the same order, on the same nodes, for
every queue order and queue sort (fcfs, priority, fairshare, drf) and every backfill mode
(none, easy, conservative). The live jobs' records in the store must say the same. (The
generated trace gives every job priority 0, so ``priority`` orders it as ``fcfs`` does; the
fair-share and DRF runs are checked to differ from FCFS.)
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest

from cplat.cli.main import main as cplat_main
from cplat.live.clock import VirtualClock
from cplat.live.controller import Controller
from cplat.scheduler import nodes_from_table
from cplat.store import open_store
from cplat.testing.sim_agents import ReplayResult, replay
from cplat.workload import lublin_feitelson, synthetic_cluster_nodes
from cplat_server.app import _scheduler_parts
from cplat_server.config import ServiceConfig

JOBS, NODES, SEED = 300, 16, 0
#: Longer than any replayed trace: simulated agents send no heartbeats.
FOREVER = 1e12

SORTS = ("fcfs", "priority", "fairshare", "drf")
BACKFILLS = ("none", "easy", "conservative")


def _profile(path: Path, sort: str, backfill: str) -> Path:
    order = "fcfs" if sort == "fcfs" else "priority"
    text = f'[queue]\norder = "{order}"\nbackfill = "{backfill}"\n'
    if sort in ("fairshare", "drf"):
        text += f'\n[queue_sort]\nname = "{sort}"\n'
    path.write_text(text)
    return path


def _sim_starts(
    profile: Path, out: Path, names: tuple[str, ...]
) -> list[tuple[int, int, list[str]]]:
    """Run ``cplat sim`` and read its decision log: (time, job, node of each task)."""
    argv = [
        "sim",
        "--synthetic-jobs",
        str(JOBS),
        "--synthetic-nodes",
        str(NODES),
        "--seed",
        str(SEED),
        "--profile",
        str(profile),
        "--log",
        "--out",
        str(out),
    ]
    assert cplat_main(argv) == 0
    starts = []
    for line in (out / "decisions.log").read_text().splitlines():
        at, what, *rest = line.split("\t")
        if what == "start":
            where = [names[int(n)] for n in rest[1].split(",")]
            starts.append((int(at), int(rest[0]), where))
    return starts


async def _live_starts(profile: Path, folder: Path) -> tuple[ReplayResult, dict[int, Any]]:
    """Replay the trace through the live controller; return its starts and stored jobs."""
    jobs = lublin_feitelson(JOBS, nodes=NODES, seed=SEED)
    nodes = nodes_from_table(synthetic_cluster_nodes(NODES))
    cluster = _scheduler_parts(ServiceConfig(profile=str(profile), data_dir=folder))
    store = await open_store(f"sqlite:///{folder / 'cplat.db'}")
    clock = VirtualClock(0)
    ctrl = Controller(
        store,
        cluster,
        lambda rec, runtime: "not-a-token",
        node_timeout=FOREVER,
        lease=FOREVER,
        clock=clock,
    )
    try:
        await ctrl.start(loop=False)
        result = await replay(ctrl, clock, nodes, jobs)
        await ctrl.stop()
        stored = {rec.id: rec for rec in await store.list_jobs(limit=JOBS + 1)}
    finally:
        await store.close()
    return result, stored


def _first_difference(
    sim: list[tuple[int, int, list[str]]], live: list[tuple[int, int, list[str]]]
) -> str:
    for i, (a, b) in enumerate(zip(sim, live, strict=False)):
        if a != b:
            return f"start #{i}: sim {a}, live {b} (of {len(sim)} sim / {len(live)} live starts)"
    return f"sim started {len(sim)} jobs, live {len(live)}"


@functools.cache
def _fcfs_starts(backfill: str) -> list[tuple[int, int, list[str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        profile = _profile(folder / "fcfs.toml", "fcfs", backfill)
        names = nodes_from_table(synthetic_cluster_nodes(NODES)).name
        return _sim_starts(profile, folder / "sim", names)


@pytest.mark.parametrize("backfill", BACKFILLS)
@pytest.mark.parametrize("sort", SORTS)
def test_sim_and_live_place_a_trace_alike(tmp_path: Path, sort: str, backfill: str) -> None:
    profile = _profile(tmp_path / "profile.toml", sort, backfill)
    names = nodes_from_table(synthetic_cluster_nodes(NODES)).name
    sim = _sim_starts(profile, tmp_path / "sim", names)
    assert len(sim) == JOBS  # every job of this trace fits the cluster and starts once
    if sort in ("fairshare", "drf"):
        # The trace is busy enough that the queue sort changes what starts when: a live
        # side that ignored it would fail here, not pass by luck.
        assert sim != _fcfs_starts(backfill)
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    result, stored = asyncio.run(_live_starts(profile, live_dir))
    live = result.starts
    assert live == sim, _first_difference(sim, live)
    # The store tells the same story: every job ran to its end, from the second the
    # simulator started it, on the nodes it chose.
    for at, trace_id, where in sim:
        rec = stored[result.store_ids[trace_id]]
        assert rec.state == "SUCCEEDED", (trace_id, rec.state, rec.reason)
        assert rec.started_at == at
        assert [p["node"] for p in rec.placement] == where
