from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cplat.metrics import (
    bounded_slowdown,
    group_breakdown,
    jain_index,
    makespan,
    mean_utilization,
    queue_length_series,
    summary,
    turnaround,
    utilization_series,
    wait_times,
)

nan = math.nan


def same(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


# ---------------------------------------------------------------- per-job times


def test_wait_and_turnaround() -> None:
    same(wait_times([0, 5, 10], [3, 5, -1]), [3, 0, nan])
    same(turnaround([0, 5, 1], [10, -1, 1]), [10, nan, 0])
    assert wait_times([], []).size == 0
    with pytest.raises(ValueError, match="same length"):
        wait_times([0, 1], [1])
    with pytest.raises(ValueError, match="before it is submitted"):
        wait_times([5], [4])
    with pytest.raises(ValueError, match="whole seconds"):
        wait_times([0.5], [1])
    same(wait_times(np.array([0.0, 2.0]), [1, 2]), [1, 0])  # integral floats are fine


def test_bounded_slowdown_threshold() -> None:
    submit = [0, 0, 0, 0, 0, 0]
    start = [0, 90, 5, 20, -1, 3]
    end = [100, 100, 6, 22, -1, -1]
    # 100/100; 100/max(10, 10); 6/max(1, 10) -> 1; 22/max(2, 10); not started; not finished
    same(bounded_slowdown(submit, start, end), [1, 10, 1, 2.2, nan, nan])
    same(bounded_slowdown([0], [20], [22], tau=1), [11])
    same(bounded_slowdown([0], [20], [22], tau=100), [1])
    with pytest.raises(ValueError, match="tau"):
        bounded_slowdown([0], [0], [1], tau=0)
    with pytest.raises(ValueError, match="ends before it starts"):
        bounded_slowdown([0], [5], [4])


def test_makespan() -> None:
    assert makespan([5, 2, 8], [20, 30, -1]) == 28
    assert makespan([5, 2], [-1, -1]) == 0
    assert makespan([], []) == 0


# ---------------------------------------------------------------- step functions

JOBS = {"start": [0, 5, 10], "end": [10, 15, 20], "size": [2, 1, 3]}


def test_utilization_overlapping_jobs() -> None:
    times, util = utilization_series(**JOBS, capacity=4)
    assert times.dtype == np.int64
    same(times, [0, 5, 10, 15, 20])
    same(util, [0.5, 0.75, 1.0, 0.75, 0.0])  # at 10 one job leaves as a bigger one starts
    assert mean_utilization(**JOBS, capacity=4) == pytest.approx(0.75)  # 60 / (4 * 20)


def test_utilization_window() -> None:
    times, util = utilization_series(**JOBS, capacity=4, t0=-10, t1=30)
    same(times, [-10, 0, 5, 10, 15, 20, 30])
    same(util, [0, 0.5, 0.75, 1.0, 0.75, 0, 0])
    assert mean_utilization(**JOBS, capacity=4, t0=-10, t1=30) == pytest.approx(60 / 160)
    times, util = utilization_series(**JOBS, capacity=4, t0=7, t1=12)
    same(times, [7, 10, 12])
    same(util, [0.75, 1.0, 1.0])
    assert mean_utilization(**JOBS, capacity=4, t0=7, t1=12) == pytest.approx(4.25 / 5)
    with pytest.raises(ValueError, match="t0 <= t1"):
        utilization_series(**JOBS, capacity=4, t0=5, t1=4)


def test_utilization_unfinished_and_degenerate() -> None:
    # started, not finished: runs to the end of the window; not started: ignored
    times, util = utilization_series([0, -1, 4], [-1, -1, 6], [2, 5, 1], capacity=4, t1=10)
    same(times, [0, 4, 6, 10])
    same(util, [0.5, 0.75, 0.5, 0.5])
    # a zero-length job changes nothing
    times, util = utilization_series([0, 5], [10, 5], [1, 3], capacity=2)
    same(times, [0, 5, 10])
    same(util, [0.5, 0.5, 0])
    times, util = utilization_series([], [], [], capacity=4)
    assert times.size == 0 and util.size == 0
    assert math.isnan(mean_utilization([], [], [], capacity=4))
    assert math.isnan(mean_utilization([0], [0], [1], capacity=4))
    same(utilization_series([], [], [], capacity=4, t0=0, t1=10)[1], [0, 0])
    with pytest.raises(ValueError, match="capacity"):
        utilization_series(**JOBS, capacity=0)
    with pytest.raises(ValueError, match="non-negative"):
        utilization_series([0], [1], [-1], capacity=1)


def test_queue_length() -> None:
    times, queued = queue_length_series([0, 0, 3, 4], [2, 5, 3, -1])
    same(times, [0, 2, 3, 4, 5])
    same(queued, [2, 1, 1, 2, 1])
    assert queued.dtype == np.int64
    times, queued = queue_length_series([], [])
    assert times.size == 0 and queued.size == 0


# ---------------------------------------------------------------- fairness and groups


def test_jain() -> None:
    assert jain_index([3, 3, 3]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([1, 2, 3]) == pytest.approx(36 / 42)
    assert jain_index([]) == 1.0
    assert jain_index([0, 0]) == 1.0
    with pytest.raises(ValueError):
        jain_index([1, -1])
    with pytest.raises(ValueError):
        jain_index([1, nan])


def test_group_breakdown() -> None:
    keys = ["b", "a", "a", "c", "a"]
    values = [2, 1, 3, nan, 5]
    assert group_breakdown(keys, values) == {
        "a": 3.0,
        "b": 2.0,
        "c": pytest.approx(nan, nan_ok=True),
    }
    assert list(group_breakdown(keys, values)) == ["a", "b", "c"]
    assert group_breakdown(keys, values, "sum") == {"a": 9.0, "b": 2.0, "c": 0.0}
    assert group_breakdown(keys, values, "count") == {"a": 3.0, "b": 1.0, "c": 0.0}
    assert group_breakdown(keys, values, "share") == pytest.approx(
        {"a": 9 / 11, "b": 2 / 11, "c": 0}
    )
    assert group_breakdown(keys, values, "median")["a"] == 3.0
    assert group_breakdown(keys, values, "p95")["a"] == pytest.approx(3 + 0.9 * 2)
    assert group_breakdown(keys, values, "min")["a"] == 1.0
    assert group_breakdown(keys, values, "max")["a"] == 5.0
    assert math.isnan(group_breakdown(keys, values, "median")["c"])
    assert group_breakdown([7, 7, 9], [1, 2, 3], "sum") == {7: 3.0, 9: 3.0}
    assert group_breakdown([], []) == {}
    assert group_breakdown(["a"], [0.0], "share") == {"a": 0.0}
    with pytest.raises(ValueError, match="reducer"):
        group_breakdown(keys, values, "mode")
    with pytest.raises(ValueError):
        group_breakdown(["a"], [1, 2])


# ---------------------------------------------------------------- summary


def test_summary_small() -> None:
    s = summary(
        submit=[0, 0, 5, 6],
        start=[0, 2, 10, -1],
        end=[10, 12, 20, -1],
        size=[2, 2, 4, 1],
        capacity=8,
        users=["x", "y", "x", "y"],
        groups=["g1", "g1", "g2", "g2"],
    )
    assert s["jobs"] == 4 and s["finished"] == 3
    assert s["unfinished"] == 1 and s["not_started"] == 1
    assert s["mean_wait"] == pytest.approx(7 / 3)
    assert s["median_wait"] == 2
    assert s["p95_wait"] == pytest.approx(4.7)
    assert s["mean_turnaround"] == pytest.approx(37 / 3)
    assert s["mean_bounded_slowdown"] == pytest.approx((1 + 1.2 + 1.5) / 3)
    assert s["makespan"] == 20
    assert s["mean_utilization"] == pytest.approx(80 / (8 * 20))
    assert s["jain_groups"] == pytest.approx(1.0)  # 40 and 40 processor-seconds
    assert s["jain_users"] == pytest.approx(80**2 / (2 * (60**2 + 20**2)))


def test_summary_empty_and_unfinished() -> None:
    s = summary([], [], [], [], capacity=4)
    assert s["jobs"] == 0 and s["finished"] == 0 and s["makespan"] == 0
    for key in ("mean_wait", "mean_bounded_slowdown", "mean_utilization", "jain_groups"):
        assert math.isnan(s[key])
    s = summary([0, 1], [-1, 3], [-1, -1], [1, 1], capacity=4, groups=["a", "b"])
    assert s["finished"] == 0 and s["unfinished"] == 2 and s["not_started"] == 1
    assert math.isnan(s["mean_wait"]) and s["jain_groups"] == 1.0
    with pytest.raises(ValueError, match="one entry per job"):
        summary([0], [0], [1], [1], capacity=4, users=["a", "b"])
    with pytest.raises(ValueError, match="capacity"):
        summary([0], [0], [1], [1], capacity=0)


# ---------------------------------------------------------------- properties

jobs_strategy = st.lists(
    st.tuples(
        st.integers(0, 40),  # submit
        st.integers(0, 10),  # wait
        st.integers(0, 15),  # run time
        st.integers(0, 6),  # size
        st.sampled_from(["done", "running", "queued"]),
    ),
    max_size=25,
)


def _arrays(jobs: list[tuple[int, int, int, int, str]]) -> tuple[np.ndarray, ...]:
    submit = np.array([j[0] for j in jobs], dtype=np.int64)
    start = np.array([j[0] + j[1] if j[4] != "queued" else -1 for j in jobs], dtype=np.int64)
    end = np.array([j[0] + j[1] + j[2] if j[4] == "done" else -1 for j in jobs], dtype=np.int64)
    size = np.array([j[3] for j in jobs], dtype=np.int64)
    return submit, start, end, size


@settings(max_examples=150, deadline=None)
@given(jobs_strategy, st.integers(0, 5))
def test_utilization_matches_brute_force(
    jobs: list[tuple[int, int, int, int, str]], slack: int
) -> None:
    submit, start, end, size = _arrays(jobs)
    capacity = int(size.sum()) + slack + 1  # never oversubscribed
    horizon = 80
    times, util = utilization_series(start, end, size, capacity, t0=0, t1=horizon)
    assert np.all(util >= 0) and np.all(util <= 1)
    assert times[0] == 0 and times[-1] == horizon and np.all(np.diff(times) > 0)
    running_end = np.where(end >= 0, end, horizon + 1)
    per_second = [
        size[(start >= 0) & (start <= t) & (t < running_end)].sum() / capacity
        for t in range(horizon)
    ]
    idx = np.searchsorted(times, np.arange(horizon), side="right") - 1
    same(util[idx], per_second)
    assert mean_utilization(start, end, size, capacity, 0, horizon) == pytest.approx(
        float(np.mean(per_second))
    )


@settings(max_examples=150, deadline=None)
@given(jobs_strategy)
def test_queue_length_matches_brute_force(jobs: list[tuple[int, int, int, int, str]]) -> None:
    submit, start, _, _ = _arrays(jobs)
    times, queued = queue_length_series(submit, start)
    assert np.all(queued >= 0)
    if times.size:
        assert queued[-1] == int(np.sum(start < 0))
        for t, q in zip(times.tolist(), queued.tolist(), strict=True):
            assert q == int(np.sum((submit <= t) & ((start < 0) | (start > t))))


@settings(max_examples=150, deadline=None)
@given(jobs_strategy, st.integers(1, 30))
def test_slowdown_at_least_one(jobs: list[tuple[int, int, int, int, str]], tau: int) -> None:
    submit, start, end, _ = _arrays(jobs)
    bsld = bounded_slowdown(submit, start, end, tau=tau)
    done = (start >= 0) & (end >= 0)
    assert np.all(bsld[done] >= 1.0)
    assert np.all(np.isnan(bsld[~done]))


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=30))
def test_jain_bounds(values: list[float]) -> None:
    j = jain_index(values)
    assert 0.0 < j <= 1.0
    positive = [v for v in values if v > 0]
    if positive:
        assert j >= 1.0 / len(values) - 1e-12


@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(-1e3, 1e3, allow_nan=False)), min_size=1, max_size=40
    ),
    st.sampled_from(["median", "p95", "min", "max", "mean", "sum"]),
)
def test_group_breakdown_matches_numpy(pairs: list[tuple[int, float]], reducer: str) -> None:
    keys = np.array([k for k, _ in pairs])
    values = np.array([v for _, v in pairs])
    out = group_breakdown(keys, values, reducer)
    func = {
        "median": np.median,
        "p95": lambda x: np.percentile(x, 95),
        "min": np.min,
        "max": np.max,
        "mean": np.mean,
        "sum": np.sum,
    }[reducer]
    assert sorted(out) == sorted(set(keys.tolist()))
    for key, value in out.items():
        assert value == pytest.approx(float(func(values[keys == key])), rel=1e-9, abs=1e-9)
