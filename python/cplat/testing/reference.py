"""Reference twins of the native engine's filters, scorers and GPU-selection rules.

Every function here is the slow, obvious Python version of one piece of the C++ placement
chain (``cpp/src/plugins`` and ``cpp/src/framework.cpp``). They work on plain ints and lists,
reproduce the engine's integer arithmetic to the truncation (C++ and Go integer division and
float-to-int conversion truncate toward zero, which Python's ``//`` does not), and evaluate the
same floating-point expressions in the same order, so that their results are equal to the
engine's bit for bit. The tests compare the engine against them on random small clusters.

Nothing here is fast or incremental; use the engine for real work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cplat import _core
from cplat.fragmentation import TargetWorkload, node_fragmentation

#: Milli-GPU of one whole device.
MILLI_GPU = 1000
#: Score range of every scorer (Kubernetes' MinNodeScore..MaxNodeScore).
MIN_SCORE = 0
MAX_SCORE = 100
#: Normalisers of the dot-product and best/worst-fit scorers: the largest node shape.
MAX_SPEC_CPU = 128000.0
MAX_SPEC_GPU = 8000.0
MAX_SPEC_GPU_INT = 8000
#: GPU-kind slots of GPU clustering: slot 0 = shared fraction, slot k = k whole GPUs.
GPU_KIND_SLOTS = 17
#: How many devices the packing scorer looks at (the engine's fixed-size scratch).
PACKING_MAX_DEVICES = 64

#: Outcome codes, in the engine's order (index = the code's number in ``Engine.filter``).
CODE_NAMES: tuple[str, ...] = (
    "ok",
    "node_unavailable",
    "gpu_model_mismatch",
    "insufficient_cpu",
    "insufficient_memory",
    "insufficient_gpu",
    "invalid_argument",
    "no_feasible_node",
)
#: Scorers with a reference twin (``random`` is drawn per task and has none).
SCORERS: tuple[str, ...] = ("dotprod", "clustering", "packing", "bestfit", "worstfit", "fgd")
#: Scorers whose raw scores are min-max normalised over the feasible nodes before weighting.
NORMALIZED_SCORERS = frozenset({"bestfit", "worstfit"})
#: GPU picks with a deterministic twin (``random`` only has :func:`fitting_gpus`).
DETERMINISTIC_PICKS: tuple[str, ...] = ("best", "worst", "fgd")


def trunc_div(a: int, b: int) -> int:
    """Divide integers truncating toward zero, as C++ and Go do.

    Parameters
    ----------
    a
        Dividend.
    b
        Divisor (non-zero).

    Returns
    -------
    int
        ``a / b`` rounded toward zero (Python's ``//`` rounds toward minus infinity).
    """
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@dataclass(frozen=True)
class Request:
    """What one task asks for (the twin of the engine's ``Request``).

    Parameters
    ----------
    cpu_milli
        Milli-cores.
    memory_mib
        Memory in MiB.
    num_gpu
        Devices: with ``gpu_milli < 1000`` and ``num_gpu == 1`` a share of one device,
        otherwise ``num_gpu`` whole devices.
    gpu_milli
        Milli-GPU per device.
    models
        Bit mask of allowed GPU model ids; 0 = any model.
    """

    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    models: int = 0

    @property
    def wants_gpu(self) -> bool:
        """Whether the request takes any GPU capacity."""
        return self.num_gpu > 0 and self.gpu_milli > 0

    @property
    def is_share(self) -> bool:
        """Whether the request is a fraction of one device (true for ``(1, 0)`` too)."""
        return self.num_gpu == 1 and self.gpu_milli < MILLI_GPU

    @property
    def total_gpu_milli(self) -> int:
        """Milli-GPU taken in all (``num_gpu * gpu_milli``)."""
        return self.num_gpu * self.gpu_milli

    def args(self) -> tuple[int, int, int, int, int]:
        """Return the positional arguments of ``Engine.place``, ``filter`` and ``score``."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.models)


def request_is_valid(request: Request) -> bool:
    """Return whether ``Engine.place`` accepts the request (else it answers invalid_argument).

    Parameters
    ----------
    request
        The request.

    Returns
    -------
    bool
        True for a CPU-only request (no GPU fields), one device or a share of one
        (``num_gpu == 1``, ``0 < gpu_milli <= 1000``), or several whole devices; amounts
        never negative.
    """
    r = request
    if r.cpu_milli < 0 or r.memory_mib < 0 or r.num_gpu < 0 or r.gpu_milli < 0:
        return False
    if r.gpu_milli > MILLI_GPU:
        return False
    if r.num_gpu == 0:
        return r.gpu_milli == 0
    if r.num_gpu == 1:
        return r.gpu_milli > 0
    return r.gpu_milli == MILLI_GPU


def kind_slot(request: Request) -> int:
    """Return the GPU-kind slot of a request (0 = shared, k = k whole GPUs, clamped to 16).

    Parameters
    ----------
    request
        The request.

    Returns
    -------
    int
        The slot counted by the node's GPU-kind table.
    """
    if request.is_share:
        return 0
    return min(max(request.num_gpu, 1), GPU_KIND_SLOTS - 1)


@dataclass(frozen=True)
class NodeView:
    """One node's state as plain values (what every filter and scorer reads).

    Parameters
    ----------
    cpu_free
        Free milli-cores.
    memory_free
        Free MiB.
    gpu_free
        Free milli-GPU of each device, in local device order.
    gpu_model
        GPU model id, -1 for none.
    flags
        Node flags (down, cordoned, draining); non-zero makes the node unavailable.
    kind_counts
        Tasks on the node per GPU-kind slot (``GPU_KIND_SLOTS`` entries).
    kinds_present
        How many slots have at least one task.
    cpu_capacity
        Milli-core capacity (only release checks it; defaults to ``cpu_free``).
    memory_capacity
        MiB capacity (only release checks it; defaults to ``memory_free``).
    """

    cpu_free: int
    memory_free: int
    gpu_free: tuple[int, ...]
    gpu_model: int
    flags: int = 0
    kind_counts: tuple[int, ...] = (0,) * GPU_KIND_SLOTS
    kinds_present: int = 0
    cpu_capacity: int = -1
    memory_capacity: int = -1

    def __post_init__(self) -> None:
        if len(self.kind_counts) != GPU_KIND_SLOTS:
            raise ValueError(f"kind_counts needs {GPU_KIND_SLOTS} entries")
        if self.cpu_capacity < 0:
            object.__setattr__(self, "cpu_capacity", self.cpu_free)
        if self.memory_capacity < 0:
            object.__setattr__(self, "memory_capacity", self.memory_free)

    @property
    def gpu_count(self) -> int:
        """Number of devices."""
        return len(self.gpu_free)

    @property
    def gpu_free_total(self) -> int:
        """Free milli-GPU summed over the devices."""
        return sum(self.gpu_free)

    @property
    def gpu_whole_free(self) -> int:
        """Number of completely free devices."""
        return sum(1 for f in self.gpu_free if f == MILLI_GPU)

    @property
    def gpu_max_free(self) -> int:
        """Largest free share of one device (0 without devices)."""
        return max(self.gpu_free, default=0)


def node_views(state: _core.ClusterState) -> list[NodeView]:
    """Read every node of a native cluster state into a :class:`NodeView`.

    Parameters
    ----------
    state
        The engine's cluster state.

    Returns
    -------
    list[NodeView]
        One view per node, in node order.
    """
    begin = [int(b) for b in state.gpu_begin.tolist()]
    gpu_free = [int(f) for f in state.gpu_free.tolist()]
    cpu_free = state.cpu_free.tolist()
    cpu_cap = state.cpu_capacity.tolist()
    mem_free = state.memory_free.tolist()
    mem_cap = state.memory_capacity.tolist()
    model = state.gpu_model.tolist()
    flags = state.flags.tolist()
    views = []
    for n in range(state.num_nodes):
        views.append(
            NodeView(
                cpu_free=int(cpu_free[n]),
                memory_free=int(mem_free[n]),
                gpu_free=tuple(gpu_free[begin[n] : begin[n + 1]]),
                gpu_model=int(model[n]),
                flags=int(flags[n]),
                kind_counts=tuple(state.kind_count(n, s) for s in range(GPU_KIND_SLOTS)),
                kinds_present=state.kinds_present(n),
                cpu_capacity=int(cpu_cap[n]),
                memory_capacity=int(mem_cap[n]),
            )
        )
    return views


# --- Node state changes ----------------------------------------------------------------------


def _count_kind(view: NodeView, request: Request, delta: int) -> tuple[tuple[int, ...], int]:
    counts = list(view.kind_counts)
    if request.wants_gpu:
        counts[kind_slot(request)] += delta
    return tuple(counts), sum(1 for c in counts if c > 0)


def allocate(view: NodeView, request: Request, gpus: Sequence[int]) -> tuple[str, NodeView]:
    """Take a request on a node using the given local devices (twin of ``allocate``).

    Parameters
    ----------
    view
        The node before.
    request
        What to take.
    gpus
        Local device indices: one for a share, ``num_gpu`` for whole devices, none otherwise.

    Returns
    -------
    tuple[str, NodeView]
        The outcome code and the node after (unchanged unless the code is ``"ok"``).
    """
    r = request
    if not request_is_valid(r) or len(set(gpus)) != len(gpus):
        return "invalid_argument", view
    if r.cpu_milli > view.cpu_free:
        return "insufficient_cpu", view
    if r.memory_mib > view.memory_free:
        return "insufficient_memory", view
    if r.wants_gpu:
        if len(gpus) != r.num_gpu:
            return "invalid_argument", view
        for g in gpus:
            if g < 0 or g >= view.gpu_count:
                return "invalid_argument", view
            if view.gpu_free[g] < r.gpu_milli:
                return "insufficient_gpu", view
    elif len(gpus) > 0:
        return "invalid_argument", view
    free = list(view.gpu_free)
    for g in gpus:
        free[g] -= r.gpu_milli
    counts, present = _count_kind(view, r, +1)
    return "ok", replace(
        view,
        cpu_free=view.cpu_free - r.cpu_milli,
        memory_free=view.memory_free - r.memory_mib,
        gpu_free=tuple(free),
        kind_counts=counts,
        kinds_present=present,
    )


def release(view: NodeView, request: Request, gpus: Sequence[int]) -> tuple[str, NodeView]:
    """Give back what :func:`allocate` took (twin of ``release``, as documented).

    The release fails, changing nothing, when it would push any free amount above capacity.
    Devices named twice count twice.

    Parameters
    ----------
    view
        The node before.
    request
        What was taken.
    gpus
        The local devices it was taken on.

    Returns
    -------
    tuple[str, NodeView]
        ``"ok"`` or ``"invalid_argument"``, and the node after.
    """
    r = request
    if not request_is_valid(r) or len(set(gpus)) != len(gpus):
        return "invalid_argument", view
    if (
        view.cpu_free + r.cpu_milli > view.cpu_capacity
        or view.memory_free + r.memory_mib > view.memory_capacity
    ):
        return "invalid_argument", view
    if r.wants_gpu != (len(gpus) > 0) or (r.wants_gpu and len(gpus) != r.num_gpu):
        return "invalid_argument", view
    free = list(view.gpu_free)
    for g in gpus:
        if g < 0 or g >= view.gpu_count:
            return "invalid_argument", view
        free[g] += r.gpu_milli
        if free[g] > MILLI_GPU:
            return "invalid_argument", view
    if r.wants_gpu and view.kind_counts[kind_slot(r)] == 0:
        return "invalid_argument", view
    counts, present = _count_kind(view, r, -1)
    return "ok", replace(
        view,
        cpu_free=view.cpu_free + r.cpu_milli,
        memory_free=view.memory_free + r.memory_mib,
        gpu_free=tuple(free),
        kind_counts=counts,
        kinds_present=present,
    )


# --- Filters ---------------------------------------------------------------------------------


def gpu_fits(view: NodeView, request: Request) -> bool:
    """Return whether the node's devices can hold the request (ignoring flags and models).

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    bool
        True when enough devices have at least ``gpu_milli`` free (always for no GPU).
    """
    if not request.wants_gpu:
        return True
    fitting = sum(1 for f in view.gpu_free if f >= request.gpu_milli)
    return fitting >= request.num_gpu


def filter_node(view: NodeView, request: Request) -> str:
    """Return the first failing filter's code for a node, or ``"ok"``.

    The order is the engine's: node state; for GPU requests, a node without devices
    (``insufficient_gpu``) and then the model mask; CPU; memory; device capacity.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    str
        One of ``ok``, ``node_unavailable``, ``gpu_model_mismatch``, ``insufficient_cpu``,
        ``insufficient_memory``, ``insufficient_gpu``.
    """
    if view.flags != 0:
        return "node_unavailable"
    if request.wants_gpu:
        if view.gpu_count == 0:
            return "insufficient_gpu"
        model = view.gpu_model
        if request.models != 0 and (model < 0 or (request.models >> model) & 1 == 0):
            return "gpu_model_mismatch"
    if request.cpu_milli > view.cpu_free:
        return "insufficient_cpu"
    if request.memory_mib > view.memory_free:
        return "insufficient_memory"
    if not gpu_fits(view, request):
        return "insufficient_gpu"
    return "ok"


# --- Scorers ---------------------------------------------------------------------------------


def score_dotprod(view: NodeView, request: Request) -> int:
    """Score the alignment of the request with the node's free (CPU, GPU) vector.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    int
        ``int(100 * (1 - dot / 2))`` with both vectors normalised by the largest node shape;
        0 when the CPU does not fit.
    """
    if view.cpu_free < request.cpu_milli:
        return MIN_SCORE
    node_cpu = float(view.cpu_free) / MAX_SPEC_CPU
    node_gpu = float(view.gpu_free_total) / MAX_SPEC_GPU
    pod_cpu = float(request.cpu_milli) / MAX_SPEC_CPU
    pod_gpu = float(request.total_gpu_milli) / MAX_SPEC_GPU
    dot = node_cpu * pod_cpu + node_gpu * pod_gpu
    dot /= 2.0
    return int(float(MAX_SCORE) * (1.0 - dot))


def score_clustering(view: NodeView, request: Request) -> int:
    """Score GPU clustering: same GPU kind first, then idle nodes, then mixed nodes.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    int
        A band (75 for a node running only this kind, 50 for this kind among others, 25 for
        a node without GPU tasks, 0 otherwise) plus ``25 * used / 8000`` (truncated); 0 for
        requests without GPU.
    """
    if not request.wants_gpu:
        return MIN_SCORE
    slot = kind_slot(request)
    fill = trunc_div(MAX_SCORE // 4 * (MAX_SPEC_GPU_INT - view.gpu_free_total), MAX_SPEC_GPU_INT)
    if view.kind_counts[slot] > 0:
        return fill + (MAX_SCORE * 3 // 4 if view.kinds_present == 1 else MAX_SCORE * 2 // 4)
    return fill + (MAX_SCORE // 4 if view.kinds_present == 0 else 0)


def score_packing(view: NodeView, request: Request) -> int:
    """Score GPU packing: share a used device, then whole devices on a used node, then idle.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    int
        For a node whose devices are all free ``max(33 - devices, devices)``; when the
        request would take a whole free device of a used node ``max(50 - whole taken, 33)``;
        when it only takes used devices ``max(100 - sum(free percent) / 10, 50)``; 0 when it
        does not fit or takes no GPU share.
    """
    if request.gpu_milli <= 0:
        return MIN_SCORE
    free = view.gpu_free
    whole = view.gpu_whole_free
    if whole == view.gpu_count:
        return max(MAX_SCORE // 3 - whole, whole)
    m = min(view.gpu_count, PACKING_MAX_DEVICES)
    order = sorted(range(m), key=lambda i: free[i])  # stable: lowest index first on ties
    need = request.num_gpu
    whole_used = 0
    free_ratio_on_used = 0
    for i in order:
        if need <= 0:
            break
        f = free[i]
        if request.gpu_milli <= f:
            need -= 1
            whole_used += 1 if f == MILLI_GPU else 0
            free_ratio_on_used += f * 100 // MILLI_GPU
    if need != 0:
        return MIN_SCORE
    if whole_used > 0:
        return max(MAX_SCORE // 2 - whole_used, MAX_SCORE // 3)
    return max(MAX_SCORE - free_ratio_on_used // 10, MAX_SCORE // 2)


def _leftover(view: NodeView, request: Request) -> float:
    s = 0.0
    s += float(view.cpu_free - request.cpu_milli) / MAX_SPEC_CPU * 0.5
    s += float(view.gpu_free_total - request.total_gpu_milli) / MAX_SPEC_GPU * 0.5
    return s


def score_bestfit(view: NodeView, request: Request) -> int:
    """Score best fit: less (CPU, GPU) left over after placing scores higher.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    int
        ``int((1 - leftover) * 100)``, truncated toward zero (negative for nodes larger than
        the normalising shape).
    """
    return int((1.0 - _leftover(view, request)) * float(MAX_SCORE))


def score_worstfit(view: NodeView, request: Request) -> int:
    """Score worst fit: more (CPU, GPU) left over after placing scores higher.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    int
        ``int(leftover * 100)``, truncated toward zero.
    """
    return int(_leftover(view, request) * float(MAX_SCORE))


def gradient_score(before: float, after: float) -> int:
    """Turn a fragmentation change into a score: ``int(100 * sigmoid((before - after) / 1000))``.

    Parameters
    ----------
    before
        Fragmented milli-GPU before placing.
    after
        Fragmented milli-GPU after placing.

    Returns
    -------
    int
        A score in [0, 100]; 50 when nothing changes.
    """
    x = (before - after) / 1000.0
    sigmoid = 1.0 / (1.0 + math.exp(-x))
    return int(sigmoid * float(MAX_SCORE))


def score_fgd(view: NodeView, request: Request, workload: TargetWorkload) -> tuple[int, int]:
    """Score the fragmentation gradient of placing the request on the node.

    For a share every fitting device is tried and the best (lowest index on ties) is kept;
    whole devices are taken lowest index first (which ones does not change the score).

    Parameters
    ----------
    view
        The node.
    request
        The request.
    workload
        Target workload of the fragmentation measure.

    Returns
    -------
    tuple[int, int]
        The score and, for shares, the local device that gives it (-1 otherwise, and when
        no device fits).
    """
    model = view.gpu_model
    before = node_fragmentation(workload, view.cpu_free, model, view.gpu_free)
    cpu_after = view.cpu_free - request.cpu_milli
    after = list(view.gpu_free)
    if request.is_share:
        best_score, best_gpu = MIN_SCORE, -1
        for i, f in enumerate(view.gpu_free):
            if f < request.gpu_milli:
                continue
            after[i] = f - request.gpu_milli
            s = gradient_score(before, node_fragmentation(workload, cpu_after, model, after))
            after[i] = f
            if best_gpu < 0 or s > best_score:
                best_score, best_gpu = s, i
        return best_score, best_gpu
    if request.wants_gpu:
        need = request.num_gpu
        for i, f in enumerate(after):
            if need > 0 and f >= request.gpu_milli:
                after[i] = f - request.gpu_milli
                need -= 1
    return gradient_score(before, node_fragmentation(workload, cpu_after, model, after)), -1


def score_node(
    scorer: str, view: NodeView, request: Request, workload: TargetWorkload | None = None
) -> int:
    """Return one scorer's raw (un-normalised) score of a node, as ``Engine.score`` reports it.

    Parameters
    ----------
    scorer
        One of :data:`SCORERS`, or ``random`` (whose raw score is always 0).
    view
        The node (should pass :func:`filter_node`).
    request
        The request.
    workload
        Target workload; required by ``fgd``.

    Returns
    -------
    int
        The raw score.

    Raises
    ------
    ValueError
        For an unknown scorer, or ``fgd`` without a non-empty workload.
    """
    if scorer == "random":
        return MIN_SCORE
    if scorer == "dotprod":
        return score_dotprod(view, request)
    if scorer == "clustering":
        return score_clustering(view, request)
    if scorer == "packing":
        return score_packing(view, request)
    if scorer == "bestfit":
        return score_bestfit(view, request)
    if scorer == "worstfit":
        return score_worstfit(view, request)
    if scorer == "fgd":
        if workload is None or len(workload) == 0:
            raise ValueError("the fgd scorer needs a non-empty target workload")
        return score_fgd(view, request, workload)[0]
    raise ValueError(f"unknown scorer {scorer!r}")


def normalize_scores(scores: Sequence[int]) -> list[int]:
    """Min-max normalise scores to [0, 100] with integer arithmetic, as Kubernetes does.

    Parameters
    ----------
    scores
        Raw scores of the feasible nodes.

    Returns
    -------
    list[int]
        ``(s - lo) * 100 // (hi - lo)`` each; all 0 when every score is equal.
    """
    if not scores:
        return []
    hi, lo = max(scores), min(scores)
    span = hi - lo
    if span == 0:
        return [MIN_SCORE for _ in scores]
    return [trunc_div((s - lo) * (MAX_SCORE - MIN_SCORE), span) + MIN_SCORE for s in scores]


# --- GPU selection ---------------------------------------------------------------------------


def fitting_gpus(view: NodeView, request: Request) -> list[int]:
    """Return the local devices with at least the request's per-device share free.

    Parameters
    ----------
    view
        The node.
    request
        The request.

    Returns
    -------
    list[int]
        Device indices in increasing order.
    """
    return [i for i, f in enumerate(view.gpu_free) if f >= request.gpu_milli]


def pick_gpus(
    view: NodeView, request: Request, pick: str, workload: TargetWorkload | None = None
) -> list[int] | None:
    """Choose the devices a request takes on the chosen node.

    Whole devices are always the lowest-indexed fitting ones, whatever ``pick`` says. A
    share goes to the fitting device with the least free (``best``) or the most free
    (``worst``), lowest index on ties, or to the one :func:`score_fgd` reports (``fgd``).

    Parameters
    ----------
    view
        The node.
    request
        The request.
    pick
        ``best``, ``worst`` or ``fgd`` (``random`` is accepted only for whole devices).
    workload
        Target workload; required by ``fgd``.

    Returns
    -------
    list[int] | None
        Local device indices (empty when the request takes no GPU); None when the node
        cannot hold it (or ``fgd`` has no workload).

    Raises
    ------
    ValueError
        For an unknown pick, or ``random`` with a share (use :func:`fitting_gpus`).
    """
    if pick not in ("best", "worst", "random", "fgd"):
        raise ValueError(f"unknown GPU pick {pick!r}")
    if not request.wants_gpu:
        return []
    if not gpu_fits(view, request):
        return None
    fitting = fitting_gpus(view, request)
    if not request.is_share:
        return fitting[: request.num_gpu]
    free = view.gpu_free
    if pick == "best":
        return [min(fitting, key=lambda i: (free[i], i))]
    if pick == "worst":
        return [min(fitting, key=lambda i: (-free[i], i))]
    if pick == "random":
        raise ValueError("the random pick is not deterministic: check against fitting_gpus")
    if workload is None or len(workload) == 0:
        return None
    gpu = score_fgd(view, request, workload)[1]
    return [gpu] if gpu >= 0 else None


# --- The whole chain -------------------------------------------------------------------------


def dominant_rejection(codes: Sequence[str]) -> str:
    """Return the code reported when no node is feasible: the most frequent rejection.

    Parameters
    ----------
    codes
        Each node's filter code.

    Returns
    -------
    str
        The most frequent non-ok code (the earlier code on ties), ``no_feasible_node`` when
        there is none.
    """
    best, best_count = "no_feasible_node", 0
    for code in CODE_NAMES[1:6]:
        count = sum(1 for c in codes if c == code)
        if count > best_count:
            best, best_count = code, count
    return best


def score_totals(
    views: Sequence[NodeView],
    request: Request,
    scorers: Sequence[tuple[str, int]],
    workload: TargetWorkload | None = None,
) -> list[tuple[int, int]]:
    """Return the weighted total score of every feasible node.

    Each scorer's raw scores are computed over the feasible nodes, normalised for
    ``bestfit`` and ``worstfit``, multiplied by the scorer's weight and summed per node.

    Parameters
    ----------
    views
        Every node, in node order.
    request
        The request.
    scorers
        ``(scorer, weight)`` pairs (no ``random``).
    workload
        Target workload; required by ``fgd``.

    Returns
    -------
    list[tuple[int, int]]
        ``(node, total)`` of the feasible nodes, in node order.

    Raises
    ------
    ValueError
        For the ``random`` scorer or an unknown one.
    """
    feasible = [n for n, v in enumerate(views) if filter_node(v, request) == "ok"]
    total = [0] * len(feasible)
    for scorer, weight in scorers:
        if scorer not in SCORERS:
            raise ValueError(f"scorer {scorer!r} has no deterministic reference twin")
        part = [score_node(scorer, views[n], request, workload) for n in feasible]
        if scorer in NORMALIZED_SCORERS:
            part = normalize_scores(part)
        total = [t + weight * p for t, p in zip(total, part, strict=True)]
    return list(zip(feasible, total, strict=True))


def select_node(
    views: Sequence[NodeView],
    request: Request,
    scorers: Sequence[tuple[str, int]],
    tie_rank: Sequence[int],
    workload: TargetWorkload | None = None,
) -> int:
    """Choose the node for a request with rank tie-breaking (the engine's ``TieBreak::kRank``).

    Filter every node; score the feasible ones (:func:`score_totals`); take the highest
    total, the lowest rank on ties.

    Parameters
    ----------
    views
        Every node, in node order.
    request
        The request.
    scorers
        ``(scorer, weight)`` pairs (no ``random``).
    tie_rank
        The engine's per-node rank (``Engine.tie_rank``).
    workload
        Target workload; required by ``fgd``.

    Returns
    -------
    int
        The chosen node, -1 when no node is feasible.

    Raises
    ------
    ValueError
        For the ``random`` scorer or an unknown one.
    """
    totals = score_totals(views, request, scorers, workload)
    if not totals:
        return -1
    return max(totals, key=lambda nt: (nt[1], -tie_rank[nt[0]]))[0]


def place(
    views: Sequence[NodeView],
    request: Request,
    scorers: Sequence[tuple[str, int]],
    pick: str,
    tie_rank: Sequence[int],
    workload: TargetWorkload | None = None,
) -> tuple[str, int, list[int]]:
    """Predict ``Engine.place`` (rank tie-break, deterministic scorers and picks).

    Nothing is changed; apply the result with :func:`allocate`.

    Parameters
    ----------
    views
        Every node, in node order.
    request
        The request.
    scorers
        ``(scorer, weight)`` pairs (no ``random``).
    pick
        GPU pick (``best``, ``worst`` or ``fgd``; ``random`` only for requests without shares).
    tie_rank
        The engine's per-node rank (``Engine.tie_rank``).
    workload
        Target workload; required by ``fgd``.

    Returns
    -------
    tuple[str, int, list[int]]
        The status code, the node (-1 when not placed) and the local devices taken.
    """
    if not request_is_valid(request):
        return "invalid_argument", -1, []
    codes = [filter_node(v, request) for v in views]
    if "ok" not in codes:
        return dominant_rejection(codes), -1, []
    n = select_node(views, request, scorers, tie_rank, workload)
    gpus = pick_gpus(views[n], request, pick, workload)
    if gpus is None:
        return "insufficient_gpu", -1, []
    return "ok", n, gpus
