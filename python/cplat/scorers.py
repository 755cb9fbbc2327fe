"""Placement scorers written in Python, compiled by numba into native callbacks.

A scorer is a Python function ``score(node, state, request) -> int`` over the cluster's node
state arrays. :func:`scorer` compiles it with numba (``cfunc``, no Python objects) into a C
function that the native engine calls once per feasible node through a function pointer, in
its placement loop and without the GIL. It sees what the built-in scorers see:

``node``
    The node id (int64).
``state``
    A :class:`NodeState` of read-only arrays (writing to them does not compile).
``request``
    A :class:`Request` of int64 amounts.

Higher scores are better. Scores are cached per (request shape, node version), as the
built-in ones are, so a scorer must depend only on ``node``'s entries and the request; results
are clamped to ``[-(2**31 - 1), 2**31 - 1]``. Array indices are not bounds-checked. numba is an
optional dependency: ``pip install 'cplat[research]'``.

Examples
--------
>>> @cplat.scorer(normalize=True)
... def fullest(node, state, request):
...     return -(state.cpu_free[node] - request.cpu_milli)
>>> profile = cplat.scorers.profile(fullest)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from cplat.profile import Profile

_I64 = npt.NDArray[np.int64]
_I32 = npt.NDArray[np.int32]

#: The extra that installs numba.
EXTRA = "research"


class NodeState(NamedTuple):
    """The cluster's node columns as a scorer sees them (read-only, indexed by node id).

    ``gpu_free`` holds every device's free milli-GPU, node ``n``'s devices being
    ``gpu_free[gpu_begin[n]:gpu_begin[n + 1]]``; ``kind_count[n, k]`` counts the tasks on node
    ``n`` holding a GPU share (``k = 0``) or ``k`` whole GPUs.
    """

    cpu_capacity: _I64
    cpu_free: _I64
    memory_capacity: _I64
    memory_free: _I64
    gpu_model: _I32
    gpu_begin: _I32
    gpu_free: _I32
    gpu_free_total: _I32
    gpu_whole_free: _I32
    gpu_max_free: _I32
    kind_count: _I32
    kinds_present: _I32


class Request(NamedTuple):
    """The task shape being placed (``models``: the GPU-model mask's bits as int64)."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    models: int


#: GPU kinds per node in ``NodeState.kind_count`` (shared, then 1..16 whole GPUs).
GPU_KIND_SLOTS = 17


@dataclass(frozen=True, eq=False)
class Scorer:
    """A compiled scorer: what a :class:`~cplat.profile.Profile` takes in place of a name.

    Holding this object keeps the compiled code (and so ``address``) alive; profiles and
    engines built from it hold it.

    Parameters
    ----------
    name
        The Python function's name (for messages and result files).
    address
        Address of the native callback (the engine's ``ExternalScoreFn`` signature).
    normalize
        Whether raw scores are min-max normalised over the feasible nodes before weighting
        (as the built-in ``bestfit`` and ``worstfit`` are).
    pyfunc
        The undecorated Python function.
    """

    name: str
    address: int
    normalize: bool
    pyfunc: Callable[..., int]
    owner: object  # the numba cfunc that owns the machine code at ``address``

    def __repr__(self) -> str:
        return f"<cplat scorer {self.name} at {self.address:#x}>"


def _numba() -> Any:
    try:
        return importlib.import_module("numba")
    except ImportError as e:
        raise ImportError(
            f"cplat.scorer compiles Python scorers with numba, which is not installed: "
            f"pip install 'cplat[{EXTRA}]' (or pip install 'numba>=0.59')"
        ) from e


@functools.cache
def _parts() -> SimpleNamespace:
    """Return numba types and helpers, built once on first use (numba is imported lazily)."""
    numba = _numba()
    types = numba.types
    extending = importlib.import_module("numba.extending")
    imputils = importlib.import_module("numba.core.imputils")

    def readonly_typer(typingctx: Any, arr: Any) -> Any:
        sig = arr.copy(readonly=True)(arr)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            # A read-only view has the same data model: only the type changes, so the user's
            # function cannot write into the engine's columns (refused when it compiles).
            return imputils.impl_ret_borrowed(context, builder, signature.return_type, args[0])

        return sig, codegen

    readonly_typer.__name__ = "_cplat_readonly"
    readonly = extending.intrinsic(readonly_typer)

    def ro(dtype: Any, ndim: int) -> Any:
        return types.Array(dtype, ndim, "C", readonly=True)

    i64, i32 = types.int64, types.int32
    state_t = types.NamedTuple(
        (ro(i64, 1),) * 4 + (ro(i32, 1),) * 6 + (ro(i32, 2), ro(i32, 1)), NodeState
    )
    request_t = types.NamedUniTuple(i64, 5, Request)
    p64, p32 = types.CPointer(i64), types.CPointer(i32)
    c_sig = i64(i64, i64, i64, p64, p64, p64, p64, p32, p32, p32, p32, p32, p32, p32, p32, p64)
    return SimpleNamespace(
        numba=numba,
        readonly=readonly,
        args=(i64, state_t, request_t),
        c_sig=c_sig,
        errors=importlib.import_module("numba.core.errors"),
        types=types,
    )


def _check_signature(fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise TypeError(f"a scorer must be a Python function, got {fn!r}") from e
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 3 or any(p.kind not in positional for p in params):
        raise TypeError(
            f"scorer {fn.__name__!r} must take exactly (node, state, request), "
            f"got {fn.__name__}{sig}"
        )


def _compile(fn: Callable[..., int], normalize: bool) -> Scorer:
    _check_signature(fn)
    parts = _parts()
    numba, types = parts.numba, parts.types
    name = getattr(fn, "__name__", "scorer")
    try:
        jitted = numba.njit(parts.args)(fn)
    except parts.errors.NumbaError as e:
        first = str(e).strip().splitlines()
        raise TypeError(
            f"scorer {name!r} does not compile for (node: int64, state: NodeState, "
            f"request: Request): {' '.join(first[:6])}"
        ) from e
    returns = jitted.nopython_signatures[0].return_type
    if not isinstance(returns, (types.Integer, types.Boolean)):
        raise TypeError(
            f"scorer {name!r} must return an integer score, it returns {returns} "
            "(truncate explicitly, e.g. int(x))"
        )
    carray, readonly = numba.carray, parts.readonly

    def callback(node, num_nodes, num_gpus, cc, cf, mc, mf, gm, gb, gf, gft, gwf, gmf, kc, kp, rq):  # type: ignore[no-untyped-def]  # noqa: E501
        state = NodeState(
            readonly(carray(cc, num_nodes)),
            readonly(carray(cf, num_nodes)),
            readonly(carray(mc, num_nodes)),
            readonly(carray(mf, num_nodes)),
            readonly(carray(gm, num_nodes)),
            readonly(carray(gb, num_nodes + 1)),
            readonly(carray(gf, num_gpus)),
            readonly(carray(gft, num_nodes)),
            readonly(carray(gwf, num_nodes)),
            readonly(carray(gmf, num_nodes)),
            readonly(carray(kc, (num_nodes, GPU_KIND_SLOTS))),
            readonly(carray(kp, num_nodes)),
        )
        request = Request(rq[0], rq[1], rq[2], rq[3], rq[4])
        return jitted(node, state, request)

    compiled = numba.cfunc(parts.c_sig, nopython=True)(callback)
    return Scorer(
        name=name, address=int(compiled.address), normalize=normalize, pyfunc=fn, owner=compiled
    )


@overload
def scorer(fn: Callable[..., int], /) -> Scorer: ...
@overload
def scorer(*, normalize: bool = False) -> Callable[[Callable[..., int]], Scorer]: ...
def scorer(
    fn: Callable[..., int] | None = None, /, *, normalize: bool = False
) -> Scorer | Callable[[Callable[..., int]], Scorer]:
    """Compile ``fn(node, state, request) -> int`` into a native scorer.

    Use as ``@cplat.scorer`` or ``@cplat.scorer(normalize=True)``.

    Parameters
    ----------
    fn
        The scorer: ``node`` (int64), ``state`` (:class:`NodeState`), ``request``
        (:class:`Request`); returns an integer, higher is better.
    normalize
        Min-max normalise the raw scores over the feasible nodes before weighting.

    Returns
    -------
    Scorer
        A handle a :class:`~cplat.profile.Profile` accepts in place of a scorer name.

    Raises
    ------
    ImportError
        When numba is not installed (the message names the ``research`` extra).
    TypeError
        When ``fn`` does not take ``(node, state, request)``, does not compile for those
        types (e.g. writes to the state) or does not return an integer.
    """
    if fn is None:
        return lambda f: _compile(f, normalize)
    return _compile(fn, normalize)


def profile(
    s: Scorer,
    *,
    name: str | None = None,
    gpu_pick: str = "best",
    tie_break: str = "rank",
) -> Profile:
    """Return a single-scorer profile around ``s`` (weighted as the named policies are)."""
    from cplat.profile import SINGLE_SCORER_WEIGHT, Profile  # cplat.profile imports this module

    label = name or s.name
    return Profile(label, label, ((s, SINGLE_SCORER_WEIGHT),), gpu_pick, tie_break)
