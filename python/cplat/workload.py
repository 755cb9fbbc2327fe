"""Seeded synthetic rigid parallel jobs after the Lublin–Feitelson workload model.

Reference: U. Lublin and D. G. Feitelson, "The workload on parallel supercomputers: modeling
the characteristics of rigid jobs", J. Parallel and Distributed Computing 63(11):1105-1122,
2003. The default parameter values are those of the authors' reference generator
``m_lublin99.c`` (Parallel Workloads Archive), fitted for a machine of 128 processors.

The model has three parts, drawn for each of two job classes (batch and interactive) or, with
``split_types=False``, once for the whole sample:

Job size
    With probability ``serial_prob`` a job is serial (one processor). Otherwise ``x = log2(size)``
    is drawn from a two-stage uniform distribution: uniform on ``[u_low, u_med]`` with
    probability ``u_prob``, else uniform on ``[u_med, u_hi]``. With probability ``pow2_prob``
    (of *all* jobs, as in the reference code) ``x`` is rounded to an integer, so the size is a
    power of two; the size is ``round(2**x)``.
Run time
    ``log(run time in seconds)`` follows a hyper-gamma distribution: ``Gamma(a1, b1)`` with
    probability ``p`` and ``Gamma(a2, b2)`` otherwise (shape, scale). ``p = pa * size + pb``
    clipped to ``[0, 1]``, with the size in processors as in the reference code; since ``pa``
    is negative, bigger jobs run longer. Draws above ``max_log_runtime`` are redrawn.
Arrivals
    The day is cut into 48 half-hour buckets; bucket ``b`` gets a weight proportional to the
    mass of ``Gamma(a_num, b_num)`` on ``[i - 0.5, i + 0.5]`` where ``i`` runs cyclically from
    ``cyclic_day_start`` (weights normalised to mean 1). Inter-arrival "points"
    ``exp(g) / 1800`` with ``g ~ Gamma(a_arr * arar, b_arr)`` (redrawn above
    ``max_log_interarrival``) are spent on the buckets in turn, a bucket of weight ``w``
    costing ``w`` points for its 1800 s, so busy buckets receive more jobs. Each class has its
    own stream; the two are merged by time.

The model fixes sizes for a 128-processor machine; for ``nodes`` processors ``u_med`` and
``u_hi`` of every class are shifted by ``log2(nodes) - reference_log2_size`` (``u_low`` is
kept, and ``u_low <= u_med <= u_hi`` is restored where a small machine breaks it), as the
reference code asks ("set the number-of-nodes' parameters to fit your system").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cplat.traces.schema import JOB_SCHEMA, NODE_SCHEMA

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Half-hour buckets per day and their length in seconds.
BUCKETS = 48
SECONDS_IN_BUCKET = 86_400 // BUCKETS

ESTIMATES = ("exact", "overestimate", "none")


@dataclass(frozen=True)
class JobClassParams:
    """Model parameters of one job class (Lublin & Feitelson 2003, reference code values).

    Parameters
    ----------
    serial_prob
        Probability that a job is serial (one processor).
    pow2_prob
        Probability (over all jobs) that a parallel job has a power-of-two size.
    u_low, u_med, u_hi, u_prob
        Two-stage uniform distribution of ``log2(size)`` of parallel jobs: uniform on
        ``[u_low, u_med]`` with probability ``u_prob``, else on ``[u_med, u_hi]``. ``u_med`` and
        ``u_hi`` are given for the reference machine of ``2**reference_log2_size`` processors.
    a1, b1, a2, b2
        Shape and scale of the two gamma components of ``log(run time)``.
    pa, pb
        Probability of the first component, ``p = pa * size + pb`` (clipped to ``[0, 1]``).
    a_arr, b_arr, arar
        ``log(inter-arrival time)`` at rush hour is ``Gamma(a_arr, b_arr)``; ``arar`` (arrive
        rush-to-all ratio) scales the shape to represent the whole day.
    a_num, b_num
        Gamma distribution (shape, scale, in half-hour buckets) whose masses weight the
        buckets of the daily cycle.
    """

    serial_prob: float
    pow2_prob: float
    u_low: float
    u_med: float
    u_hi: float
    u_prob: float
    a1: float
    b1: float
    a2: float
    b2: float
    pa: float
    pb: float
    a_arr: float
    b_arr: float
    a_num: float
    b_num: float
    arar: float

    def __post_init__(self) -> None:
        for name in ("serial_prob", "pow2_prob", "u_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.serial_prob + self.pow2_prob > 1.0:
            raise ValueError("serial_prob + pow2_prob must not exceed 1")
        if not self.u_low <= self.u_med <= self.u_hi:
            raise ValueError("need u_low <= u_med <= u_hi")
        for name in ("a1", "b1", "a2", "b2", "a_arr", "b_arr", "a_num", "b_num", "arar"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("u_low", "u_med", "u_hi", "pa", "pb"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")


#: Batch jobs (``*_BATCH`` constants of m_lublin99.c).
BATCH = JobClassParams(
    serial_prob=0.2927,
    pow2_prob=0.6686,
    u_low=1.2,
    u_med=5.0,
    u_hi=7.0,
    u_prob=0.875,
    a1=6.57,
    b1=0.823,
    a2=639.1,
    b2=0.0156,
    pa=-0.003,
    pb=0.6986,
    a_arr=6.0415,
    b_arr=0.8531,
    a_num=6.1271,
    b_num=5.2740,
    arar=1.0519,
)

#: Interactive jobs (``*_ACTIVE`` constants of m_lublin99.c).
INTERACTIVE = JobClassParams(
    serial_prob=0.1541,
    pow2_prob=0.625,
    u_low=1.0,
    u_med=3.0,
    u_hi=5.5,
    u_prob=0.705,
    a1=3.8351,
    b1=0.6605,
    a2=7.073,
    b2=0.6856,
    pa=-0.0118,
    pb=0.9156,
    a_arr=6.5510,
    b_arr=0.6621,
    a_num=8.9186,
    b_num=3.6680,
    arar=0.9797,
)

#: The whole sample without the batch/interactive split (the typeless constants).
WHOLE = JobClassParams(
    serial_prob=0.244,
    pow2_prob=0.576,
    u_low=0.8,
    u_med=4.5,
    u_hi=7.0,
    u_prob=0.86,
    a1=4.2,
    b1=0.94,
    a2=312.0,
    b2=0.03,
    pa=-0.0054,
    pb=0.78,
    a_arr=10.2303,
    b_arr=0.4871,
    a_num=8.1737,
    b_num=3.9631,
    arar=1.0225,
)


@dataclass(frozen=True)
class LublinParams:
    """All parameters of :func:`lublin_feitelson`; the defaults are the published model.

    Parameters
    ----------
    batch, interactive
        Class parameters used when ``split_types`` is true.
    whole
        Class parameters used for every job when ``split_types`` is false.
    split_types
        Model batch and interactive jobs as two merged arrival streams (the reference
        generator's default); the ``queue`` column then names each job's class.
    reference_log2_size
        ``log2`` of the machine size the size parameters were fitted for (128 processors).
    max_log_runtime
        Run-time draws with ``log(seconds)`` above this are redrawn (``exp(12)`` ~ 45 h).
    max_log_interarrival
        Inter-arrival draws with ``log(seconds)`` above this are redrawn (``exp(13)`` ~ 5 d).
    start_hour
        Hour of the day (0-23) at which the arrival process starts.
    cyclic_day_start
        First bucket index of the cyclic day used to weight the buckets.
    num_users, num_groups, zipf_exponent
        Synthetic population (not part of the model): user ``k`` submits with probability
        proportional to ``k ** -zipf_exponent``; each user belongs to one group, groups
        being drawn with the same Zipf-like law (every group gets at least one user).
    overestimate_max
        With ``estimate="overestimate"`` the requested time is the run time times a factor
        uniform on ``[1, overestimate_max]``, rounded up.
    """

    batch: JobClassParams = BATCH
    interactive: JobClassParams = INTERACTIVE
    whole: JobClassParams = WHOLE
    split_types: bool = True
    reference_log2_size: float = 7.0
    max_log_runtime: float = 12.0
    max_log_interarrival: float = 13.0
    start_hour: int = 0
    cyclic_day_start: int = 11
    num_users: int = 40
    num_groups: int = 8
    zipf_exponent: float = 1.0
    overestimate_max: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.start_hour <= 23:
            raise ValueError(f"start_hour must be in [0, 23], got {self.start_hour}")
        if not self.max_log_runtime > 0.0 or not self.max_log_interarrival > 0.0:
            raise ValueError("max_log_runtime and max_log_interarrival must be positive")
        if not math.isfinite(self.reference_log2_size):
            raise ValueError("reference_log2_size must be finite")
        if self.num_groups < 1 or self.num_users < self.num_groups:
            raise ValueError("need 1 <= num_groups <= num_users")
        if not (math.isfinite(self.zipf_exponent) and self.zipf_exponent >= 0.0):
            raise ValueError("zipf_exponent must be non-negative")
        if not (math.isfinite(self.overestimate_max) and self.overestimate_max >= 1.0):
            raise ValueError("overestimate_max must be at least 1")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Queue name of each modelled class (index = class id)."""
        return ("batch", "interactive") if self.split_types else ("batch",)

    @property
    def classes(self) -> tuple[JobClassParams, ...]:
        """Parameters of each modelled class (index = class id)."""
        return (self.batch, self.interactive) if self.split_types else (self.whole,)


def _gamma_pdf(x: F64, shape: float, scale: float) -> F64:
    log_pdf = (shape - 1.0) * np.log(x) - x / scale - math.lgamma(shape) - shape * math.log(scale)
    return np.asarray(np.exp(log_pdf), dtype=np.float64)


def bucket_weights(cls: JobClassParams, cyclic_day_start: int = 11) -> F64:
    """Relative arrival intensity of the 48 half-hour buckets of a day (mean 1).

    Bucket ``(i - 1) % 48`` for ``i = cyclic_day_start, ..., cyclic_day_start + 47`` gets the
    mass of ``Gamma(a_num, b_num)`` on ``[i - 0.5, i + 0.5]`` (Simpson's rule; no SciPy).

    Parameters
    ----------
    cls
        Class parameters (``a_num``, ``b_num`` are used).
    cyclic_day_start
        First bucket index of the cyclic day.

    Returns
    -------
    numpy.ndarray
        48 positive weights, indexed by bucket of the day, with mean 1.
    """
    centres = np.arange(cyclic_day_start, cyclic_day_start + BUCKETS, dtype=np.float64)
    steps = 64  # even number of Simpson intervals per bucket
    offsets = np.linspace(-0.5, 0.5, steps + 1)
    coef = np.ones(steps + 1)
    coef[1:-1:2] = 4.0
    coef[2:-1:2] = 2.0
    x = np.maximum(centres[:, None] + offsets[None, :], 1e-12)
    mass = (_gamma_pdf(x, cls.a_num, cls.b_num) * coef).sum(axis=1) / (3.0 * steps)
    weights = np.zeros(BUCKETS)
    weights[(centres.astype(np.int64) - 1) % BUCKETS] = mass
    if not np.all(weights > 0.0):
        raise ValueError("a_num/b_num leave a bucket of the day with no arrivals")
    return np.asarray(weights / weights.mean(), dtype=np.float64)


def _bounded_gamma(rng: np.random.Generator, shape: F64, scale: F64, bound: float) -> F64:
    """Gamma draws, each redrawn until it is at most ``bound``."""
    out = rng.gamma(shape, scale)
    bad = np.flatnonzero(out > bound)
    while bad.size:
        out[bad] = rng.gamma(shape[bad], scale[bad])
        bad = bad[out[bad] > bound]
    return np.asarray(out, dtype=np.float64)


def _arrival_stream(
    rng: np.random.Generator, cls: JobClassParams, count: int, params: LublinParams
) -> F64:
    """Arrival times (seconds, float) of ``count`` jobs of one class."""
    shape = np.full(count, cls.a_arr * cls.arar)
    scale = np.full(count, cls.b_arr)
    gaps = _bounded_gamma(rng, shape, scale, params.max_log_interarrival)
    points = np.cumsum(np.exp(gaps) / SECONDS_IN_BUCKET)
    first = params.start_hour * BUCKETS // 24
    weights = np.roll(bucket_weights(cls, params.cyclic_day_start), -first)
    edges = np.concatenate(([0.0], np.cumsum(weights)))
    per_day = edges[-1]
    day = np.floor(points / per_day)
    rest = points - day * per_day
    bucket = np.clip(np.searchsorted(edges, rest, side="right") - 1, 0, BUCKETS - 1)
    within = np.clip((rest - edges[bucket]) / weights[bucket], 0.0, 1.0)
    return np.asarray((day * BUCKETS + bucket + within) * SECONDS_IN_BUCKET, dtype=np.float64)


def _class_columns(params: LublinParams, nodes: int) -> dict[str, F64]:
    """Per-class parameter vectors, with the size parameters fitted to ``nodes``."""
    shift = math.log2(nodes) - params.reference_log2_size
    cols: dict[str, list[float]] = {}
    for cls in params.classes:
        u_hi = cls.u_hi + shift
        u_low = min(cls.u_low, u_hi)
        u_med = min(max(cls.u_med + shift, u_low), u_hi)
        values = {
            "serial": cls.serial_prob,
            "pow2": cls.pow2_prob,
            "u_low": u_low,
            "u_med": u_med,
            "u_hi": u_hi,
            "u_prob": cls.u_prob,
            "a1": cls.a1,
            "b1": cls.b1,
            "a2": cls.a2,
            "b2": cls.b2,
            "pa": cls.pa,
            "pb": cls.pb,
        }
        for key, value in values.items():
            cols.setdefault(key, []).append(value)
    return {key: np.asarray(v, dtype=np.float64) for key, v in cols.items()}


def _sizes(rng: np.random.Generator, c: dict[str, F64], kind: I64, nodes: int) -> I64:
    n = kind.size
    u = rng.random(n)
    serial = u <= c["serial"][kind]
    pow2 = ~serial & (u <= c["serial"][kind] + c["pow2"][kind])
    low_stage = rng.random(n) <= c["u_prob"][kind]
    lo = np.where(low_stage, c["u_low"][kind], c["u_med"][kind])
    hi = np.where(low_stage, c["u_med"][kind], c["u_hi"][kind])
    x = lo + rng.random(n) * (hi - lo)
    max_pow = math.floor(math.log2(nodes))
    x = np.where(pow2, np.minimum(np.floor(x + 0.5), max_pow), x)
    size: I64 = np.clip(np.floor(np.exp2(x) + 0.5), 1, nodes).astype(np.int64)
    size[serial] = 1
    return size


def _run_times(
    rng: np.random.Generator, c: dict[str, F64], kind: I64, size: I64, bound: float
) -> I64:
    n = kind.size
    p = np.clip(c["pa"][kind] * size + c["pb"][kind], 0.0, 1.0)
    first = rng.random(n) <= p
    shape = np.where(first, c["a1"][kind], c["a2"][kind])
    scale = np.where(first, c["b1"][kind], c["b2"][kind])
    log_t = rng.gamma(shape, scale)
    bad = np.flatnonzero(log_t > bound)
    while bad.size:  # redraw the whole hyper-gamma, component choice included
        first = rng.random(bad.size) <= p[bad]
        k = kind[bad]
        log_t[bad] = rng.gamma(
            np.where(first, c["a1"][k], c["a2"][k]), np.where(first, c["b1"][k], c["b2"][k])
        )
        bad = bad[log_t[bad] > bound]
    return np.maximum(np.floor(np.exp(log_t)), 1.0).astype(np.int64)


def _population(
    rng: np.random.Generator, n: int, params: LublinParams
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """User of each job and group of each user (0-based)."""
    users, groups = params.num_users, params.num_groups
    user_w = np.arange(1, users + 1, dtype=np.float64) ** -params.zipf_exponent
    group_w = np.arange(1, groups + 1, dtype=np.float64) ** -params.zipf_exponent
    extra = rng.choice(groups, size=users - groups, p=group_w / group_w.sum())
    group_of_user = np.concatenate((np.arange(groups), extra)).astype(np.int32)
    rng.shuffle(group_of_user)
    user = rng.choice(users, size=n, p=user_w / user_w.sum()).astype(np.int32)
    return user, group_of_user


def _labels(prefix: str, count: int, index: npt.NDArray[np.int32]) -> pa.Array[Any]:
    names = pa.array([f"{prefix}{k + 1}" for k in range(count)], type=pa.string())
    return names.take(index)


def _constant_string(value: str, n: int) -> pa.Array[Any]:
    return pa.array([value], type=pa.string()).take(np.zeros(n, dtype=np.int32))


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def lublin_feitelson(
    num_jobs: int,
    nodes: int = 256,
    seed: int = 0,
    params: LublinParams | None = None,
    estimate: str = "exact",
) -> pa.Table:
    """Generate a synthetic rigid-job trace from the Lublin–Feitelson model.

    Each task is one processor (``cpu_milli`` 1000), so a job of size ``k`` has ``num_tasks``
    ``k`` and fits a :func:`synthetic_cluster_nodes` cluster of ``nodes`` single-processor
    nodes. The output is deterministic in ``seed``; the columns come from independent random
    streams, so changing ``estimate`` changes only ``requested_time``.

    Parameters
    ----------
    num_jobs
        Number of jobs (0 gives an empty table).
    nodes
        Processors in the machine; sizes are in ``[1, nodes]``.
    seed
        Non-negative seed of the random streams.
    params
        Model parameters; ``None`` uses the published defaults.
    estimate
        ``"exact"``: ``requested_time == duration``; ``"overestimate"``: the run time times a
        seeded factor uniform on ``[1, params.overestimate_max]``, rounded up; ``"none"``:
        null.

    Returns
    -------
    pyarrow.Table
        Jobs in :data:`~cplat.traces.schema.JOB_SCHEMA`, ``job_id`` 1..n in submit order,
        ``submit_time`` in whole seconds from the first submission (0). With
        ``params.split_types`` the ``queue`` column is ``"batch"`` or ``"interactive"``,
        otherwise ``"batch"``. ``user`` is ``"u<k>"`` and ``group`` ``"g<k>"``.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    n = _check_int("num_jobs", num_jobs, 0)
    nodes = _check_int("nodes", nodes, 1)
    seed = _check_int("seed", seed, 0)
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate must be one of {', '.join(ESTIMATES)}; got {estimate!r}")
    if params is None:
        params = LublinParams()
    elif not isinstance(params, LublinParams):
        raise ValueError("params must be a LublinParams")

    streams = [
        np.random.Generator(np.random.PCG64(s))
        for s in np.random.SeedSequence(seed).spawn(4 + len(params.classes))
    ]
    rng_size, rng_time, rng_people, rng_estimate = streams[:4]

    # Arrivals: one stream per class, merged by time (interactive first on ties, like the
    # reference code). n draws per class suffice for the first n of the merge.
    times = [_arrival_stream(streams[4 + k], c, n, params) for k, c in enumerate(params.classes)]
    all_times = np.concatenate(times) if times else np.zeros(0)
    all_kind = np.repeat(np.arange(len(times), dtype=np.int64), n)
    tie = -all_kind  # larger class id sorts first on ties: interactive (1) before batch (0)
    order = np.lexsort((tie, all_times))[:n]
    arrival = all_times[order]
    kind = all_kind[order]
    submit = np.floor(arrival - (arrival[0] if n else 0.0)).astype(np.int64)

    c = _class_columns(params, nodes)
    size = _sizes(rng_size, c, kind, nodes)
    duration = _run_times(rng_time, c, kind, size, params.max_log_runtime)
    user, group_of_user = _population(rng_people, n, params)

    if estimate == "exact":
        requested = pa.array(duration, type=pa.int64())
    elif estimate == "overestimate":
        factor = rng_estimate.uniform(1.0, params.overestimate_max, n)
        req = np.maximum(np.ceil(duration * factor), duration).astype(np.int64)
        requested = pa.array(req, type=pa.int64())
    else:
        requested = pa.nulls(n, type=pa.int64())

    queue_names = pa.array(list(params.class_names), type=pa.string())
    arrays: list[Any] = [
        pa.array(np.arange(1, n + 1, dtype=np.int64)),
        pa.array(submit, type=pa.int64()),
        pa.array(duration, type=pa.int64()),
        requested,
        pa.array(size.astype(np.int32), type=pa.int32()),
        pa.array(np.full(n, 1000, dtype=np.int64)),
        pa.array(np.zeros(n, dtype=np.int64)),
        pa.array(np.zeros(n, dtype=np.int32)),
        pa.array(np.zeros(n, dtype=np.int32)),
        _constant_string("", n),
        _labels("u", params.num_users, user),
        _labels("g", params.num_groups, group_of_user[user]),
        pa.array(np.zeros(n, dtype=np.int32)),
        queue_names.take(kind.astype(np.int32)),
    ]
    return pa.Table.from_arrays(arrays, schema=JOB_SCHEMA)


def synthetic_cluster_nodes(nodes: int = 256, procs_per_node: int = 1) -> pa.Table:
    """Homogeneous CPU-only cluster for Lublin–Feitelson jobs.

    Parameters
    ----------
    nodes
        Number of nodes, named ``lf-node-0000``, ``lf-node-0001``, ...
    procs_per_node
        Processors per node (``cpu_milli = 1000 * procs_per_node``).

    Returns
    -------
    pyarrow.Table
        Nodes in :data:`~cplat.traces.schema.NODE_SCHEMA`: no memory, no GPUs, rack and
        spine 0.

    Raises
    ------
    ValueError
        If ``nodes`` or ``procs_per_node`` is not a positive integer.
    """
    nodes = _check_int("nodes", nodes, 1)
    procs_per_node = _check_int("procs_per_node", procs_per_node, 1)
    arrays: list[Any] = [
        pa.array([f"lf-node-{i:04d}" for i in range(nodes)], type=pa.string()),
        pa.array(np.full(nodes, 1000 * procs_per_node, dtype=np.int64)),
        pa.array(np.zeros(nodes, dtype=np.int64)),
        pa.array(np.zeros(nodes, dtype=np.int32)),
        _constant_string("", nodes),
        pa.array(np.zeros(nodes, dtype=np.int32)),
        pa.array(np.zeros(nodes, dtype=np.int32)),
    ]
    return pa.Table.from_arrays(arrays, schema=NODE_SCHEMA)
