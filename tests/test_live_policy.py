"""The live controller's pieces that need no service: spec, exit policy, deadlines, clock."""

from __future__ import annotations

import pytest

from cplat.errors import InputError
from cplat.live import (
    Deadlines,
    ExitAction,
    JobSpec,
    JobState,
    VirtualClock,
    after_exit,
)


def test_spec_fills_defaults_and_keeps_the_stored_form() -> None:
    spec = JobSpec.from_body(
        {
            "command": "echo hi",
            "tasks": {"resources": {"num_gpu": 1, "gpu_models": ["b", "a", "b"]}},
        }
    )
    stored = spec.to_dict()
    assert stored == {
        "tasks": {
            "count": 1,
            "resources": {
                "cpu_milli": 1000,
                "memory_mib": 1024,
                "num_gpu": 1,
                "gpu_milli": 1000,
                "gpu_models": ["a", "b"],
            },
        },
        "priority": 0,
        "gang": True,
        "max_runtime": 86400,
        "checkpoint": None,
        "command": "echo hi",
        "env": {},
        "workdir": None,
        "on_failure": "fail",
        "max_restarts": 0,
    }
    assert JobSpec.from_stored(stored) == spec
    elastic = JobSpec.from_body(
        {"command": ["x"], "tasks": {"count": 4, "min_count": 2}, "exclusive": True}
    )
    assert elastic.to_dict()["tasks"]["min_count"] == 2 and elastic.to_dict()["exclusive"] is True
    assert JobSpec.from_stored(elastic.to_dict()) == elastic
    assert elastic.fewest_tasks == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": {"resources": {"gpu_milli": 500, "num_gpu": 2}}}, "tasks.resources.gpu_milli"),
        ({"tasks": {"resources": {"gpu_models": ["A100"]}}}, "tasks.resources.gpu_models"),
        ({"tasks": {"count": 2}, "gang": False}, "gang"),
        ({"tasks": {"count": 2, "min_count": 3}}, "tasks.min_count"),
    ],
)
def test_spec_refuses_what_the_schema_cannot(body: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        JobSpec.from_body({"command": "true", **body})
    assert info.value.field == field


def test_exit_policy() -> None:
    once = JobSpec.from_body({"command": "x", "on_failure": "restart", "max_restarts": 1})
    assert after_exit(once, 0, 0, "", 0).action is ExitAction.DONE
    first = after_exit(once, 2, 3, "", 0)
    assert (first.action, first.restart, first.why) == (
        ExitAction.REQUEUE,
        True,
        "task 2 failed (exit code 3); restart 1/1",
    )
    assert after_exit(once, 2, 3, "", 1).action is ExitAction.FAIL  # no restart left
    # Stopped with its agent: not the job's fault, whatever the exit code, and no restart used.
    stopped = after_exit(JobSpec(command="x"), 0, -9, "lease expired", 0)
    assert (stopped.action, stopped.restart) == (ExitAction.REQUEUE, False)
    assert after_exit(JobSpec(command="x"), 1, None, "could not start", 0).why == (
        "task 1 failed (could not start)"
    )


def test_deadlines_allow_the_last_second() -> None:
    d = Deadlines()
    d.track(1, 1, 100.0, 10)
    d.track(2, 1, 100.0, 5)
    assert d.due(105.0) == []
    assert d.due(105.5) == [(2, 1)]
    assert d.due(110.0) == []
    assert d.due(111.0) == [(1, 1)] and len(d) == 0


def test_virtual_clock_moves_forward_only() -> None:
    clock = VirtualClock(5)
    clock.advance(2.5)
    assert clock.now() == 7.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.set(7)
    assert str(JobState.RUNNING) == "RUNNING" and JobState.SUCCEEDED.final
