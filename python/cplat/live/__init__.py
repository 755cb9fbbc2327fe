"""The live service's logic, free of HTTP: the controller that drives the one ``Scheduler``.

- :mod:`~cplat.live.controller`: the job state machine, leases, the ordered store writer.
- :mod:`~cplat.live.policy`: what a task's exit does to its job; run-time deadlines.
- :mod:`~cplat.live.spec`: the typed :class:`JobSpec` of a submission.
- :mod:`~cplat.live.states`: job, task and node states.
- :mod:`~cplat.live.feasibility`: requests no node could ever satisfy.
- :mod:`~cplat.live.clock`: wall time for the service, virtual time for replays.

The service (``cplat_server``) wraps the controller with HTTP, metrics and event streams;
:mod:`cplat.testing.sim_agents` drives it with simulated agents on a virtual clock.
"""

from __future__ import annotations

from cplat.live.clock import Clock, VirtualClock, WallClock
from cplat.live.controller import (
    Controller,
    ControllerExtension,
    JobRt,
    NodeRt,
    NullObserver,
    Observer,
    TaskRt,
)
from cplat.live.feasibility import ClusterShape, Infeasible, NodeShape
from cplat.live.policy import AGENT_STOPS, Deadlines, ExitAction, ExitDecision, after_exit
from cplat.live.spec import DEFAULT_MAX_RUNTIME, JobSpec, OnFailure, TaskResources
from cplat.live.states import FINAL_STATES, JobState, NodeState, TaskState

__all__ = [
    "AGENT_STOPS",
    "DEFAULT_MAX_RUNTIME",
    "FINAL_STATES",
    "Clock",
    "ClusterShape",
    "Controller",
    "ControllerExtension",
    "Deadlines",
    "ExitAction",
    "ExitDecision",
    "Infeasible",
    "JobRt",
    "JobSpec",
    "JobState",
    "NodeRt",
    "NodeShape",
    "NodeState",
    "NullObserver",
    "Observer",
    "OnFailure",
    "TaskResources",
    "TaskRt",
    "TaskState",
    "VirtualClock",
    "WallClock",
    "after_exit",
]
