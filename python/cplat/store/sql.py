"""What the two SQL stores share: statements, query building and the ``Store`` methods.

:class:`SqlStore` implements every method of :class:`cplat.store.base.Store` once: it encodes
records into parameters, builds the list and filter queries (cursor pagination included) and
decodes rows with the codecs of :mod:`cplat.store.schema`. A backend subclass brings only what
really differs between databases:

- how a parameter is spelled in SQL (:meth:`SqlStore.placeholder`): statements here are written
  with PostgreSQL's numbered ``$1, $2, ...`` and rewritten once per backend by :meth:`SqlStore.sql`;
- its driver: how a read runs (:meth:`SqlStore._fetch`) and how writes reach the database through
  its group commit (:meth:`SqlStore._write_statements` and the multi-row write hooks, where each
  backend has its own fastest form: SQLite ``executemany`` on its writer thread, PostgreSQL
  ``unnest`` statements merged across callers).

Every statement here is valid in both dialects as written (SQLite 3.35 has ``RETURNING`` and
``ON CONFLICT ... DO UPDATE``), so the two backends cannot drift apart in what they store.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from cplat.store.base import (
    AuditIn,
    AuditRecord,
    CheckpointIn,
    CheckpointRecord,
    EventRecord,
    IdempotencyIn,
    IdempotentResult,
    JobChange,
    JobRecord,
    LogChunk,
    LogRecord,
    NewJob,
    NodeRecord,
    PoolRecord,
    QuotaRecord,
    ReservationIn,
    ReservationRecord,
    RevokedToken,
    StoreError,
    audit_rows,
)
from cplat.store.schema import (
    AUDIT_COLUMNS,
    CHECKPOINT_COLUMNS,
    EVENT_COLUMNS,
    JOB_COLUMNS,
    LOG_COLUMNS,
    NODE_COLUMNS,
    POOL_COLUMNS,
    QUOTA_COLUMNS,
    REVOKED_COLUMNS,
    UNFINISHED,
    audit_from_row,
    change_params,
    checkpoint_from_row,
    dumps,
    event_from_row,
    job_from_row,
    log_from_row,
    log_text,
    new_job_record,
    node_from_row,
    pool_from_row,
    pool_params,
    quota_from_row,
    quota_params,
    revoked_from_row,
)

__all__ = [
    "UPDATE_JOB",
    "AuditRow",
    "JobRow",
    "LogRow",
    "Query",
    "SqlStore",
    "Statement",
    "audit_entries",
    "job_row",
]

#: A new job as both backends insert it: project, user, name, spec JSON, submitted_at,
#: token_id, token_expires_at (the row :func:`cplat.store.schema.new_job_record` reads back).
JobRow = tuple[str, str, str, str, float, str, float | None]
#: job_id, attempt, rank, stream, data, at: one ``job_logs`` row.
LogRow = tuple[int, int, int, str, str, float]
#: at, user, project, action, target, status, detail JSON: one ``audit`` row.
AuditRow = tuple[float, str, str, str, str, int, str]
#: One statement and its parameters, in the ``$n`` style of this module.
Statement = tuple[str, Sequence[Any]]

# The one UPDATE of a job change (parameters as :func:`cplat.store.schema.change_params` makes
# them): a fixed shape, so that each backend prepares it once. Each backend adds the RETURNING
# its event insert needs.
UPDATE_JOB = """UPDATE jobs SET
    updated_at = $2,
    state = COALESCE($3, state),
    reason = COALESCE($4, reason),
    started_at = CASE WHEN $5 THEN NULL ELSE COALESCE($6, started_at) END,
    finished_at = CASE WHEN $7 THEN NULL ELSE COALESCE($8, finished_at) END,
    exit_code = CASE WHEN $9 THEN NULL ELSE COALESCE($10, exit_code) END,
    placement = COALESCE($11, placement),
    attempt = COALESCE($12, attempt)
WHERE id = $1"""

_FIND_KEY = """SELECT job_id, fingerprint FROM idempotency_keys
WHERE project = $1 AND "user" = $2 AND idem_key = $3 AND expires_at > $4"""

# An expired entry under the same key is replaced: the key is free again. A live one that a
# concurrent transaction committed first makes the WHERE false: no row comes back.
_PUT_KEY = """INSERT INTO idempotency_keys
    (project, "user", idem_key, fingerprint, job_id, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (project, "user", idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,
    job_id = excluded.job_id, created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE idempotency_keys.expires_at <= excluded.created_at
RETURNING job_id"""

_PUT_NODE = f"""INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, spec = excluded.spec,
    labels = excluded.labels, registered_at = excluded.registered_at,
    heartbeat_at = excluded.heartbeat_at"""

_PUT_QUOTA = f"""INSERT INTO quotas ({QUOTA_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (project) DO UPDATE SET nominal_cpu_milli = excluded.nominal_cpu_milli,
    nominal_memory_mib = excluded.nominal_memory_mib,
    nominal_gpu_milli = excluded.nominal_gpu_milli,
    borrowing_cpu_milli = excluded.borrowing_cpu_milli,
    borrowing_memory_mib = excluded.borrowing_memory_mib,
    borrowing_gpu_milli = excluded.borrowing_gpu_milli,
    lending_cpu_milli = excluded.lending_cpu_milli,
    lending_memory_mib = excluded.lending_memory_mib,
    lending_gpu_milli = excluded.lending_gpu_milli,
    pool = excluded.pool, overcommit = excluded.overcommit"""

_PUT_POOL = f"""INSERT INTO pools ({POOL_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET borrowing_cpu_milli = excluded.borrowing_cpu_milli,
    borrowing_memory_mib = excluded.borrowing_memory_mib,
    borrowing_gpu_milli = excluded.borrowing_gpu_milli,
    description = excluded.description"""

_INSERT_CHECKPOINT = """INSERT INTO checkpoints
    (job_id, attempt, step, uri, size_bytes, kind, parent, complete, at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"""

_REVOKE = f"""INSERT INTO revoked_tokens ({REVOKED_COLUMNS}) VALUES ($1, $2, $3, $4)
ON CONFLICT (token_id) DO NOTHING
RETURNING 1"""

# Deletes say whether they removed anything through RETURNING, which both drivers report the
# same way (SQLite's rowcount and asyncpg's status string do not).
_DELETE_NODE = "DELETE FROM nodes WHERE name = $1 RETURNING 1"
_DELETE_QUOTA = "DELETE FROM quotas WHERE project = $1 RETURNING 1"
_DELETE_POOL = "DELETE FROM pools WHERE name = $1 RETURNING 1"
_PRUNE_REVOKED = "DELETE FROM revoked_tokens WHERE expires_at <= $1 RETURNING 1"
_PRUNE_KEYS = "DELETE FROM idempotency_keys WHERE expires_at <= $1 RETURNING 1"

_PARAM = re.compile(r"\$(\d+)")


def job_row(job: NewJob) -> JobRow:
    """Encode a new job as the row both backends insert (see :data:`JobRow`).

    Parameters
    ----------
    job : NewJob
        The job.

    Returns
    -------
    JobRow
        Its column values; the spec as JSON text.

    Raises
    ------
    ValueError
        When the spec is not JSON (NaN or infinity included).
    """
    exp = None if job.token_expires_at is None else float(job.token_expires_at)
    return (
        job.project,
        job.user,
        job.name,
        dumps(job.spec),
        float(job.submitted_at),
        job.token_id,
        exp,
    )


def audit_entries(audit: Sequence[AuditIn], ids: Sequence[int]) -> list[AuditRow]:
    """Encode audit entries as rows, ``{id}`` in targets filled with job ids.

    Parameters
    ----------
    audit : sequence of AuditIn
        The entries.
    ids : sequence of int
        Ids of the jobs created with them, by position (empty: targets stay as they are).

    Returns
    -------
    list of AuditRow
        Their column values; the detail as JSON text.
    """
    return [
        (float(at), user, project, action, target, status, dumps(detail))
        for at, user, project, action, target, status, detail in audit_rows(audit, ids)
    ]


class Query:
    """A filter under construction: terms joined by AND, parameters numbered as they come.

    Parameters
    ----------
    placeholder : callable
        The backend's spelling of parameter ``n`` (1-based).
    """

    def __init__(self, placeholder: Callable[[int], str]) -> None:
        self._placeholder = placeholder
        self.terms: list[str] = []
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        """Append a parameter and return its placeholder.

        Parameters
        ----------
        value : Any
            The value bound to it.

        Returns
        -------
        str
            The placeholder to put in the SQL text.
        """
        self.params.append(value)
        return self._placeholder(len(self.params))

    def where(self, term: str, value: Any) -> None:
        """Add a term whose ``{}`` stands for a new parameter bound to ``value``.

        Parameters
        ----------
        term : str
            SQL text such as ``"state = {}"``.
        value : Any
            The value bound to the parameter.
        """
        self.terms.append(term.format(self.param(value)))

    def clause(self) -> str:
        """Return ``WHERE ... `` (with a trailing space), or nothing when there is no term."""
        return f"WHERE {' AND '.join(self.terms)} " if self.terms else ""


class SqlStore(ABC):
    """The :class:`~cplat.store.base.Store` methods, once, for any SQL backend.

    Subclasses provide :meth:`placeholder`, :meth:`_fetch`, :meth:`_write_statements` and the
    write hooks whose best form depends on the driver (:meth:`_insert_jobs`,
    :meth:`_claim_key`, :meth:`_apply_changes`, :meth:`_insert_logs`, :meth:`_insert_audit`),
    plus ``open`` and ``close``. Every write hook must go through the backend's group commit:
    committed (and synced) before it returns, one transaction per call.
    """

    _sql_cache: dict[str, str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._sql_cache = {}  # one per backend: the same text is spelled differently

    # What a backend provides -------------------------------------------------------------

    @abstractmethod
    def placeholder(self, n: int) -> str:
        """Return how the backend spells parameter ``n`` (1-based) in SQL text."""

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read (SQL already in the backend's spelling); its rows."""

    @abstractmethod
    async def _write_statements(self, statements: Sequence[Statement]) -> list[list[Any]]:
        """Run statements (in this module's ``$n`` spelling) as one write; each one's rows."""

    @abstractmethod
    async def _insert_jobs(self, rows: list[JobRow], audit: Sequence[AuditIn]) -> list[int]:
        """Insert jobs in state PENDING with their first events and ``audit``; ids, in order."""

    @abstractmethod
    async def _claim_key(
        self, row: JobRow, key: IdempotencyIn, audit: Sequence[AuditIn]
    ) -> tuple[int, bool, str]:
        """Run :meth:`_find_key`; when no row, insert the job, ``audit`` and :meth:`_put_key`.

        All in one transaction. Returns the job id, whether it was created, and the
        fingerprint stored with the key.
        """

    @abstractmethod
    async def _apply_changes(self, params: list[tuple[Any, ...]]) -> None:
        """Run :data:`UPDATE_JOB` for each change (and insert its event) in one transaction."""

    @abstractmethod
    async def _insert_logs(self, rows: list[LogRow]) -> None:
        """Insert log rows in order, in one transaction."""

    @abstractmethod
    async def _insert_audit(self, rows: list[AuditRow]) -> None:
        """Insert audit rows in order, in one transaction."""

    # Plumbing ----------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """Spell the ``$n`` parameters of a statement of this module the backend's way.

        Parameters
        ----------
        text : str
            SQL with ``$1, $2, ...`` parameters (and no ``$`` anywhere else).

        Returns
        -------
        str
            The same statement for this backend (computed once per text).
        """
        cache = type(self)._sql_cache
        spelled = cache.get(text)
        if spelled is None:
            spelled = _PARAM.sub(lambda m: self.placeholder(int(m[1])), text)
            cache[text] = spelled
        return spelled

    def _find_key(self, key: IdempotencyIn) -> Statement:
        """Return the lookup of an unexpired key, spelled for this backend.

        Its rows (none or one) are ``(job_id, fingerprint)``.
        """
        return self.sql(_FIND_KEY), (key.project, key.user, key.key, float(key.created_at))

    def _put_key(self, key: IdempotencyIn, job_id: int) -> Statement:
        """Return the insert of a key naming ``job_id``, spelled for this backend.

        It returns a row when the key was free (absent or expired), none when a live entry
        holds it.
        """
        params = (
            key.project,
            key.user,
            key.key,
            key.fingerprint,
            job_id,
            float(key.created_at),
            float(key.expires_at),
        )
        return self.sql(_PUT_KEY), params

    def _match_any(self, query: Query, column: str, values: Sequence[Any]) -> str:
        """Return a term matching ``column`` against any of ``values`` (not empty)."""
        return f"{column} IN ({', '.join(query.param(v) for v in values)})"

    async def _select(self, sql: str, *params: Any) -> list[Any]:
        return await self._fetch(self.sql(sql), params)

    async def _write_fetch(self, sql: str, *params: Any) -> list[Any]:
        (rows,) = await self._write_statements([(sql, params)])
        return rows

    # Jobs --------------------------------------------------------------------------------

    async def create_jobs(
        self, jobs: Sequence[NewJob], audit: Sequence[AuditIn] = ()
    ) -> list[JobRecord]:
        """Insert jobs in state PENDING (ids ascending in input order) with a first event.

        Parameters
        ----------
        jobs : sequence of NewJob
            The jobs, all inserted in one transaction.
        audit : sequence of AuditIn
            Entries recorded in the same transaction (``{id}`` in a target: that job's id).

        Returns
        -------
        list of JobRecord
            The stored jobs, in input order.
        """
        if not jobs:
            return []
        rows = [job_row(j) for j in jobs]
        ids = await self._insert_jobs(rows, audit)
        return [new_job_record(job_id, row) for job_id, row in zip(ids, rows, strict=True)]

    async def create_job_idempotent(
        self, job: NewJob, key: IdempotencyIn, audit: Sequence[AuditIn] = ()
    ) -> IdempotentResult:
        """Insert a job under an idempotency key, unless the key is already in use.

        Parameters
        ----------
        job : NewJob
            The job.
        key : IdempotencyIn
            The key with its scope (the caller's project and user), the request's
            fingerprint and the key's lifetime.
        audit : sequence of AuditIn
            Entries recorded with the job (not when the key was in use).

        Returns
        -------
        IdempotentResult
            The new job, or the one the key already named.
        """
        row = job_row(job)
        job_id, created, fingerprint = await self._claim_key(row, key, audit)
        if created:
            return IdempotentResult(new_job_record(job_id, row), True, fingerprint)
        existing = await self.get_job(job_id)
        if existing is None:  # the key's foreign key keeps its job: only a damaged database
            raise StoreError(f"idempotency key {key.key!r} names job {job_id}, which is gone")
        return IdempotentResult(existing, False, fingerprint)

    async def update_jobs(self, changes: Sequence[JobChange]) -> None:
        """Apply changes (and their events) in one transaction; unknown ids are skipped.

        Parameters
        ----------
        changes : sequence of JobChange
            Applied in order (several may name the same job).

        Raises
        ------
        ValueError
            For an invalid change (unknown state, bad ``clear``); nothing is applied then.
        """
        if not changes:
            return
        # Every change is validated before any is sent: a bad one fails them all.
        await self._apply_changes([change_params(c) for c in changes])

    async def get_job(self, job_id: int) -> JobRecord | None:
        """Return one job.

        Parameters
        ----------
        job_id : int
            The job's id.

        Returns
        -------
        JobRecord or None
            The job, or None when there is none with that id.
        """
        rows = await self._select(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return job_from_row(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        projects: Sequence[str] | None = None,
        state: str | None = None,
        user: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs with id > ``after`` in ascending id order (``projects`` None = all).

        Parameters
        ----------
        projects : sequence of str, optional
            Only jobs of these projects (an empty sequence matches nothing).
        state : str, optional
            Only jobs in this state.
        user : str, optional
            Only jobs of this user.
        after : int, optional
            Cursor: only jobs with a larger id.
        limit : int
            At most this many jobs.

        Returns
        -------
        list of JobRecord
            The jobs, ascending id.
        """
        if limit <= 0 or (projects is not None and not projects):
            return []
        q = Query(self.placeholder)
        if projects is not None:
            q.terms.append(self._match_any(q, "project", list(projects)))
        if state is not None:
            q.where("state = {}", state)
        if user is not None:
            q.where('"user" = {}', user)
        if after is not None:
            q.where("id > {}", after)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs {q.clause()}ORDER BY id LIMIT {q.param(limit)}"
        return [job_from_row(r) for r in await self._fetch(sql, q.params)]

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs not in a terminal state, ascending id (recovery after a restart).

        Returns
        -------
        list of JobRecord
            The jobs.
        """
        rows = await self._select(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {UNFINISHED} ORDER BY id")
        return [job_from_row(r) for r in rows]

    async def finished_jobs(self, since: float) -> list[JobRecord]:
        """Jobs that ran and ended (succeeded, failed, cancelled) at ``since`` or later.

        For recovery after a restart: the fair-share queue sorts count the work they did.

        Parameters
        ----------
        since : float
            Only jobs with ``finished_at >= since``.

        Returns
        -------
        list of JobRecord
            The jobs that have a ``started_at``, ascending id.
        """
        rows = await self._select(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE NOT ({UNFINISHED}) "
            "AND started_at IS NOT NULL AND finished_at >= $1 ORDER BY id",
            float(since),
        )
        return [job_from_row(r) for r in rows]

    async def job_events(
        self, job_id: int, *, after: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        """Return a job's events in order.

        Parameters
        ----------
        job_id : int
            The job.
        after : int, optional
            Cursor: only events with a larger id.
        limit : int
            At most this many events.

        Returns
        -------
        list of EventRecord
            The events, ascending id.
        """
        rows = await self._select(
            f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 AND id > $2 "
            "ORDER BY id LIMIT $3",
            job_id,
            -1 if after is None else after,
            max(limit, 0),
        )
        return [event_from_row(r) for r in rows]

    # Logs --------------------------------------------------------------------------------

    async def append_logs(self, chunks: Sequence[LogChunk]) -> None:
        """Store log chunks in order.

        Parameters
        ----------
        chunks : sequence of LogChunk
            Stored together; their ``seq`` follow this order.

        Raises
        ------
        StoreError
            When a chunk names a job that does not exist (none is stored then).
        """
        if not chunks:
            return
        await self._insert_logs(
            [(c.job_id, c.attempt, c.rank, c.stream, log_text(c.data), float(c.at)) for c in chunks]
        )

    async def job_logs(
        self,
        job_id: int,
        *,
        rank: int | None = None,
        attempt: int | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        """Log chunks of a job with seq > ``after`` in order.

        Parameters
        ----------
        job_id : int
            The job.
        rank : int, optional
            Only this task rank.
        attempt : int, optional
            Only this attempt.
        after : int, optional
            Cursor: only chunks with a larger ``seq``.
        limit : int
            At most this many chunks.

        Returns
        -------
        list of LogRecord
            The chunks, ascending ``seq``.
        """
        q = Query(self.placeholder)
        q.where("job_id = {}", job_id)
        if rank is not None:
            q.where("rank = {}", rank)
        if attempt is not None:
            q.where("attempt = {}", attempt)
        if after is not None:
            q.where("seq > {}", after)
        sql = f"SELECT {LOG_COLUMNS} FROM job_logs {q.clause()}ORDER BY seq LIMIT "
        sql += q.param(max(limit, 0))
        return [log_from_row(r) for r in await self._fetch(sql, q.params)]

    # Nodes -------------------------------------------------------------------------------

    async def put_node(self, node: NodeRecord) -> None:
        """Insert or replace a node.

        Parameters
        ----------
        node : NodeRecord
            The node; one with the same name is replaced.
        """
        await self._write_fetch(
            _PUT_NODE,
            node.name,
            node.state,
            dumps(node.spec),
            dumps(node.labels),
            float(node.registered_at),
            float(node.heartbeat_at),
        )

    async def get_node(self, name: str) -> NodeRecord | None:
        """Return one node.

        Parameters
        ----------
        name : str
            The node's name.

        Returns
        -------
        NodeRecord or None
            The node, or None when unknown.
        """
        rows = await self._select(f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1", name)
        return node_from_row(rows[0]) if rows else None

    async def list_nodes(self) -> list[NodeRecord]:
        """All nodes by name.

        Returns
        -------
        list of NodeRecord
            The nodes.
        """
        rows = await self._select(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY name")
        return [node_from_row(r) for r in rows]

    async def delete_node(self, name: str) -> bool:
        """Forget a node; returns whether it existed.

        Parameters
        ----------
        name : str
            The node's name.

        Returns
        -------
        bool
            Whether a node was deleted.
        """
        return bool(await self._write_fetch(_DELETE_NODE, name))

    # Quotas and pools --------------------------------------------------------------------

    async def put_quota(self, quota: QuotaRecord) -> None:
        """Insert or replace a project's quota.

        Parameters
        ----------
        quota : QuotaRecord
            The quota; the project's previous one is replaced.
        """
        await self._write_fetch(_PUT_QUOTA, *quota_params(quota))

    async def delete_quota(self, project: str) -> bool:
        """Remove a project's quota; returns whether it existed.

        Parameters
        ----------
        project : str
            The project.

        Returns
        -------
        bool
            Whether a quota was deleted.
        """
        return bool(await self._write_fetch(_DELETE_QUOTA, project))

    async def list_quotas(self) -> list[QuotaRecord]:
        """All quotas by project.

        Returns
        -------
        list of QuotaRecord
            The quotas.
        """
        rows = await self._select(f"SELECT {QUOTA_COLUMNS} FROM quotas ORDER BY project")
        return [quota_from_row(r) for r in rows]

    async def put_pool(self, pool: PoolRecord) -> None:
        """Insert or replace a pool.

        Parameters
        ----------
        pool : PoolRecord
            The pool; one with the same name is replaced.
        """
        await self._write_fetch(_PUT_POOL, *pool_params(pool))

    async def delete_pool(self, name: str) -> bool:
        """Remove a pool; returns whether it existed.

        Parameters
        ----------
        name : str
            The pool's name.

        Returns
        -------
        bool
            Whether a pool was deleted.
        """
        return bool(await self._write_fetch(_DELETE_POOL, name))

    async def list_pools(self) -> list[PoolRecord]:
        """All pools by name.

        Returns
        -------
        list of PoolRecord
            The pools.
        """
        rows = await self._select(f"SELECT {POOL_COLUMNS} FROM pools ORDER BY name")
        return [pool_from_row(r) for r in rows]

    # Checkpoints -------------------------------------------------------------------------

    async def add_checkpoint(self, ck: CheckpointIn) -> CheckpointRecord:
        """Record a checkpoint.

        Parameters
        ----------
        ck : CheckpointIn
            The checkpoint.

        Returns
        -------
        CheckpointRecord
            The stored checkpoint, with its id.

        Raises
        ------
        StoreError
            When the job does not exist.
        """
        row = (
            ck.job_id,
            ck.attempt,
            ck.step,
            ck.uri,
            ck.size_bytes,
            ck.kind,
            ck.parent,
            bool(ck.complete),
            float(ck.at),
        )
        rows = await self._write_fetch(_INSERT_CHECKPOINT, *row)
        return checkpoint_from_row((rows[0][0], *row))

    async def list_checkpoints(self, job_id: int) -> list[CheckpointRecord]:
        """Return a job's checkpoints by id.

        Parameters
        ----------
        job_id : int
            The job.

        Returns
        -------
        list of CheckpointRecord
            The checkpoints, ascending id.
        """
        rows = await self._select(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = $1 ORDER BY id", job_id
        )
        return [checkpoint_from_row(r) for r in rows]

    # Audit -------------------------------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditIn]) -> None:
        """Record mutations.

        Parameters
        ----------
        entries : sequence of AuditIn
            Stored together, ids ascending in this order.
        """
        if not entries:
            return
        await self._insert_audit(audit_entries(entries, ()))

    async def list_audit(
        self, *, project: str | None = None, after: int | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Audit entries with id > ``after`` ascending (``project`` None = all).

        Parameters
        ----------
        project : str, optional
            Only entries of this project.
        after : int, optional
            Cursor: only entries with a larger id.
        limit : int
            At most this many entries.

        Returns
        -------
        list of AuditRecord
            The entries, ascending id.
        """
        q = Query(self.placeholder)
        q.where("id > {}", -1 if after is None else after)
        if project is not None:
            q.where("project = {}", project)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit {q.clause()}ORDER BY id LIMIT "
        sql += q.param(max(limit, 0))
        return [audit_from_row(r) for r in await self._fetch(sql, q.params)]

    # Tokens and keys ---------------------------------------------------------------------

    async def revoke_token(self, entry: RevokedToken) -> bool:
        """Record a revoked token id.

        Parameters
        ----------
        entry : RevokedToken
            The token id, when, until when the entry matters, and who revoked it.

        Returns
        -------
        bool
            False when the id was revoked already (the first entry stays).
        """
        rows = await self._write_fetch(
            _REVOKE,
            entry.token_id,
            float(entry.revoked_at),
            float(entry.expires_at),
            entry.revoked_by,
        )
        return bool(rows)

    async def revoked_tokens(self, now: float) -> list[RevokedToken]:
        """Revocations whose ``expires_at`` is still ahead of ``now``, by token id.

        Parameters
        ----------
        now : float
            The current time.

        Returns
        -------
        list of RevokedToken
            The revocations that still matter.
        """
        rows = await self._select(
            f"SELECT {REVOKED_COLUMNS} FROM revoked_tokens WHERE expires_at > $1 ORDER BY token_id",
            float(now),
        )
        return [revoked_from_row(r) for r in rows]

    async def prune_expired(self, now: float) -> int:
        """Forget revocations and idempotency keys expired by ``now``.

        Parameters
        ----------
        now : float
            The current time.

        Returns
        -------
        int
            How many entries were deleted.
        """
        gone = await self._write_statements(
            [(_PRUNE_REVOKED, (float(now),)), (_PRUNE_KEYS, (float(now),))]
        )
        return sum(len(rows) for rows in gone)

    # Reservations ------------------------------------------------------------------------

    async def add_reservation(self, res: ReservationIn) -> ReservationRecord:
        """Record a reservation or maintenance window.

        Parameters
        ----------
        res : ReservationIn
            The reservation.

        Returns
        -------
        ReservationRecord
            The stored reservation, with its id.
        """
        rows = await self._write_fetch(
            _INSERT_RESERVATION,
            res.owner,
            int(res.start),
            int(res.end),
            dumps(list(res.nodes)),
            bool(res.drain),
            dumps(res.request),
            res.created_by,
            float(res.created_at),
        )
        return ReservationRecord(**{**res.__dict__, "id": int(rows[0][0])})

    async def list_reservations(self) -> list[ReservationRecord]:
        """All reservations by id.

        Returns
        -------
        list of ReservationRecord
            The reservations.
        """
        rows = await self._select(f"SELECT {_RESERVATION_COLUMNS} FROM reservations ORDER BY id")
        return [
            ReservationRecord(
                id=int(r[0]),
                owner=r[1],
                start=int(r[2]),
                end=int(r[3]),
                nodes=tuple(json.loads(r[4])),
                drain=bool(r[5]),
                request=json.loads(r[6]),
                created_by=r[7],
                created_at=float(r[8]),
            )
            for r in rows
        ]

    async def delete_reservation(self, res_id: int) -> bool:
        """Forget a reservation.

        Parameters
        ----------
        res_id : int
            The reservation's id.

        Returns
        -------
        bool
            Whether a reservation was deleted.
        """
        return bool(
            await self._write_fetch("DELETE FROM reservations WHERE id = $1 RETURNING id", res_id)
        )


_RESERVATION_COLUMNS = "id, owner, start_at, end_at, nodes, drain, request, created_by, created_at"
_INSERT_RESERVATION = """INSERT INTO reservations
    (owner, start_at, end_at, nodes, drain, request, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id"""
