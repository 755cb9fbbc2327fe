"""Scheduling metrics over per-job arrays of integer seconds (pure NumPy).

Every per-job function takes parallel one-dimensional arrays, one entry per job. A job that has
not started has ``start < 0`` (conventionally ``-1``); one that has not finished has
``end < 0``. Such jobs get ``NaN`` in per-job results, are left out of means, and are counted
separately by :func:`summary`. Step functions are returned as ``(times, values)`` where
``values[i]`` holds on ``[times[i], times[i + 1])`` and the last value holds from the last
time on (``matplotlib``'s ``drawstyle="steps-post"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

REDUCERS = ("mean", "median", "p95", "sum", "count", "min", "max", "share")


def _ints(name: str, values: npt.ArrayLike) -> I64:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold whole seconds (integers), got dtype {arr.dtype}")


def _same_length(**arrays: I64) -> int:
    lengths = {name: arr.size for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"arrays must have the same length ({detail})")
    return next(iter(lengths.values()), 0)


def _check_order(earlier: I64, later: I64, what: str) -> None:
    done = later >= 0
    if np.any(later[done] < earlier[done]):
        raise ValueError(f"{what}")


def wait_times(submit: npt.ArrayLike, start: npt.ArrayLike) -> F64:
    """Time each job waited in the queue.

    Parameters
    ----------
    submit, start
        Submit and start times (seconds); ``start < 0`` means not started.

    Returns
    -------
    numpy.ndarray
        ``start - submit`` as float, ``NaN`` for jobs not started.

    Raises
    ------
    ValueError
        If the arrays differ in length or a job starts before it is submitted.
    """
    sub, sta = _ints("submit", submit), _ints("start", start)
    _same_length(submit=sub, start=sta)
    _check_order(sub, sta, "a job starts before it is submitted")
    return np.where(sta >= 0, (sta - sub).astype(np.float64), np.nan)


def turnaround(submit: npt.ArrayLike, end: npt.ArrayLike) -> F64:
    """Turnaround (response) time: from submission to completion.

    Parameters
    ----------
    submit, end
        Submit and end times (seconds); ``end < 0`` means not finished.

    Returns
    -------
    numpy.ndarray
        ``end - submit`` as float, ``NaN`` for unfinished jobs.

    Raises
    ------
    ValueError
        If the arrays differ in length or a job ends before it is submitted.
    """
    sub, fin = _ints("submit", submit), _ints("end", end)
    _same_length(submit=sub, end=fin)
    _check_order(sub, fin, "a job ends before it is submitted")
    return np.where(fin >= 0, (fin - sub).astype(np.float64), np.nan)


def bounded_slowdown(
    submit: npt.ArrayLike, start: npt.ArrayLike, end: npt.ArrayLike, tau: float = 10
) -> F64:
    """Bounded slowdown ``max((end - submit) / max(end - start, tau), 1)`` of each job.

    The threshold ``tau`` keeps very short jobs from dominating the mean (Feitelson et al.,
    "Theory and practice in parallel job scheduling", JSSPP 1997).

    Parameters
    ----------
    submit, start, end
        Times in seconds; ``start < 0`` or ``end < 0`` marks an unfinished job.
    tau
        Run-time threshold in seconds (positive).

    Returns
    -------
    numpy.ndarray
        Bounded slowdown (``>= 1``), ``NaN`` for unfinished jobs.

    Raises
    ------
    ValueError
        If the arrays differ in length, the times are out of order, or ``tau <= 0``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    sub, sta, fin = _ints("submit", submit), _ints("start", start), _ints("end", end)
    _same_length(submit=sub, start=sta, end=fin)
    _check_order(sub, sta, "a job starts before it is submitted")
    done = (sta >= 0) & (fin >= 0)
    if np.any(fin[done] < sta[done]):
        raise ValueError("a job ends before it starts")
    run = np.maximum((fin - sta).astype(np.float64), float(tau))
    slowdown = np.maximum((fin - sub) / run, 1.0)
    return np.where(done, slowdown, np.nan)


def makespan(submit: npt.ArrayLike, end: npt.ArrayLike) -> int:
    """Time from the first submission to the last completion.

    Parameters
    ----------
    submit, end
        Times in seconds; ``end < 0`` marks an unfinished job (its end is ignored).

    Returns
    -------
    int
        ``max(end of finished jobs) - min(submit of all jobs)``; 0 when no job has finished.
    """
    sub, fin = _ints("submit", submit), _ints("end", end)
    _same_length(submit=sub, end=fin)
    done = fin >= 0
    if not np.any(done):
        return 0
    return max(int(fin[done].max()) - int(sub.min()), 0)


def _step(times: I64, deltas: npt.NDArray[Any]) -> tuple[I64, npt.NDArray[Any]]:
    """Distinct event times and the running total of ``deltas`` just after each."""
    order = np.argsort(times, kind="stable")
    t = times[order]
    level = np.cumsum(deltas[order])
    last = np.r_[t[1:] != t[:-1], True] if t.size else np.zeros(0, dtype=bool)
    return t[last], level[last]


def _window(
    times: I64, level: npt.NDArray[Any], t0: int | None, t1: int | None
) -> tuple[I64, npt.NDArray[Any]]:
    """Restrict a step function to ``[t0, t1]`` (defaults: its first and last change)."""
    if times.size == 0 and t0 is None and t1 is None:
        return times, level
    first = int(times[0]) if times.size else None
    last = int(times[-1]) if times.size else None
    lo = int(t0) if t0 is not None else first
    hi = int(t1) if t1 is not None else last
    if lo is None:
        lo = hi
    if hi is None:
        hi = lo
    assert lo is not None and hi is not None
    if t0 is None:
        lo = min(lo, hi)
    if t1 is None:
        hi = max(hi, lo)
    if hi < lo:
        raise ValueError(f"need t0 <= t1, got t0={lo}, t1={hi}")
    inner = times[(times > lo) & (times < hi)]
    tail = np.array([hi] if hi > lo else [], dtype=np.int64)
    out_t = np.concatenate((np.array([lo], dtype=np.int64), inner, tail))
    idx = np.searchsorted(times, out_t, side="right") - 1
    values = level[np.maximum(idx, 0)] if level.size else np.zeros(out_t.size, dtype=np.int64)
    values = np.where(idx >= 0, values, 0)
    return out_t, values


def utilization_series(
    start: npt.ArrayLike,
    end: npt.ArrayLike,
    size: npt.ArrayLike,
    capacity: float,
    t0: int | None = None,
    t1: int | None = None,
) -> tuple[I64, F64]:
    """Share of the capacity in use over time, as a step function.

    Built in ``O(n log n)`` by sorting the start (``+size``) and end (``-size``) events. A
    job that started but has not ended (``end < 0``) counts as running until the end of the
    series; a job not started is ignored.

    Parameters
    ----------
    start, end
        Start and end times in seconds (``< 0``: not started / not finished).
    size
        Resources each job holds while running (e.g. processors), non-negative.
    capacity
        Total resources of the machine (positive).
    t0, t1
        Window; the defaults are the first start and the last event.

    Returns
    -------
    times : numpy.ndarray
        ``t0``, every time in ``(t0, t1)`` where the load changes, and ``t1`` (int64).
    utilization : numpy.ndarray
        ``sum(size of running jobs) / capacity`` from each time on. Empty arrays when no
        job started and no window is given.

    Raises
    ------
    ValueError
        If the arrays differ in length, a size is negative, a job ends before it starts,
        ``capacity <= 0`` or ``t1 < t0``.
    """
    if not capacity > 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    sta, fin, sz = _ints("start", start), _ints("end", end), _ints("size", size)
    _same_length(start=sta, end=fin, size=sz)
    if np.any(sz < 0):
        raise ValueError("size must be non-negative")
    running = sta >= 0
    done = running & (fin >= 0)
    if np.any(fin[done] < sta[done]):
        raise ValueError("a job ends before it starts")
    times = np.concatenate((sta[running], fin[done]))
    deltas = np.concatenate((sz[running], -sz[done]))
    t, level = _step(times, deltas)
    out_t, out_level = _window(t, level, t0, t1)
    return out_t, np.asarray(out_level, dtype=np.float64) / float(capacity)


def mean_utilization(
    start: npt.ArrayLike,
    end: npt.ArrayLike,
    size: npt.ArrayLike,
    capacity: float,
    t0: int | None = None,
    t1: int | None = None,
) -> float:
    """Time-weighted mean of :func:`utilization_series` over ``[t0, t1]``.

    Parameters
    ----------
    start, end, size, capacity, t0, t1
        As for :func:`utilization_series`.

    Returns
    -------
    float
        The mean utilisation; ``NaN`` for an empty window (no job, or ``t0 == t1``).
    """
    times, util = utilization_series(start, end, size, capacity, t0, t1)
    if times.size < 2:
        return float("nan")
    widths = np.diff(times).astype(np.float64)
    return float(np.dot(util[:-1], widths) / widths.sum())


def queue_length_series(submit: npt.ArrayLike, start: npt.ArrayLike) -> tuple[I64, I64]:
    """Count the jobs waiting (submitted, not yet started) over time, as a step function.

    Parameters
    ----------
    submit, start
        Times in seconds; a job with ``start < 0`` stays queued to the end.

    Returns
    -------
    times : numpy.ndarray
        Every time at which the queue length changes (int64; empty for no jobs).
    queued : numpy.ndarray
        Jobs waiting from each time on (int64).

    Raises
    ------
    ValueError
        If the arrays differ in length or a job starts before it is submitted.
    """
    sub, sta = _ints("submit", submit), _ints("start", start)
    _same_length(submit=sub, start=sta)
    _check_order(sub, sta, "a job starts before it is submitted")
    started = sta >= 0
    times = np.concatenate((sub, sta[started]))
    deltas = np.concatenate(
        (np.ones(sub.size, dtype=np.int64), -np.ones(int(started.sum()), dtype=np.int64))
    )
    t, level = _step(times, deltas)
    return t, np.asarray(level, dtype=np.int64)


def jain_index(values: npt.ArrayLike) -> float:
    """Jain's fairness index ``(sum x)**2 / (n * sum x**2)``.

    It is 1 when all shares are equal and ``1/n`` when one party gets everything (Jain, Chiu
    and Hawe, DEC-TR-301, 1984).

    Parameters
    ----------
    values
        Non-negative shares (e.g. resource-time per user).

    Returns
    -------
    float
        The index in ``[1/n, 1]``. By convention 1.0 for an empty input and for all zeros:
        nobody received more than anybody else.

    Raises
    ------
    ValueError
        If a value is negative or not finite.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("jain_index needs finite, non-negative values")
    square_sum = float(np.dot(x, x))
    if x.size == 0 or square_sum == 0.0:
        return 1.0
    return min(float(x.sum()) ** 2 / (x.size * square_sum), 1.0)


def group_breakdown(
    keys: npt.ArrayLike, values: npt.ArrayLike, reducer: str = "mean"
) -> dict[Any, float]:
    """Reduce ``values`` per key (e.g. mean wait per user, resource share per group).

    ``NaN`` values (unfinished jobs) are ignored.

    Parameters
    ----------
    keys
        Group of each job (strings or integers).
    values
        Value of each job.
    reducer
        ``"mean"``, ``"median"``, ``"p95"`` (linear interpolation, as ``numpy.percentile``),
        ``"min"``, ``"max"``, ``"sum"``, ``"count"`` (non-``NaN`` values) or ``"share"``
        (the group's sum over the total sum; 0 where the total is 0).

    Returns
    -------
    dict
        Key (as a Python scalar, in sorted order) to the reduced value; ``NaN`` for a group
        with no non-``NaN`` value under the mean, median, p95, min and max reducers.

    Raises
    ------
    ValueError
        If the reducer is unknown or the arrays differ in length.
    """
    if reducer not in REDUCERS:
        raise ValueError(f"reducer must be one of {', '.join(REDUCERS)}; got {reducer!r}")
    k = np.asarray(keys)
    v = np.asarray(values, dtype=np.float64)
    if k.ndim != 1 or v.ndim != 1 or k.size != v.size:
        raise ValueError("keys and values must be one-dimensional and of the same length")
    if k.size == 0:
        return {}
    uniq, inv = np.unique(k, return_inverse=True)
    inv = inv.ravel()
    groups = uniq.size
    ok = ~np.isnan(v)
    count = np.bincount(inv[ok], minlength=groups).astype(np.float64)
    total = np.bincount(inv[ok], weights=v[ok], minlength=groups).astype(np.float64)
    if reducer == "count":
        out = count
    elif reducer == "sum":
        out = total
    elif reducer == "share":
        whole = float(total.sum())
        out = total / whole if whole != 0.0 else np.zeros(groups)
    elif reducer == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    else:
        q = {"median": 0.5, "p95": 0.95, "min": 0.0, "max": 1.0}[reducer]
        gi, gv = inv[ok], v[ok]
        order = np.lexsort((gv, gi))
        sorted_v = gv[order]
        n = count.astype(np.int64)
        first = np.cumsum(n) - n
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.ceil(pos).astype(np.int64)
        has = n > 0
        out = np.full(groups, np.nan)
        a = sorted_v[(first + lo)[has]]
        b = sorted_v[(first + hi)[has]]
        out[has] = a + (pos - lo)[has] * (b - a)
    return {key: float(val) for key, val in zip(uniq.tolist(), out.tolist(), strict=True)}


def summary(
    submit: npt.ArrayLike,
    start: npt.ArrayLike,
    end: npt.ArrayLike,
    size: npt.ArrayLike,
    capacity: float,
    users: npt.ArrayLike | None = None,
    groups: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Headline metrics of a schedule.

    Per-job statistics use the finished jobs only (``start >= 0`` and ``end >= 0``).

    Parameters
    ----------
    submit, start, end
        Times in seconds (``start``/``end < 0``: not started / not finished).
    size
        Resources each job holds while running.
    capacity
        Total resources of the machine.
    users, groups
        Optional owner and group of each job.

    Returns
    -------
    dict
        ``jobs``, ``finished``, ``unfinished`` (not finished, including not started),
        ``not_started`` (ints); ``mean_wait``, ``median_wait``, ``p95_wait``,
        ``mean_bounded_slowdown`` (``tau`` = 10 s), ``mean_turnaround`` (seconds, ``NaN``
        with no finished job); ``makespan`` (see :func:`makespan`); ``mean_utilization``
        over ``[first submit, last end]`` (:func:`mean_utilization`; ``NaN`` for an empty
        window); ``jain_groups`` and ``jain_users``: Jain's index of the resource-time
        ``size * (end - start)`` that each group (user) received from its finished jobs,
        a group whose jobs all remain unfinished counting 0 (``NaN`` when not given).

    Raises
    ------
    ValueError
        If the arrays differ in length or are inconsistent.
    """
    sub, sta, fin, sz = (
        _ints("submit", submit),
        _ints("start", start),
        _ints("end", end),
        _ints("size", size),
    )
    n = _same_length(submit=sub, start=sta, end=fin, size=sz)
    done = (sta >= 0) & (fin >= 0)
    waits = wait_times(sub, sta)[done]
    slow = bounded_slowdown(sub, sta, fin)[done]
    turn = turnaround(sub, fin)[done]
    nan = float("nan")
    any_done = bool(done.any())
    span = makespan(sub, fin)
    if not capacity > 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    util = nan
    if any_done:
        util = mean_utilization(sta, fin, sz, capacity, int(sub.min()), int(fin[done].max()))
    resource_time = np.where(done, sz * (fin - sta), 0).astype(np.float64)

    def jain_of(owner: npt.ArrayLike | None, name: str) -> float:
        if owner is None:
            return nan
        keys = np.asarray(owner)
        if keys.ndim != 1 or keys.size != n:
            raise ValueError(f"{name} must have one entry per job")
        return jain_index(list(group_breakdown(keys, resource_time, "sum").values()))

    return {
        "jobs": n,
        "finished": int(done.sum()),
        "unfinished": int(n - done.sum()),
        "not_started": int((sta < 0).sum()),
        "mean_wait": float(waits.mean()) if any_done else nan,
        "median_wait": float(np.median(waits)) if any_done else nan,
        "p95_wait": float(np.percentile(waits, 95)) if any_done else nan,
        "mean_bounded_slowdown": float(slow.mean()) if any_done else nan,
        "mean_turnaround": float(turn.mean()) if any_done else nan,
        "makespan": span,
        "mean_utilization": util,
        "jain_groups": jain_of(groups, "groups"),
        "jain_users": jain_of(users, "users"),
    }
