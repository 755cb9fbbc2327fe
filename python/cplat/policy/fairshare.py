"""Queue-sort plugins: multifactor priority, fair share and dominant resource fairness.

These implement :class:`cplat.scheduler.QueueSort`: the scheduler registers the jobs, tells
the plugin when they start and finish, and asks for the pending jobs' priorities before every
cycle (higher starts first; use them with the ``priority`` queue order). Everything per cycle
is vectorised over the pending array; per-account and per-user bookkeeping lives in NumPy
arrays indexed by account (user) id.

Accounts and users
    A job's *account* is its ``group`` (or, with ``account="queue"``/``"user"``, its ``queue``
    or ``user`` string); its *user* is ``user`` within that account. The tree is two levels
    deep: root, accounts, users.

Usage
    A running job consumes resources at a rate equal to its weighted share of the cluster,
    ``sum_r w_r * alloc_r / capacity_r / sum_r w_r`` over the resources (CPU, memory, GPU) the
    cluster has, so a job holding the whole cluster has rate 1 and usage is measured in
    "cluster-seconds". Usage decays exponentially with half-life ``half_life``; between events
    it is integrated exactly (``dU/dt = rate - ln 2 / half_life * U``), so the result does not
    depend on how often the plugin is asked.

Fair-share factor
    The classic Slurm formula (not fair-tree): ``F = 2 ** (-U_eff / S)`` in ``(0, 1]``, where
    ``S`` is the user's normalised share (its account's share of the sum of all account shares,
    split equally between the account's users) and ``U_eff`` its effective usage: for an
    account, its share of all decayed usage; for a user ``U_eff = U_user + (U_account -
    U_user) * s_local`` with ``s_local = 1 / users in the account`` (Slurm's inheritance of the
    parent's usage). ``F = 1`` without usage, ``0.5`` when usage equals the share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cplat.errors import InputError
from cplat.model import NodeTable
from cplat.scheduler import JobColumns, QueueSort

__all__ = [
    "DRF",
    "QUEUE_SORTS",
    "FairShare",
    "MultifactorPriority",
    "PastUsage",
    "UsageSnapshot",
    "make_queue_sort",
    "parse_queue_sort_spec",
]

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

RESOURCES = ("cpu", "memory", "gpu")
ACCOUNT_KEYS = ("group", "queue", "user")
DAY = 86_400


@dataclass(frozen=True)
class UsageSnapshot:
    """Decayed usage by name at ``clock``: what outlives a plugin (see ``_Accounting.load``)."""

    clock: int
    accounts: dict[str, float]
    users: dict[tuple[str, str], float]


@dataclass(frozen=True)
class PastUsage:
    """Work that ran before the plugin existed (a finished job, found again after a restart).

    ``demand`` is what the whole job held (milli-CPU, MiB, milli-GPU), from ``start`` to
    ``end`` (seconds, the scheduler's clock).
    """

    account: str
    user: str
    demand: tuple[float, float, float]
    start: int
    end: int


def _capacity(nodes: NodeTable) -> F64:
    """Cluster totals: CPU milli-cores, memory MiB, GPU milli-devices."""
    gpu = float((nodes.num_gpu.astype(np.int64) * 1000).sum())
    return np.asarray(
        [float(nodes.cpu_milli.sum()), float(nodes.memory_mib.sum()), gpu], dtype=np.float64
    )


def _grow(arr: npt.NDArray[Any], n: int, fill: float | int = 0) -> npt.NDArray[Any]:
    """Return ``arr`` extended to at least ``n`` rows (new rows set to ``fill``)."""
    if len(arr) >= n:
        return arr
    extra = np.full((n - len(arr), *arr.shape[1:]), fill, dtype=arr.dtype)
    return np.concatenate([arr, extra])


class _Accounting:
    """Jobs, accounts, users and decayed usage shared by the plugins (not public)."""

    def __init__(
        self,
        nodes: NodeTable,
        *,
        queues: Mapping[int, str] | None = None,
        account: str = "group",
        half_life: float = 7 * DAY,
        shares: Mapping[str, float] | None = None,
        resource_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.capacity = _capacity(nodes)
        weights = {"cpu": 1.0, "memory": 0.0, "gpu": 1.0}
        weights.update(resource_weights or {})
        w = np.asarray([weights[r] for r in RESOURCES], dtype=np.float64)
        w[self.capacity <= 0] = 0.0  # resources the cluster does not have are ignored
        if w.sum() <= 0:
            raise InputError(
                "resource_weights give no weight to a resource the cluster has",
                field="resource_weights",
            )
        self._weight = w / w.sum()
        self.account_key = account
        self.half_life = float(half_life)
        self._shares_cfg = dict(shares or {})
        self._queues = dict(queues or {})
        # Per job (scheduler index).
        self.account = np.zeros(0, dtype=np.int32)
        self.user = np.zeros(0, dtype=np.int32)
        self.submit = np.zeros(0, dtype=np.int64)
        self.demand = np.zeros((0, 3), dtype=np.float64)  # cpu, memory, gpu of the whole job
        self.rate = np.zeros(0, dtype=np.float64)  # weighted share of the cluster
        self.queue = np.zeros(0, dtype=np.int32)  # id into self.queue_names
        self.running = np.zeros(0, dtype=bool)
        # Accounts and users.
        self.account_names: list[str] = []
        self._account_id: dict[str, int] = {}
        self.user_names: list[tuple[str, str]] = []
        self._user_id: dict[tuple[str, str], int] = {}
        self.user_account = np.zeros(0, dtype=np.int32)
        self.queue_names: list[str] = []
        self._queue_id: dict[str, int] = {}
        self.account_usage = np.zeros(0, dtype=np.float64)
        self.user_usage = np.zeros(0, dtype=np.float64)
        self.account_rate = np.zeros(0, dtype=np.float64)
        self.user_rate = np.zeros(0, dtype=np.float64)
        # When each user first submitted: shares are divided among the users (and accounts)
        # that have appeared by the clock, whether the jobs were all known up front (a
        # replayed trace) or arrive one by one (the live service).
        self.user_since = np.zeros(0, dtype=np.float64)
        self.account_alloc = np.zeros((0, 3), dtype=np.float64)  # running resources
        self.account_share = np.zeros(0, dtype=np.float64)  # configured (raw) shares
        self._clock: int | None = None
        for name in self._shares_cfg:
            self._account(name)

    # --- registration ------------------------------------------------------------------

    def _account(self, name: str) -> int:
        a = self._account_id.get(name)
        if a is None:
            a = self._account_id[name] = len(self.account_names)
            self.account_names.append(name)
            n = a + 1
            self.account_usage = _grow(self.account_usage, n)
            self.account_rate = _grow(self.account_rate, n)
            self.account_alloc = _grow(self.account_alloc, n)
            self.account_share = _grow(self.account_share, n, self._shares_cfg.get(name, 1.0))
        return a

    def _user(self, account: str, user: str) -> int:
        key = (account, user)
        u = self._user_id.get(key)
        if u is None:
            u = self._user_id[key] = len(self.user_names)
            self.user_names.append(key)
            n = u + 1
            self.user_usage = _grow(self.user_usage, n)
            self.user_rate = _grow(self.user_rate, n)
            self.user_since = _grow(self.user_since, n, math.inf)
            self.user_account = _grow(self.user_account, n, self._account(account))
        return u

    def _queue(self, name: str) -> int:
        q = self._queue_id.get(name)
        if q is None:
            q = self._queue_id[name] = len(self.queue_names)
            self.queue_names.append(name)
        return q

    def add_jobs(self, jobs: JobColumns, index: I32) -> None:
        """Learn about newly registered jobs (``index`` are their scheduler indices)."""
        if len(index) == 0:
            return
        n = int(index.max()) + 1
        self.account = _grow(self.account, n)
        self.user = _grow(self.user, n)
        self.submit = _grow(self.submit, n)
        self.demand = _grow(self.demand, n)
        self.rate = _grow(self.rate, n)
        self.queue = _grow(self.queue, n)
        self.running = _grow(self.running, n, False)
        queue_text = [self._queues.get(int(j), "") for j in jobs.job_id.tolist()]
        if self.account_key == "group":
            acc_text = list(jobs.group)
        elif self.account_key == "user":
            acc_text = list(jobs.user)
        else:
            acc_text = queue_text
        pairs = [f"{a}\x00{u}" for a, u in zip(acc_text, jobs.user, strict=True)]
        uniq, inv = np.unique(np.asarray(pairs, dtype=object), return_inverse=True)
        uid = np.asarray([self._user(*str(p).split("\x00", 1)) for p in uniq], dtype=np.int32)
        self.user[index] = uid[inv.ravel()]
        self.account[index] = self.user_account[self.user[index]]
        quniq, qinv = np.unique(np.asarray(queue_text, dtype=object), return_inverse=True)
        qid = np.asarray([self._queue(str(q)) for q in quniq], dtype=np.int32)
        self.queue[index] = qid[qinv.ravel()]
        self.submit[index] = jobs.submit
        np.minimum.at(self.user_since, self.user[index], jobs.submit.astype(np.float64))
        tasks = jobs.num_tasks.astype(np.float64)
        gpu = jobs.num_gpu.astype(np.float64) * jobs.gpu_milli.astype(np.float64)
        demand = np.stack(
            [tasks * jobs.cpu_milli, tasks * jobs.memory_mib, tasks * gpu], axis=1
        ).astype(np.float64)
        self.demand[index] = demand
        self.rate[index] = self.cluster_fraction(demand)

    def cluster_fraction(self, demand: F64) -> F64:
        """Weighted share of the cluster that resources ``demand`` (rows: cpu, memory, gpu) take."""
        cap = np.where(self.capacity > 0, self.capacity, 1.0)
        return np.asarray(np.minimum(demand / cap, 1.0) @ self._weight, dtype=np.float64)

    # --- usage -------------------------------------------------------------------------

    def advance(self, now: int) -> None:
        """Integrate usage (with decay) from the last event to ``now``."""
        if self._clock is None:
            self._clock = now
            return
        dt = float(now - self._clock)
        if dt <= 0:
            return
        self._clock = now
        if self.half_life > 0:
            lam = math.log(2.0) / self.half_life
            keep = math.exp(-lam * dt)
            gain = -math.expm1(-lam * dt) / lam
        else:
            keep, gain = 1.0, dt
        self.account_usage *= keep
        self.account_usage += gain * self.account_rate
        self.user_usage *= keep
        self.user_usage += gain * self.user_rate

    def on_start(self, jobs: I32, now: int) -> None:
        """Jobs started at ``now``: their resources count as usage from now on."""
        self.advance(now)
        jobs = jobs[~self.running[jobs]]
        self.running[jobs] = True
        self._charge(jobs, 1.0)

    def on_finish(self, jobs: I32, now: int) -> None:
        """Jobs finished (or were stopped) at ``now``; jobs not running are ignored."""
        self.advance(now)
        jobs = np.unique(jobs[self.running[jobs]])
        self.running[jobs] = False
        self._charge(jobs, -1.0)

    def _charge(self, jobs: I32, sign: float) -> None:
        np.add.at(self.account_rate, self.account[jobs], sign * self.rate[jobs])
        np.add.at(self.user_rate, self.user[jobs], sign * self.rate[jobs])
        np.add.at(self.account_alloc, self.account[jobs], sign * self.demand[jobs])
        if sign < 0:  # keep exact zeros from drifting negative
            np.maximum(self.account_rate, 0.0, out=self.account_rate)
            np.maximum(self.user_rate, 0.0, out=self.user_rate)
            np.maximum(self.account_alloc, 0.0, out=self.account_alloc)

    # --- live service: history, carrying usage over, report ------------------------------

    def snapshot(self, now: int) -> UsageSnapshot:
        """Return the decayed usage at ``now`` by account and user name (see :meth:`load`)."""
        self.advance(now)
        clock = now if self._clock is None else self._clock
        return UsageSnapshot(
            clock=clock,
            accounts={n: float(self.account_usage[i]) for i, n in enumerate(self.account_names)},
            users={k: float(self.user_usage[i]) for i, k in enumerate(self.user_names)},
        )

    def load(self, snapshot: UsageSnapshot) -> None:
        """Take over another plugin's decayed usage (a scheduler rebuilt around new nodes).

        Usage is kept by name; rates are not (the running jobs are charged again as they are
        restored). The clock moves to the snapshot's.
        """
        # The index first: registering a name grows (replaces) the arrays.
        for name, value in snapshot.accounts.items():
            a = self._account(name)
            self.account_usage[a] = value
        for (account, user), value in snapshot.users.items():
            u = self._user(account, user)
            self.user_usage[u] = value
            self.user_since[u] = min(self.user_since[u], snapshot.clock)
        if self._clock is None or snapshot.clock > self._clock:
            self._clock = snapshot.clock

    def add_history(self, past: PastUsage, now: int) -> None:
        """Charge work that ran from ``past.start`` to ``past.end`` as decayed usage at ``now``.

        A job of rate ``r`` that ran over ``[s, e]`` leaves ``r * integral_s^e exp(-l (now -
        t)) dt`` of usage at ``now`` (``l = ln 2 / half_life``; without decay ``r (e - s)``):
        what :meth:`advance` would have integrated had the plugin watched it run. Intervals
        are clipped to end at ``now``.
        """
        self.advance(now)
        end = min(past.end, now)
        if end <= past.start:
            return
        demand = np.asarray([past.demand], dtype=np.float64)
        rate = float(self.cluster_fraction(demand)[0])
        if self.half_life > 0:
            lam = math.log(2.0) / self.half_life
            amount = (
                rate / lam * (math.exp(-lam * (now - end)) - math.exp(-lam * (now - past.start)))
            )
        else:
            amount = rate * (end - past.start)
        u = self._user(past.account, past.user)
        self.user_usage[u] += amount
        self.user_since[u] = min(self.user_since[u], past.start)
        self.account_usage[self.user_account[u]] += amount

    def report(self, now: int) -> list[dict[str, Any]]:
        """Return per account its usage and fair-share standing at ``now``.

        Each row: ``account``, ``usage`` (decayed cluster-seconds), ``usage_share`` (of all
        accounts' usage), ``share`` (configured, normalised), ``factor`` (the account's
        fair-share factor ``2 ** (-usage_share / share)``) and ``running`` (milli-CPU, MiB,
        milli-GPU its running jobs hold).
        """
        self.advance(now)
        total = float(self.account_usage.sum())
        _, shares = self._active()
        factor = self.account_fairshare()
        out = []
        for i, name in enumerate(self.account_names):
            out.append(
                {
                    "account": name,
                    "usage": float(self.account_usage[i]),
                    "usage_share": float(self.account_usage[i]) / total if total > 0 else 0.0,
                    "share": float(shares[i]),
                    "factor": float(factor[i]),
                    "running": [int(v) for v in self.account_alloc[i]],
                }
            )
        return out

    def _active(self) -> tuple[npt.NDArray[np.bool_], F64]:
        """Users that have appeared by the clock, and the normalised shares of the accounts.

        An account counts once one of its users has appeared, or from the start where its
        share is configured.
        """
        clock = math.inf if self._clock is None else float(self._clock)
        users = self.user_since <= clock
        n_acc = len(self.account_names)
        counted = np.bincount(self.user_account[users], minlength=n_acc) > 0
        counted |= np.asarray([n in self._shares_cfg for n in self.account_names], dtype=bool)
        share = np.where(counted, self.account_share, 0.0)
        return users, share / max(float(share.sum()), 1e-300)

    def user_fairshare(self) -> F64:
        """Fair-share factor ``2 ** (-U_eff / S)`` of every user (see the module docstring)."""
        total = float(self.account_usage.sum())
        n_acc = len(self.account_names)
        if total <= 0:
            return np.ones(len(self.user_names), dtype=np.float64)
        acc_u = self.account_usage / total
        user_u = self.user_usage / total
        active, acc_s = self._active()
        users_per_acc = np.bincount(self.user_account[active], minlength=n_acc).astype(np.float64)
        local = 1.0 / np.maximum(users_per_acc[self.user_account], 1.0)
        user_s = acc_s[self.user_account] * local
        eff = user_u + (acc_u[self.user_account] - user_u) * local
        with np.errstate(divide="ignore", over="ignore"):
            f = np.exp2(-eff / np.where(user_s > 0, user_s, 1e-300))
        return np.asarray(f, dtype=np.float64)

    def account_fairshare(self) -> F64:
        """Fair-share factor ``2 ** (-U / S)`` of every account."""
        total = float(self.account_usage.sum())
        if total <= 0:
            return np.ones(len(self.account_names), dtype=np.float64)
        _, s = self._active()
        with np.errstate(divide="ignore", over="ignore"):
            f = np.exp2(-(self.account_usage / total) / np.where(s > 0, s, 1e-300))
        return np.asarray(f, dtype=np.float64)


class MultifactorPriority(_Accounting):
    """Slurm-style multifactor priority.

    ``priority = w_age * age + w_fairshare * fairshare + w_size * size + w_qos * qos``, every
    factor in ``[0, 1]``: ``age = min(wait / max_age, 1)``; ``fairshare`` the user's classic
    Slurm factor (module docstring); ``size`` the job's weighted share of the cluster
    (``favor="large"``) or one minus it (``favor="small"``); ``qos`` looked up from the job's
    ``queue`` string in ``qos`` (``qos_default`` for others).

    Parameters
    ----------
    nodes
        The cluster (capacities per resource).
    queues
        Job id to ``queue`` string (from the job table); missing ids have queue ``""``.
    account
        Which job column names the account: ``group``, ``queue`` or ``user``.
    half_life
        Usage half-life in seconds (0: no decay).
    shares
        Raw shares per account (default 1 each); normalised over all known accounts.
    resource_weights
        Weights of ``cpu``, ``memory`` and ``gpu`` in a job's usage rate and size
        (default 1, 0, 1).
    w_age, w_fairshare, w_size, w_qos
        Factor weights (non-negative).
    max_age
        Wait (seconds) at which the age factor saturates.
    favor
        ``small`` or ``large`` jobs in the size factor.
    qos, qos_default
        QoS factor per queue string, and for queues not listed (values in ``[0, 1]``).
    """

    def __init__(
        self,
        nodes: NodeTable,
        *,
        queues: Mapping[int, str] | None = None,
        account: str = "group",
        half_life: float = 7 * DAY,
        shares: Mapping[str, float] | None = None,
        resource_weights: Mapping[str, float] | None = None,
        w_age: float = 1.0,
        w_fairshare: float = 1.0,
        w_size: float = 0.0,
        w_qos: float = 1.0,
        max_age: float = 7 * DAY,
        favor: str = "small",
        qos: Mapping[str, float] | None = None,
        qos_default: float = 0.0,
    ) -> None:
        super().__init__(
            nodes,
            queues=queues,
            account=account,
            half_life=half_life,
            shares=shares,
            resource_weights=resource_weights,
        )
        self.w_age, self.w_fairshare, self.w_size, self.w_qos = w_age, w_fairshare, w_size, w_qos
        self.max_age = float(max_age)
        self.favor = favor
        self.qos_map = dict(qos or {})
        self.qos_default = float(qos_default)

    def factors(self, pending: I32, now: int) -> dict[str, F64]:
        """Return each factor (``age``, ``fairshare``, ``size``, ``qos``) of the pending jobs."""
        self.advance(now)
        wait = np.maximum(now - self.submit[pending], 0).astype(np.float64)
        age = np.minimum(wait / self.max_age, 1.0)
        fs = self.user_fairshare()[self.user[pending]]
        size = np.clip(self.rate[pending], 0.0, 1.0)
        if self.favor == "small":
            size = 1.0 - size
        qtab = np.asarray(
            [self.qos_map.get(q, self.qos_default) for q in self.queue_names], dtype=np.float64
        )
        qos = qtab[self.queue[pending]] if len(qtab) else np.zeros(len(pending))
        return {"age": age, "fairshare": fs, "size": size, "qos": qos}

    def priorities(self, pending: I32, now: int) -> F64:
        """Return the weighted sum of the factors for the pending jobs at ``now``."""
        f = self.factors(pending, now)
        return np.asarray(
            self.w_age * f["age"]
            + self.w_fairshare * f["fairshare"]
            + self.w_size * f["size"]
            + self.w_qos * f["qos"],
            dtype=np.float64,
        )


class FairShare(_Accounting):
    """Fair share alone: ``priority = F + tie * min(wait / max_age, 1)``.

    ``F`` is the user's classic Slurm fair-share factor (module docstring); the small age term
    (``tie``) only orders jobs of equal ``F``, older first.

    Parameters
    ----------
    nodes, queues, account, half_life, shares, resource_weights
        As for :class:`MultifactorPriority`.
    max_age
        Wait (seconds) at which the tie-breaking age term saturates.
    tie
        Weight of the age term (small, so that it never overrides a fair-share difference
        larger than it).
    """

    def __init__(
        self,
        nodes: NodeTable,
        *,
        queues: Mapping[int, str] | None = None,
        account: str = "group",
        half_life: float = 7 * DAY,
        shares: Mapping[str, float] | None = None,
        resource_weights: Mapping[str, float] | None = None,
        max_age: float = 7 * DAY,
        tie: float = 1e-6,
    ) -> None:
        super().__init__(
            nodes,
            queues=queues,
            account=account,
            half_life=half_life,
            shares=shares,
            resource_weights=resource_weights,
        )
        self.max_age = float(max_age)
        self.tie = float(tie)

    def priorities(self, pending: I32, now: int) -> F64:
        """Return the pending jobs' fair-share factors (plus the tie-breaking age term)."""
        self.advance(now)
        wait = np.maximum(now - self.submit[pending], 0).astype(np.float64)
        age = np.minimum(wait / self.max_age, 1.0)
        return np.asarray(self.user_fairshare()[self.user[pending]] + self.tie * age)


class DRF(_Accounting):
    """Dominant resource fairness across CPU, memory and GPU.

    ``priority = -max_r (alloc[account, r] + ahead[r] + job[r]) / capacity[r]`` over the
    resources the cluster has: the account whose dominant share, counting what the job would
    add, is lowest goes first (Ghodsi et al., NSDI 2011). ``alloc`` is what the account's
    running jobs hold now (no history) and ``ahead`` what its older pending jobs ask for, so
    one cycle's fixed priorities interleave the accounts as DRF's progressive filling would
    (see :meth:`dominant_shares`). Ties: older first, through a ``tie`` weighted age term.

    Parameters
    ----------
    nodes, queues, account
        As for :class:`MultifactorPriority`.
    max_age, tie
        As for :class:`FairShare`.
    """

    def __init__(
        self,
        nodes: NodeTable,
        *,
        queues: Mapping[int, str] | None = None,
        account: str = "group",
        max_age: float = 7 * DAY,
        tie: float = 1e-6,
    ) -> None:
        super().__init__(nodes, queues=queues, account=account, half_life=0.0)
        self.max_age = float(max_age)
        self.tie = float(tie)

    def dominant_shares(self, pending: I32) -> F64:
        """Dominant share of each pending job's account once it and the account's older jobs run.

        Pending jobs of one account are taken oldest first (submit time, then index); the
        ``k``-th one's share counts the account's running jobs plus the ``k`` pending ones up
        to and including it: DRF's progressive filling, computed once per cycle.
        """
        have = self.capacity > 0
        if len(pending) == 0 or not have.any():
            return np.zeros(len(pending), dtype=np.float64)
        acc = self.account[pending]
        order = np.lexsort((pending, self.submit[pending], acc))
        demand = self.demand[pending[order]][:, have]
        total = np.cumsum(demand, axis=0)
        acc_sorted = acc[order]
        first = np.r_[True, acc_sorted[1:] != acc_sorted[:-1]]
        starts = np.flatnonzero(first)
        before = np.zeros_like(total)
        before[starts[1:]] = total[starts[1:] - 1]
        base = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        cumulative = total - before[base]
        after = self.account_alloc[acc_sorted][:, have] + cumulative
        share = np.empty(len(pending), dtype=np.float64)
        share[order] = (after / self.capacity[have]).max(axis=1)
        return share

    def report(self, now: int) -> list[dict[str, Any]]:
        """Return per account what :meth:`_Accounting.report` does, DRF's way.

        ``factor`` is the account's dominant share of the cluster now (lower goes first).
        """
        out = super().report(now)
        have = self.capacity > 0
        for row, alloc in zip(out, self.account_alloc, strict=True):
            dom = (alloc[have] / self.capacity[have]).max() if have.any() else 0.0
            row["factor"] = float(dom)
        return out

    def priorities(self, pending: I32, now: int) -> F64:
        """Return minus the dominant shares (plus the tie-breaking age term)."""
        wait = np.maximum(now - self.submit[pending], 0).astype(np.float64)
        age = np.minimum(wait / self.max_age, 1.0)
        return np.asarray(-self.dominant_shares(pending) + self.tie * age)


# --- factory ---------------------------------------------------------------------------

_COMMON = {
    "account": "name",
    "half_life": "seconds0",
    "shares": "weights",
    "resource_weights": "resources",
    "max_age": "seconds",
}
_SPECS: dict[str, dict[str, str]] = {
    "multifactor": {
        **_COMMON,
        "w_age": "weight",
        "w_fairshare": "weight",
        "w_size": "weight",
        "w_qos": "weight",
        "favor": "favor",
        "qos": "unit_map",
        "qos_default": "unit",
    },
    "fairshare": {**_COMMON, "tie": "weight"},
    "drf": {"account": "name", "max_age": "seconds", "tie": "weight"},
}
QUEUE_SORTS = tuple(_SPECS)
_CLASSES: dict[str, type[MultifactorPriority] | type[FairShare] | type[DRF]] = {
    "multifactor": MultifactorPriority,
    "fairshare": FairShare,
    "drf": DRF,
}


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"option {key} must be a finite number, got {value!r}", field=key)
    return float(value)


def _check(key: str, kind: str, value: object) -> object:
    """Validate one option value; returns it converted."""
    if kind == "name":
        if value not in ACCOUNT_KEYS:
            raise InputError(
                f"option account must be one of {', '.join(ACCOUNT_KEYS)}, got {value!r}",
                field=key,
            )
        return value
    if kind == "favor":
        if value not in ("small", "large"):
            raise InputError(f"option favor must be small or large, got {value!r}", field=key)
        return value
    if kind in ("weights", "unit_map", "resources"):
        if not isinstance(value, Mapping):
            raise InputError(f"option {key} must be a mapping of names to numbers", field=key)
        out: dict[str, float] = {}
        for name, v in value.items():
            x = _number(f"{key}.{name}", v)
            if kind == "resources" and name not in RESOURCES:
                raise InputError(
                    f"option {key}: unknown resource {name!r} (valid: {', '.join(RESOURCES)})",
                    field=f"{key}.{name}",
                )
            if x < 0 or (kind == "weights" and x <= 0) or (kind == "unit_map" and x > 1):
                bound = {"weights": "> 0", "unit_map": "in [0, 1]", "resources": ">= 0"}[kind]
                raise InputError(f"option {key}.{name} must be {bound}, got {x}", field=key)
            out[str(name)] = x
        return out
    x = _number(key, value)
    if kind == "seconds" and x <= 0:
        raise InputError(f"option {key} must be positive seconds, got {x}", field=key)
    if kind in ("seconds0", "weight") and x < 0:
        raise InputError(f"option {key} must be >= 0, got {x}", field=key)
    if kind == "unit" and not 0 <= x <= 1:
        raise InputError(f"option {key} must be in [0, 1], got {x}", field=key)
    return x


def make_queue_sort(
    name: str,
    nodes: NodeTable,
    jobs: pa.Table | None = None,
    options: Mapping[str, object] | None = None,
) -> QueueSort:
    """Build a queue-sort plugin by name.

    Parameters
    ----------
    name
        ``multifactor`` (:class:`MultifactorPriority`), ``fairshare`` (:class:`FairShare`) or
        ``drf`` (:class:`DRF`).
    nodes
        The cluster (resource capacities).
    jobs
        The canonical job table to be replayed; its ``queue`` column gives the QoS and the
        ``account="queue"`` accounts (without it every queue is ``""``).
    options
        Keyword options of the plugin's class (validated; see each class).

    Returns
    -------
    QueueSort
        The plugin, to pass as ``queue_sort=`` with the ``priority`` queue order.

    Raises
    ------
    InputError
        For an unknown name (listing the valid ones) or an unknown or invalid option (naming
        it in ``field``).
    """
    if name not in _SPECS:
        raise InputError(
            f"unknown queue sort {name!r} (valid: {', '.join(QUEUE_SORTS)})", field="queue_sort"
        )
    spec = _SPECS[name]
    kwargs: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in spec:
            raise InputError(
                f"unknown option {key!r} for queue sort {name} (valid: {', '.join(sorted(spec))})",
                field=key,
            )
        kwargs[key] = _check(key, spec[key], value)
    queues: dict[int, str] = {}
    if jobs is not None and "queue" in jobs.column_names:
        ids = jobs.column("job_id").to_pylist()
        queues = dict(zip(ids, jobs.column("queue").to_pylist(), strict=True))
    plugin: QueueSort = _CLASSES[name](nodes, queues=queues, **kwargs)
    return plugin


def _scalar(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_queue_sort_spec(spec: str) -> tuple[str, dict[str, object]]:
    """Split ``NAME[:key=value,...]`` into the name and an options dict.

    Numbers are converted; ``key.sub=value`` fills a mapping option, e.g.
    ``multifactor:account=queue,w_qos=2,qos.LS=1,qos.BE=0``.

    Raises
    ------
    InputError
        For an item that is not ``key=value``.
    """
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InputError(
                f"expected key=value in queue sort options, got {item!r}", field="--queue-sort"
            )
        if "." in key:
            top, sub = key.split(".", 1)
            inner = options.setdefault(top, {})
            if not isinstance(inner, dict):
                raise InputError(f"option {top} given both as a value and a mapping", field=top)
            inner[sub] = _scalar(value.strip())
        else:
            options[key] = _scalar(value.strip())
    return name.strip(), options
