"""PostgreSQL store on an asyncpg connection pool, with group commit of writes.

Every mutation has committed when its coroutine returns. Writes go through one writer task
(see :class:`PostgresStore` for why); reads use the pool. JSON columns are JSONB, sent and
received as text. Multi-row inserts go through ``unnest`` so that each write is one statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg

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
    migrate_postgres,
    new_job_record,
    node_from_row,
    pool_from_row,
    pool_params,
    quota_from_row,
    quota_params,
    revoked_from_row,
)

__all__ = ["PostgresStore"]

# A bound on one transaction keeps a burst of writes from delaying every answer behind one huge
# commit (and from holding row locks long).
_MAX_BATCH = 512

# Ids are drawn from the sequence first, sorted, and handed out in input order: PostgreSQL does
# not promise that a multi-row INSERT evaluates defaults (or returns rows) in the SELECT's order.
# The events go in the same statement, so a batch of jobs is one round trip and one commit.
_CREATE_JOBS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[],
                         $6::text[], $7::float8[])
        WITH ORDINALITY AS i(project, "user", name, spec, submitted_at, token_id,
                             token_expires_at, ord)
), ids AS (
    SELECT id, row_number() OVER (ORDER BY id) AS ord
    FROM (SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS id
          FROM generate_series(1, cardinality($1::text[]))) AS drawn
), inserted AS (
    INSERT INTO jobs (id, project, "user", name, state, spec, reason, submitted_at, updated_at,
                      token_id, token_expires_at)
    SELECT ids.id, i.project, i."user", i.name, 'PENDING', i.spec::jsonb, 'queued',
           i.submitted_at, i.submitted_at, i.token_id, i.token_expires_at
    FROM input AS i JOIN ids USING (ord)
    ORDER BY ids.id
    RETURNING id, submitted_at
)
INSERT INTO job_events (job_id, at, state, message)
SELECT id, submitted_at, 'PENDING', 'submitted' FROM inserted ORDER BY id
RETURNING job_id
"""

# The event takes the job's state after the update, which is what RETURNING gives.
_UPDATE_JOB = """
WITH updated AS (
    UPDATE jobs SET
        updated_at = $2,
        state = COALESCE($3, state),
        reason = COALESCE($4, reason),
        started_at = CASE WHEN $5 THEN NULL ELSE COALESCE($6, started_at) END,
        finished_at = CASE WHEN $7 THEN NULL ELSE COALESCE($8, finished_at) END,
        exit_code = CASE WHEN $9 THEN NULL ELSE COALESCE($10, exit_code) END,
        placement = COALESCE($11::jsonb, placement),
        attempt = COALESCE($12, attempt)
    WHERE id = $1
    RETURNING id, state
)
INSERT INTO job_events (job_id, at, state, message)
SELECT id, $2, state, $13 FROM updated WHERE $13::text IS NOT NULL
"""

_INSERT_LOGS = """
INSERT INTO job_logs (job_id, attempt, rank, stream, data, at)
SELECT job_id, attempt, rank, stream, data, at
FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[], $5::text[], $6::float8[])
    WITH ORDINALITY AS c(job_id, attempt, rank, stream, data, at, ord)
ORDER BY ord
"""

_PUT_NODE = f"""
INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, spec = excluded.spec,
    labels = excluded.labels, registered_at = excluded.registered_at,
    heartbeat_at = excluded.heartbeat_at
"""

_PUT_QUOTA = f"""
INSERT INTO quotas ({QUOTA_COLUMNS})
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
    pool = excluded.pool, overcommit = excluded.overcommit
"""

_PUT_POOL = f"""
INSERT INTO pools ({POOL_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET borrowing_cpu_milli = excluded.borrowing_cpu_milli,
    borrowing_memory_mib = excluded.borrowing_memory_mib,
    borrowing_gpu_milli = excluded.borrowing_gpu_milli,
    description = excluded.description
"""

_INSERT_CHECKPOINT = """
INSERT INTO checkpoints (job_id, attempt, step, uri, size_bytes, kind, parent, complete, at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id
"""

_FIND_KEY = """
SELECT job_id, fingerprint FROM idempotency_keys
WHERE project = $1 AND "user" = $2 AND idem_key = $3 AND expires_at > $4
"""

# An expired entry under the same key is replaced: the key is free again. A live one that a
# concurrent transaction (another server) committed first makes the WHERE false: no row.
_PUT_KEY = """
INSERT INTO idempotency_keys
    (project, "user", idem_key, fingerprint, job_id, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (project, "user", idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,
    job_id = excluded.job_id, created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE idempotency_keys.expires_at <= excluded.created_at
RETURNING job_id
"""

_REVOKE = f"""
INSERT INTO revoked_tokens ({REVOKED_COLUMNS}) VALUES ($1, $2, $3, $4)
ON CONFLICT (token_id) DO NOTHING
RETURNING 1
"""

_INSERT_AUDIT = """
INSERT INTO audit (at, "user", project, action, target, status, detail)
SELECT at, "user", project, action, target, status, detail::jsonb
FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
            $7::text[])
    WITH ORDINALITY AS e(at, "user", project, action, target, status, detail, ord)
ORDER BY ord
"""


async def _keep_session(conn: Any) -> None:
    """Return a connection to the pool as it is.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ...) costs a round trip on every
    release, as much as a small statement; this store never changes session state (migrations
    take transaction-scoped locks only), and asyncpg still rolls back any open transaction.
    """


# Failures of the connection itself, after which nothing more can be sent on it.
_CONNECTION_ERRORS = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError)


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return StoreError("the write names a job that does not exist")
    if isinstance(exc, (asyncpg.PostgresError, *_CONNECTION_ERRORS)):
        return StoreError(f"postgres: {exc}")
    return exc


@contextmanager
def _errors() -> Iterator[None]:
    """Turn driver and connection failures into :class:`StoreError`."""
    try:
        yield
    except Exception as exc:
        mapped = _store_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


_WriteFn = Callable[[Any], Awaitable[Any]]


# project, user, name, spec JSON, submitted_at, token_id, token_expires_at
_JobRow = tuple[str, str, str, str, float, str, float | None]


class _KeyTakenError(Exception):
    """A concurrent transaction committed the same idempotency key first."""


def _job_row(j: NewJob, spec: str) -> _JobRow:
    exp = None if j.token_expires_at is None else float(j.token_expires_at)
    return (j.project, j.user, j.name, spec, float(j.submitted_at), j.token_id, exp)


async def _insert_jobs(conn: Any, rows: Sequence[_JobRow]) -> list[int]:
    """Insert jobs and their first events in one statement; their ids, ascending."""
    columns = list(zip(*rows, strict=True))
    inserted = await conn.fetch(_CREATE_JOBS, *(list(c) for c in columns))
    ids = sorted(int(r[0]) for r in inserted)
    if len(ids) != len(rows):
        raise StoreError(f"postgres: inserted {len(ids)} jobs of {len(rows)}")
    return ids


async def _insert_audit(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert audit rows (as :func:`audit_rows` makes them) in one statement."""
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        _INSERT_AUDIT,
        [float(a) for a in cols[0]],
        list(cols[1]),
        list(cols[2]),
        list(cols[3]),
        list(cols[4]),
        list(cols[5]),
        [dumps(d) for d in cols[6]],
    )


class _Op:
    """A queued write: what to run on the writer's connection, and whom to tell.

    ``jobs`` marks a ``create_jobs`` write: the writer merges neighbouring ones into a single
    INSERT, since a round trip per statement is what a batch mostly spends its time on.
    """

    __slots__ = ("audit", "fn", "future", "jobs")

    def __init__(
        self,
        fn: _WriteFn | None,
        future: asyncio.Future[Any],
        jobs: list[_JobRow] | None = None,
        audit: list[AuditIn] | None = None,
    ) -> None:
        self.fn = fn  # None asks the writer to stop
        self.future = future
        self.jobs = jobs
        self.audit = audit or []


def _settle(op: _Op, result: Any, exc: BaseException | None) -> None:
    if op.future.done():
        return  # the caller was cancelled; its write stands regardless
    if exc is None:
        op.future.set_result(result)
    else:
        mapped = _store_error(exc)
        if mapped is not exc:
            mapped.__cause__ = exc
        op.future.set_exception(mapped)


class PostgresStore:
    """The shared store: PostgreSQL through an asyncpg pool, writes through group commit.

    Open it with :meth:`open`. Tables live in the first schema of the connection's
    ``search_path`` (a DSN may set it: ``...?search_path=cplat``).

    One writer task runs every mutation: it takes all writes queued, runs them in one
    transaction on one connection, commits, and only then answers them; reads use the rest of
    the pool. Serialising writes this way is what makes ids usable as cursors: with concurrent
    writing transactions, a smaller id drawn by one can commit after a larger id of another, so
    a reader paging with ``after`` (a log tail, say) could skip it for good. The batch costs one
    commit (one WAL flush) for all its writes.

    Parameters
    ----------
    pool : asyncpg.Pool
        An open pool on a migrated database, of at least two connections.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._closed = False
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="cplat-store-pg-writer"
        )

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> PostgresStore:
        """Connect and migrate.

        Parameters
        ----------
        dsn : str
            ``postgresql://user:password@host:port/database[?setting=value...]``.
        min_size, max_size : int
            Bounds of the connection pool (the writer holds one while it writes).

        Returns
        -------
        PostgresStore
            The open store.

        Raises
        ------
        StoreError
            When the server cannot be reached or the schema is newer than this code.
        """
        if max_size < 2:
            raise ValueError("max_size must be at least 2: one writer, one reader")
        with _errors():
            pool = await asyncpg.create_pool(
                dsn, min_size=min(min_size, max_size), max_size=max_size, reset=_keep_session
            )
        try:
            with _errors():
                async with pool.acquire() as conn:
                    await migrate_postgres(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @property
    def pool(self) -> Any:
        """The asyncpg pool (for maintenance and tests)."""
        self._check_open()
        return self._pool

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ops = [op for op in batch if op.fn is not None]
            if ops:
                try:
                    await self._run_batch(ops)
                except Exception as exc:  # the pool itself failed: no write of it was done
                    for op in ops:
                        _settle(op, None, exc)
            stops = [op for op in batch if op.fn is None]
            if stops:
                for op in stops:
                    _settle(op, None, None)
                return

    async def _run_batch(self, ops: list[_Op]) -> None:
        async with self._pool.acquire() as conn:
            results: list[Any] = []
            try:
                async with conn.transaction():
                    i = 0
                    while i < len(ops):
                        if ops[i].jobs is None:
                            fn = ops[i].fn
                            assert fn is not None
                            results.append(await fn(conn))
                            i += 1
                            continue
                        # Consecutive creates share one INSERT: handing the sorted ids out in
                        # queue order keeps them ascending per call and across calls.
                        end = i
                        while end < len(ops) and ops[end].jobs is not None:
                            end += 1
                        group = [op.jobs for op in ops[i:end] if op.jobs is not None]
                        ids = await _insert_jobs(conn, [row for rows in group for row in rows])
                        start = 0
                        audit: list[tuple[Any, ...]] = []
                        for op, rows in zip(ops[i:end], group, strict=True):
                            mine = ids[start : start + len(rows)]
                            results.append(mine)
                            audit += audit_rows(op.audit, mine)
                            start += len(rows)
                        if audit:
                            await _insert_audit(conn, audit)
                        i = end
            except _CONNECTION_ERRORS as exc:
                # Whether the commit reached the server is unknown; the caller must find out.
                for op in ops:
                    _settle(op, None, exc)
                return
            except Exception:
                # One write failed and took the transaction with it. Rare (a bad job id, say),
                # so simply redo each write in a transaction of its own; the culprit fails
                # again, alone. No savepoints on the common path: each costs a round trip.
                await self._run_one_by_one(conn, ops)
                return
            for op, result in zip(ops, results, strict=True):
                _settle(op, result, None)

    @staticmethod
    async def _run_one_by_one(conn: Any, ops: list[_Op]) -> None:
        for i, op in enumerate(ops):
            assert op.fn is not None
            try:
                async with conn.transaction():
                    result = await op.fn(conn)
            except _CONNECTION_ERRORS as exc:
                for rest in ops[i:]:
                    _settle(rest, None, exc)
                return
            except Exception as exc:
                _settle(op, None, exc)
            else:
                _settle(op, result, None)

    async def _write(
        self,
        fn: _WriteFn,
        jobs: list[_JobRow] | None = None,
        audit: list[AuditIn] | None = None,
    ) -> Any:
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(fn, future, jobs, audit))
        return await future

    async def _write_fetch(self, sql: str, *args: Any) -> list[Any]:
        async def run(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        rows: list[Any] = await self._write(run)
        return rows

    async def _write_execute(self, sql: str, *args: Any) -> None:
        async def run(conn: Any) -> None:
            await conn.execute(sql, *args)

        await self._write(run)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._check_open()
        with _errors():
            return list(await self._pool.fetch(sql, *args))

    async def close(self) -> None:
        """Commit every queued write, then close the pool (idempotent)."""
        if self._closed:
            await asyncio.shield(self._writer)
            return
        self._closed = True
        if not self._writer.done():
            stopped: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(_Op(None, stopped))
            await stopped
        await self._pool.close()

    # Jobs --------------------------------------------------------------------------------

    async def create_jobs(
        self, jobs: Sequence[NewJob], audit: Sequence[AuditIn] = ()
    ) -> list[JobRecord]:
        """Insert jobs in state PENDING (ids ascending in input order) with a first event.

        Parameters
        ----------
        jobs : sequence of NewJob
            The jobs, all inserted in one statement.
        audit : sequence of AuditIn
            Entries recorded in the same transaction (``{id}`` in a target: that job's id).

        Returns
        -------
        list of JobRecord
            The stored jobs, in input order.
        """
        if not jobs:
            return []
        specs = [dumps(j.spec) for j in jobs]
        rows = [_job_row(j, spec) for j, spec in zip(jobs, specs, strict=True)]

        async def run(conn: Any) -> list[int]:
            # Used alone only when a merged batch failed and each write is redone by itself.
            ids = await _insert_jobs(conn, rows)
            if audit:
                await _insert_audit(conn, audit_rows(audit, ids))
            return ids

        ids: list[int] = await self._write(run, rows, list(audit))
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
        spec = dumps(job.spec)
        row = _job_row(job, spec)
        find = (key.project, key.user, key.key, float(key.created_at))

        async def run(conn: Any) -> tuple[int, bool, str]:
            found = await conn.fetchrow(_FIND_KEY, *find)
            if found is not None:
                return int(found[0]), False, str(found[1])
            [job_id] = await _insert_jobs(conn, [row])
            if audit:
                await _insert_audit(conn, audit_rows(audit, [job_id]))
            stored = await conn.fetchrow(
                _PUT_KEY,
                *find[:3],
                key.fingerprint,
                job_id,
                float(key.created_at),
                float(key.expires_at),
            )
            if stored is None:
                # Another server's transaction holds the key. Raising undoes this job with
                # the whole batch; the writer then redoes each write alone, and this one finds
                # the committed key at its first statement.
                raise _KeyTakenError(key.key)
            return job_id, True, key.fingerprint

        for _ in range(3):
            try:
                job_id, created, fingerprint = await self._write(run)
                break
            except _KeyTakenError:
                continue  # lost a race twice in a row to the same key: look again
        else:
            raise StoreError(f"idempotency key {key.key!r} is contended; retry the submission")
        if created:
            rec = new_job_record(job_id, row)
            return IdempotentResult(rec, True, fingerprint)
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
        params = [change_params(c) for c in changes]
        if len(params) == 1:
            await self._write_execute(_UPDATE_JOB, *params[0])
            return

        async def run(conn: Any) -> None:
            # executemany pipelines the statements: one round trip for all, applied in order,
            # so several changes to one job compose.
            await conn.executemany(_UPDATE_JOB, params)

        await self._write(run)

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
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
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
        where: list[str] = []
        args: list[Any] = []
        if projects is not None:
            args.append(list(projects))
            where.append(f"project = ANY(${len(args)}::text[])")
        if state is not None:
            args.append(state)
            where.append(f"state = ${len(args)}")
        if user is not None:
            args.append(user)
            where.append(f'"user" = ${len(args)}')
        if after is not None:
            args.append(after)
            where.append(f"id > ${len(args)}")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        args.append(limit)
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause}ORDER BY id LIMIT ${len(args)}", *args
        )
        return [job_from_row(r) for r in rows]

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs not in a terminal state, ascending id (recovery after a restart).

        Returns
        -------
        list of JobRecord
            The jobs.
        """
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {UNFINISHED} ORDER BY id")
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
        rows = await self._fetch(
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
        await self._write_execute(
            _INSERT_LOGS,
            [c.job_id for c in chunks],
            [c.attempt for c in chunks],
            [c.rank for c in chunks],
            [c.stream for c in chunks],
            [log_text(c.data) for c in chunks],
            [float(c.at) for c in chunks],
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
        args: list[Any] = [job_id]
        where = ["job_id = $1"]
        if rank is not None:
            args.append(rank)
            where.append(f"rank = ${len(args)}")
        if attempt is not None:
            args.append(attempt)
            where.append(f"attempt = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"seq > ${len(args)}")
        args.append(max(limit, 0))
        rows = await self._fetch(
            f"SELECT {LOG_COLUMNS} FROM job_logs WHERE {' AND '.join(where)} "
            f"ORDER BY seq LIMIT ${len(args)}",
            *args,
        )
        return [log_from_row(r) for r in rows]

    # Nodes -------------------------------------------------------------------------------

    async def put_node(self, node: NodeRecord) -> None:
        """Insert or replace a node.

        Parameters
        ----------
        node : NodeRecord
            The node; one with the same name is replaced.
        """
        await self._write_execute(
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
        rows = await self._fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1", name)
        return node_from_row(rows[0]) if rows else None

    async def list_nodes(self) -> list[NodeRecord]:
        """All nodes by name.

        Returns
        -------
        list of NodeRecord
            The nodes.
        """
        rows = await self._fetch(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY name")
        return [node_from_row(r) for r in rows]

    async def _delete(self, sql: str, key: str) -> bool:
        return bool(await self._write_fetch(sql, key))

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
        return await self._delete("DELETE FROM nodes WHERE name = $1 RETURNING 1", name)

    # Quotas and pools --------------------------------------------------------------------

    async def put_quota(self, quota: QuotaRecord) -> None:
        """Insert or replace a project's quota.

        Parameters
        ----------
        quota : QuotaRecord
            The quota; the project's previous one is replaced.
        """
        await self._write_execute(_PUT_QUOTA, *quota_params(quota))

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
        return await self._delete("DELETE FROM quotas WHERE project = $1 RETURNING 1", project)

    async def list_quotas(self) -> list[QuotaRecord]:
        """All quotas by project.

        Returns
        -------
        list of QuotaRecord
            The quotas.
        """
        rows = await self._fetch(f"SELECT {QUOTA_COLUMNS} FROM quotas ORDER BY project")
        return [quota_from_row(r) for r in rows]

    async def put_pool(self, pool: PoolRecord) -> None:
        """Insert or replace a pool.

        Parameters
        ----------
        pool : PoolRecord
            The pool; one with the same name is replaced.
        """
        await self._write_execute(_PUT_POOL, *pool_params(pool))

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
        return await self._delete("DELETE FROM pools WHERE name = $1 RETURNING 1", name)

    async def list_pools(self) -> list[PoolRecord]:
        """All pools by name.

        Returns
        -------
        list of PoolRecord
            The pools.
        """
        rows = await self._fetch(f"SELECT {POOL_COLUMNS} FROM pools ORDER BY name")
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
        rows = await self._fetch(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = $1 ORDER BY id",
            job_id,
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
        await self._write_execute(
            _INSERT_AUDIT,
            [float(e.at) for e in entries],
            [e.user for e in entries],
            [e.project for e in entries],
            [e.action for e in entries],
            [e.target for e in entries],
            [e.status for e in entries],
            [dumps(e.detail) for e in entries],
        )

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
        args: list[Any] = [-1 if after is None else after]
        where = ["id > $1"]
        if project is not None:
            args.append(project)
            where.append(f"project = ${len(args)}")
        args.append(max(limit, 0))
        rows = await self._fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT ${len(args)}",
            *args,
        )
        return [audit_from_row(r) for r in rows]

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
        rows = await self._fetch(
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

        async def run(conn: Any) -> int:
            gone = await conn.fetch(
                "DELETE FROM revoked_tokens WHERE expires_at <= $1 RETURNING 1", float(now)
            )
            keys = await conn.fetch(
                "DELETE FROM idempotency_keys WHERE expires_at <= $1 RETURNING 1", float(now)
            )
            return len(gone) + len(keys)

        n: int = await self._write(run)
        return n
