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

from cplat.store.base import AuditIn, IdempotencyIn, StoreError
from cplat.store.schema import migrate_postgres
from cplat.store.sql import (
    UPDATE_JOB,
    AuditRow,
    JobRow,
    LogRow,
    Query,
    SqlStore,
    Statement,
    audit_entries,
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
_UPDATE_JOB = f"""
WITH updated AS (
{UPDATE_JOB}
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


class _KeyTakenError(Exception):
    """A concurrent transaction committed the same idempotency key first."""


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (at least one) as one list per column: the arrays ``unnest`` takes."""
    return [list(c) for c in zip(*rows, strict=True)]


async def _insert_jobs(conn: Any, rows: Sequence[JobRow]) -> list[int]:
    """Insert jobs and their first events in one statement; their ids, ascending."""
    inserted = await conn.fetch(_CREATE_JOBS, *_columns(rows))
    ids = sorted(int(r[0]) for r in inserted)
    if len(ids) != len(rows):
        raise StoreError(f"postgres: inserted {len(ids)} jobs of {len(rows)}")
    return ids


async def _insert_audit(conn: Any, rows: Sequence[AuditRow]) -> None:
    """Insert audit rows (as :func:`cplat.store.sql.audit_entries` makes them) in one statement."""
    await conn.execute(_INSERT_AUDIT, *_columns(rows))


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
        jobs: list[JobRow] | None = None,
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


class PostgresStore(SqlStore):
    """The shared store: PostgreSQL through an asyncpg pool, writes through group commit.

    Open it with :meth:`open`. Tables live in the first schema of the connection's
    ``search_path`` (a DSN may set it: ``...?search_path=cplat``). The methods of
    :class:`cplat.store.base.Store` and their SQL are shared with the SQLite store, in
    :class:`cplat.store.sql.SqlStore`; this class is the driver and the write path.


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
                        audit: list[AuditRow] = []
                        for op, rows in zip(ops[i:end], group, strict=True):
                            mine = ids[start : start + len(rows)]
                            results.append(mine)
                            audit += audit_entries(op.audit, mine)
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
        jobs: list[JobRow] | None = None,
        audit: list[AuditIn] | None = None,
    ) -> Any:
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(fn, future, jobs, audit))
        return await future

    async def _write_execute(self, sql: str, *args: Any) -> None:
        async def run(conn: Any) -> None:
            await conn.execute(sql, *args)

        await self._write(run)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._check_open()
        with _errors():
            return list(await self._pool.fetch(sql, *params))

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

    # The backend's part of SqlStore -------------------------------------------------------

    def placeholder(self, n: int) -> str:
        """Spell parameter ``n``: ``$n``, the spelling the shared SQL is written in."""
        return f"${n}"

    def _match_any(self, query: Query, column: str, values: Sequence[Any]) -> str:
        # One array parameter: the statement text (and its prepared plan) is the same for
        # any number of values.
        return f"{column} = ANY({query.param(list(values))}::text[])"

    async def _write_statements(self, statements: Sequence[Statement]) -> list[list[Any]]:
        spelled = [(self.sql(sql), params) for sql, params in statements]

        async def run(conn: Any) -> list[list[Any]]:
            return [list(await conn.fetch(sql, *params)) for sql, params in spelled]

        rows: list[list[Any]] = await self._write(run)
        return rows

    async def _insert_jobs(self, rows: list[JobRow], audit: Sequence[AuditIn]) -> list[int]:
        async def run(conn: Any) -> list[int]:
            # Used alone only when a merged batch failed and each write is redone by itself.
            ids = await _insert_jobs(conn, rows)
            if audit:
                await _insert_audit(conn, audit_entries(audit, ids))
            return ids

        ids: list[int] = await self._write(run, rows, list(audit))
        return ids

    async def _claim_key(
        self, row: JobRow, key: IdempotencyIn, audit: Sequence[AuditIn]
    ) -> tuple[int, bool, str]:
        find, find_params = self._find_key(key)

        async def run(conn: Any) -> tuple[int, bool, str]:
            found = await conn.fetchrow(find, *find_params)
            if found is not None:
                return int(found[0]), False, str(found[1])
            [job_id] = await _insert_jobs(conn, [row])
            if audit:
                await _insert_audit(conn, audit_entries(audit, [job_id]))
            put, put_params = self._put_key(key, job_id)
            if await conn.fetchrow(put, *put_params) is None:
                # Another server's transaction holds the key. Raising undoes this job with
                # the whole batch; the writer then redoes each write alone, and this one finds
                # the committed key at its first statement.
                raise _KeyTakenError(key.key)
            return job_id, True, key.fingerprint

        for _ in range(3):
            try:
                claimed: tuple[int, bool, str] = await self._write(run)
                return claimed
            except _KeyTakenError:
                continue  # lost a race twice in a row to the same key: look again
        raise StoreError(f"idempotency key {key.key!r} is contended; retry the submission")

    async def _apply_changes(self, params: list[tuple[Any, ...]]) -> None:
        if len(params) == 1:
            await self._write_execute(_UPDATE_JOB, *params[0])
            return

        async def run(conn: Any) -> None:
            # executemany pipelines the statements: one round trip for all, applied in order,
            # so several changes to one job compose.
            await conn.executemany(_UPDATE_JOB, params)

        await self._write(run)

    async def _insert_logs(self, rows: list[LogRow]) -> None:
        await self._write_execute(_INSERT_LOGS, *_columns(rows))

    async def _insert_audit(self, rows: list[AuditRow]) -> None:
        await self._write_execute(_INSERT_AUDIT, *_columns(rows))
