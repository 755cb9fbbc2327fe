"""The ``Store`` interface: durable state of the live service.

Two real backends implement it: SQLite (WAL, the embedded default) and PostgreSQL (asyncpg).
Every mutation is durable (committed, synced) before its coroutine returns; backends may group
concurrent writes into one transaction (group commit). Times are wall-clock seconds since the
epoch (float). JSON-like fields (``spec``, ``placement``, ``detail``) are plain dicts/lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JOB_STATES = (
    "PENDING",
    "SCHEDULED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "PREEMPTED",
)
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
NODE_STATES = ("up", "down", "cordoned", "draining")


class StoreError(RuntimeError):
    """The store cannot do what was asked (connection lost, schema too new, ...)."""


@dataclass(frozen=True)
class NewJob:
    """A job as accepted by the API, before the store gives it an id."""

    project: str
    user: str
    name: str
    spec: dict[str, Any]
    submitted_at: float
    #: Id (``jti``) and expiry of the token that submitted the job: the job's own tokens are
    #: derived from it, never outlive it, and are revoked with it. Empty/None: not recorded.
    token_id: str = ""
    token_expires_at: float | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job as stored.

    ``placement`` holds one entry per task rank: ``{"node": name, "gpus": [local indices]}``
    (empty while not placed). ``attempt`` counts starts (0 before the first).
    """

    id: int
    project: str
    user: str
    name: str
    state: str
    spec: dict[str, Any]
    reason: str
    submitted_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    placement: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 0
    token_id: str = ""
    token_expires_at: float | None = None


@dataclass(frozen=True)
class JobChange:
    """Fields of one job to change (``None`` leaves a field alone), plus an optional event.

    ``clear`` names nullable fields to set to NULL (``started_at``, ``finished_at``,
    ``exit_code``). When ``event`` is given it is appended to the job's events in the same
    transaction, with ``state`` (the new state, or the current one) and this message.
    """

    id: int
    at: float
    state: str | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    placement: list[dict[str, Any]] | None = None
    attempt: int | None = None
    clear: tuple[str, ...] = ()
    event: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """One entry of a job's history."""

    id: int
    job_id: int
    at: float
    state: str
    message: str


@dataclass(frozen=True)
class LogChunk:
    """Output of one task (rank) of one attempt, as the agent sends it."""

    job_id: int
    attempt: int
    rank: int
    stream: str  # "stdout" or "stderr"
    data: str
    at: float


@dataclass(frozen=True)
class LogRecord:
    """A stored log chunk; ``seq`` orders chunks of a job."""

    seq: int
    job_id: int
    attempt: int
    rank: int
    stream: str
    data: str
    at: float


@dataclass(frozen=True)
class NodeRecord:
    """A node known to the service.

    ``spec`` is what the agent discovered: ``cpu_milli``, ``memory_mib``, ``gpus`` (a list of
    ``{"index", "uuid", "model", "memory_mib", "mig_mode", "nvlink_peers", "numa_node",
    "healthy", "reason"}``), ``rack``, ``spine``, ``hostname``, ``address``.
    """

    name: str
    state: str
    spec: dict[str, Any]
    labels: dict[str, str]
    registered_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class QuotaRecord:
    """A project's quota, per resource (milli-CPU, MiB, milli-GPU); ``pool`` is its cohort."""

    project: str
    nominal: tuple[int, int, int]
    borrowing_limit: tuple[int, int, int] = (0, 0, 0)
    lending_limit: tuple[int, int, int] | None = None
    pool: str = ""
    overcommit: float = 1.0


@dataclass(frozen=True)
class PoolRecord:
    """A resource pool: a cohort of the quota tree (``"org/research"``), optionally capped."""

    name: str
    borrowing_limit: tuple[int, int, int] | None = None
    description: str = ""


@dataclass(frozen=True)
class CheckpointIn:
    """A checkpoint a running job reports."""

    job_id: int
    attempt: int
    step: int
    uri: str
    size_bytes: int
    kind: str  # "full", "incremental" or "differential"
    parent: int | None
    complete: bool
    at: float


@dataclass(frozen=True)
class CheckpointRecord:
    """A stored checkpoint."""

    id: int
    job_id: int
    attempt: int
    step: int
    uri: str
    size_bytes: int
    kind: str
    parent: int | None
    complete: bool
    at: float


@dataclass(frozen=True)
class AuditIn:
    """One mutation as the audit log records it."""

    at: float
    user: str
    project: str
    action: str  # e.g. "POST /v1/jobs"
    target: str  # e.g. "job/42"
    status: int  # HTTP status of the answer
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditRecord:
    """A stored audit entry."""

    id: int
    at: float
    user: str
    project: str
    action: str
    target: str
    status: int
    detail: dict[str, Any]


@dataclass(frozen=True)
class IdempotencyIn:
    """The ``Idempotency-Key`` of a submission, as the store keeps it.

    The key is scoped to the caller: ``project`` and ``user`` are those of the token that
    sent it. ``fingerprint`` identifies the request, so that a retry can be told apart from a
    different request reusing the key.
    """

    project: str
    user: str
    key: str
    fingerprint: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class IdempotentResult:
    """What a keyed submission did.

    ``created`` is False when the key was already in use (and unexpired): ``job`` is then the
    job that first submission created, and ``fingerprint`` the fingerprint stored with it.
    """

    job: JobRecord
    created: bool
    fingerprint: str


@dataclass(frozen=True)
class RevokedToken:
    """A revoked token id (``jti``); the entry may be forgotten after ``expires_at``."""

    token_id: str
    revoked_at: float
    expires_at: float
    revoked_by: str = ""


def audit_rows(
    audit: Sequence[AuditIn], ids: Sequence[int]
) -> list[tuple[float, str, str, str, str, int, dict[str, Any]]]:
    """Audit entries of a submission as rows, ``{id}`` in targets filled with job ids."""
    return [
        (
            e.at,
            e.user,
            e.project,
            e.action,
            e.target.replace("{id}", str(ids[i])) if i < len(ids) else e.target,
            e.status,
            e.detail,
        )
        for i, e in enumerate(audit)
    ]


class Store(Protocol):
    """Durable service state. Every mutation is committed before it returns."""

    async def close(self) -> None:
        """Flush pending writes and close."""

    # Jobs ------------------------------------------------------------------------------
    async def create_jobs(
        self, jobs: Sequence[NewJob], audit: Sequence[AuditIn] = ()
    ) -> list[JobRecord]:
        """Insert jobs in state PENDING (ids ascending in input order) with a first event.

        ``audit`` entries are recorded in the same transaction (one commit for a submission
        and its audit entry); ``{id}`` in an entry's target becomes the id of the job at the
        same position.
        """
        ...

    async def create_job_idempotent(
        self, job: NewJob, key: IdempotencyIn, audit: Sequence[AuditIn] = ()
    ) -> IdempotentResult:
        """Insert a job under an idempotency key, unless the key is already in use.

        The key is scoped to ``(key.project, key.user)``. When an unexpired entry holds it,
        nothing is written and the job it names is returned (``created`` False). Otherwise the
        job, its first event, the key and ``audit`` commit in one transaction, so that a
        crash cannot keep one without the others.
        """
        ...

    async def update_jobs(self, changes: Sequence[JobChange]) -> None:
        """Apply changes (and their events) in one transaction; unknown ids are skipped."""

    async def get_job(self, job_id: int) -> JobRecord | None:
        """Return one job."""
        ...

    async def list_jobs(
        self,
        *,
        projects: Sequence[str] | None = None,
        state: str | None = None,
        user: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs with id > ``after`` in ascending id order (``projects`` None = all)."""
        ...

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs not in a terminal state, ascending id (recovery after a restart)."""
        ...

    async def finished_jobs(self, since: float) -> list[JobRecord]:
        """Jobs that started and ended at ``since`` or later, ascending id (fair-share history)."""
        ...

    async def job_events(
        self, job_id: int, *, after: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        """Return a job's events in order."""
        ...

    # Logs ------------------------------------------------------------------------------
    async def append_logs(self, chunks: Sequence[LogChunk]) -> None:
        """Store log chunks in order."""

    async def job_logs(
        self,
        job_id: int,
        *,
        rank: int | None = None,
        attempt: int | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        """Log chunks of a job with seq > ``after`` in order."""
        ...

    # Nodes -----------------------------------------------------------------------------
    async def put_node(self, node: NodeRecord) -> None:
        """Insert or replace a node."""

    async def get_node(self, name: str) -> NodeRecord | None:
        """Return one node."""
        ...

    async def list_nodes(self) -> list[NodeRecord]:
        """All nodes by name."""
        ...

    async def delete_node(self, name: str) -> bool:
        """Forget a node; returns whether it existed."""
        ...

    # Quotas and pools ------------------------------------------------------------------
    async def put_quota(self, quota: QuotaRecord) -> None:
        """Insert or replace a project's quota."""

    async def delete_quota(self, project: str) -> bool:
        """Remove a project's quota; returns whether it existed."""
        ...

    async def list_quotas(self) -> list[QuotaRecord]:
        """All quotas by project."""
        ...

    async def put_pool(self, pool: PoolRecord) -> None:
        """Insert or replace a pool."""

    async def delete_pool(self, name: str) -> bool:
        """Remove a pool; returns whether it existed."""
        ...

    async def list_pools(self) -> list[PoolRecord]:
        """All pools by name."""
        ...

    # Checkpoints -----------------------------------------------------------------------
    async def add_checkpoint(self, ck: CheckpointIn) -> CheckpointRecord:
        """Record a checkpoint."""
        ...

    async def list_checkpoints(self, job_id: int) -> list[CheckpointRecord]:
        """Return a job's checkpoints by id."""
        ...

    # Audit -----------------------------------------------------------------------------
    async def append_audit(self, entries: Sequence[AuditIn]) -> None:
        """Record mutations."""

    async def list_audit(
        self, *, project: str | None = None, after: int | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Audit entries with id > ``after`` ascending (``project`` None = all)."""
        ...

    # Tokens and keys -------------------------------------------------------------------
    async def revoke_token(self, entry: RevokedToken) -> bool:
        """Record a revoked token id; returns False when it was revoked already."""
        ...

    async def revoked_tokens(self, now: float) -> list[RevokedToken]:
        """Revocations whose ``expires_at`` is still ahead of ``now``, by token id."""
        ...

    async def prune_expired(self, now: float) -> int:
        """Forget revocations and idempotency keys expired by ``now``; returns how many."""
        ...

    # Reservations ----------------------------------------------------------------------
    async def add_reservation(self, res: ReservationIn) -> ReservationRecord:
        """Record a reservation or maintenance window; returns it with its id."""
        ...

    async def list_reservations(self) -> list[ReservationRecord]:
        """All reservations by id."""
        ...

    async def delete_reservation(self, res_id: int) -> bool:
        """Forget a reservation; returns whether it existed."""
        ...


@dataclass(frozen=True)
class ReservationIn:
    """Nodes held for ``owner`` ("" = nobody: a maintenance window) over ``[start, end)``.

    ``request`` is what was asked (node names or capacity), ``nodes`` the nodes chosen;
    ``drain`` drains them for the window.
    """

    owner: str
    start: int
    end: int
    nodes: tuple[str, ...]
    drain: bool
    request: dict[str, Any]
    created_by: str
    created_at: float


@dataclass(frozen=True)
class ReservationRecord(ReservationIn):
    """A stored reservation."""

    id: int = 0
