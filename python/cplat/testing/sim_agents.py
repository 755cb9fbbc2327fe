"""Simulated agents: drive the live controller through a job trace on a virtual clock.

A :class:`SimulatedAgent` is a node that registers with the controller, takes the
assignments it is offered, reports its tasks running at once and reports them exited when
told; it starts no process. :func:`replay` feeds a canonical job table (the one ``cplat sim``
replays) through the controller and its store, submitting each job at its submit time and
ending it ``duration`` seconds after it was placed, and steps the controller exactly when the
simulator's event loop runs a cycle: at every submission and every finish, finishes first,
then submissions, then one cycle. Time jumps from event to event, so a trace of days replays
in seconds, and the controller's integer-second rounding sees the same times as the
simulator's.

What this leaves out: heartbeats and leases (run the controller with a ``lease`` and
``node_timeout`` longer than the trace), task failures and preemption (every task exits 0 at
its job's end; a preempted job's old end is ignored).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cplat.live.clock import VirtualClock
from cplat.live.controller import Controller, ControllerExtension
from cplat.live.spec import JobSpec, TaskResources
from cplat.model import NodeTable
from cplat.store.base import NewJob

__all__ = [
    "ReplayResult",
    "SimulatedAgent",
    "StartRecorder",
    "node_bodies",
    "replay",
    "trace_specs",
]


def node_bodies(nodes: NodeTable) -> list[dict[str, Any]]:
    """Return the registration body of each node of ``nodes`` (as an agent would send it)."""
    out = []
    for i, name in enumerate(nodes.name):
        n_gpu = int(nodes.num_gpu[i])
        model = nodes.models.names[int(nodes.gpu_model[i])] if n_gpu else ""
        out.append(
            {
                "name": name,
                "cpu_milli": int(nodes.cpu_milli[i]),
                "memory_mib": int(nodes.memory_mib[i]),
                "gpus": [{"index": g, "model": model} for g in range(n_gpu)],
                "rack": int(nodes.rack[i]),
                "spine": int(nodes.spine[i]),
            }
        )
    return out


@dataclass(frozen=True)
class TraceJob:
    """One row of a job trace, as the live service receives it."""

    trace_id: int
    submit: int
    duration: int
    project: str
    user: str
    spec: JobSpec


def trace_specs(jobs: pa.Table) -> list[TraceJob]:
    """Turn a canonical job table into submissions, in the simulator's submission order.

    The job's ``group`` becomes its project and ``user`` its user; its requested time (its
    duration when unknown) its ``max_runtime``.
    """
    cols = {name: jobs.column(name).to_pylist() for name in jobs.column_names}
    out = []
    for i in range(jobs.num_rows):
        duration = int(cols["duration"][i])
        requested = cols["requested_time"][i]
        num_gpu = int(cols["num_gpu"][i])
        models = tuple(
            sorted(m.strip() for m in str(cols["gpu_models"][i]).split("|") if m.strip())
        )
        out.append(
            TraceJob(
                trace_id=int(cols["job_id"][i]),
                submit=int(cols["submit_time"][i]),
                duration=duration,
                project=str(cols["group"][i]),
                user=str(cols["user"][i]),
                spec=JobSpec(
                    command=("true",),
                    count=int(cols["num_tasks"][i]),
                    resources=TaskResources(
                        cpu_milli=int(cols["cpu_milli"][i]),
                        memory_mib=int(cols["memory_mib"][i]),
                        num_gpu=num_gpu,
                        gpu_milli=int(cols["gpu_milli"][i]) if num_gpu else 1000,
                        gpu_models=models,
                    ),
                    priority=int(cols["priority"][i]),
                    max_runtime=max(int(duration if requested is None else requested), 1),
                ),
            )
        )
    # The simulator submits in (submit time, row) order; the store numbers jobs in the order
    # they are created, so creating them in that order keeps ids and rows in step.
    order = sorted(range(len(out)), key=lambda i: (out[i].submit, i))
    return [out[i] for i in order]


class SimulatedAgent:
    """A node that registers, accepts assignments and reports task ends; runs nothing.

    Parameters
    ----------
    ctrl
        The controller.
    body
        Its registration body (see :func:`node_bodies`).
    """

    def __init__(self, ctrl: Controller, body: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self.body = body
        self.name = str(body["name"])
        #: Tasks it runs: (job, attempt, rank).
        self.running: set[tuple[int, int, int]] = set()

    async def register(self) -> None:
        """Register (or register again) with the controller."""
        await self.ctrl.register_node(dict(self.body))

    async def take(self) -> list[dict[str, Any]]:
        """Take the assignments waiting for this node, report them running, return them.

        Tasks the controller asks to cancel are reported exited.
        """
        work = await self.ctrl.assignments(self.name, 0)
        for ref in work["cancel"]:
            for key in sorted(self.running):
                if key[:2] == (ref["job_id"], ref["attempt"]):
                    await self.exit(*key, reason="cancelled")
        for a in work["assignments"]:
            key = (int(a["job_id"]), int(a["attempt"]), int(a["rank"]))
            self.running.add(key)
            await self.ctrl.task_report(
                self.name, {"job_id": key[0], "attempt": key[1], "rank": key[2], "state": "running"}
            )
        return list(work["assignments"])

    async def exit(
        self, job_id: int, attempt: int, rank: int, code: int = 0, reason: str = ""
    ) -> None:
        """Report a task exited with ``code``."""
        self.running.discard((job_id, attempt, rank))
        rep: dict[str, Any] = {
            "job_id": job_id,
            "attempt": attempt,
            "rank": rank,
            "state": "exited",
            "exit_code": code,
        }
        if reason:
            rep["reason"] = reason
        await self.ctrl.task_report(self.name, rep)


class StartRecorder(ControllerExtension):
    """Records each placement as the controller makes it: (time, job, node of each rank)."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, int, list[str]]] = []

    def after_cycle(self, ctrl: Controller, now: float, started: Sequence[int]) -> None:
        """Note the jobs this cycle placed, in the scheduler's order."""
        for job_id in started:
            rt = ctrl.jobs[job_id]
            self.starts.append((now, job_id, [rt.tasks[r].node for r in sorted(rt.tasks)]))


@dataclass
class ReplayResult:
    """What the live controller did with a trace, by trace job id."""

    #: (time, trace job id, node of each task rank), in the order the jobs were placed.
    starts: list[tuple[int, int, list[str]]] = field(default_factory=list)
    #: Store job id of each trace job id.
    store_ids: dict[int, int] = field(default_factory=dict)
    #: Scheduling cycles run.
    cycles: int = 0


async def replay(
    ctrl: Controller,
    clock: VirtualClock,
    nodes: NodeTable,
    jobs: pa.Table,
) -> ReplayResult:
    """Replay ``jobs`` through ``ctrl`` with one simulated agent per node of ``nodes``.

    The controller must have been started without its own loop (``start(loop=False)``) on
    ``clock``, with leases longer than the trace. Returns the placements in order.
    """
    recorder = StartRecorder()
    ctrl.add_extension(recorder)
    agents = {body["name"]: SimulatedAgent(ctrl, body) for body in node_bodies(nodes)}
    for agent in agents.values():
        await agent.register()
    trace = trace_specs(jobs)
    by_store: dict[int, TraceJob] = {}
    result = ReplayResult()
    # Ends of running attempts: (time, store id, attempt).
    ends: list[tuple[int, int, int]] = []
    i = 0
    while i < len(trace) or ends:
        t = min(
            trace[i].submit if i < len(trace) else ends[0][0],
            ends[0][0] if ends else trace[i].submit,
        )
        clock.set(t)
        while ends and ends[0][0] == t:
            _, job_id, attempt = heapq.heappop(ends)
            rt = ctrl.jobs.get(job_id)
            if rt is None or rt.attempt != attempt:
                continue  # requeued meanwhile: this attempt's end is void
            for rank, task in sorted(rt.tasks.items()):
                await agents[task.node].exit(job_id, attempt, rank)
        batch = []
        while i < len(trace) and trace[i].submit == t:
            batch.append(trace[i])
            i += 1
        if batch:
            records = await ctrl.store.create_jobs(
                [
                    NewJob(
                        job.project, job.user, f"trace-{job.trace_id}", job.spec.to_dict(), float(t)
                    )
                    for job in batch
                ]
            )
            for job, rec in zip(batch, records, strict=True):
                by_store[rec.id] = job
                result.store_ids[job.trace_id] = rec.id
            ctrl.accept(records)
        seen = len(recorder.starts)
        await ctrl.step()
        result.cycles += 1
        for name, agent in agents.items():
            node = ctrl.nodes[name]
            if node.assign or node.cancel:
                await agent.take()
        for _, job_id, _ in recorder.starts[seen:]:
            rt = ctrl.jobs.get(job_id)
            if rt is not None:
                heapq.heappush(ends, (t + by_store[job_id].duration, job_id, rt.attempt))
    result.starts = [(int(at), by_store[j].trace_id, where) for at, j, where in recorder.starts]
    return result
