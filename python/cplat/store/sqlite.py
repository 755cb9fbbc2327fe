"""SQLite store: WAL, ``synchronous=FULL``, group commit on one writer thread.

One dedicated thread owns the only write connection. Coroutines queue their writes and wait; the
thread takes everything queued, runs it in one transaction (each write in its own savepoint, so
that one failing write does not sink its neighbours), commits, and only then resolves the waiting
futures. A commit therefore costs one WAL fsync however many writes it carries, which is what
lets many concurrent writers each see a durable answer quickly. Reads run on a small pool of
threads with their own read-only connections; WAL lets them proceed while the writer commits, and
they see every write whose coroutine has returned.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    migrate_sqlite,
    new_job_record,
    node_from_row,
    pool_from_row,
    pool_params,
    quota_from_row,
    quota_params,
    revoked_from_row,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

# RETURNING (used to hand ids back in input order) arrived in SQLite 3.35.
_MIN_SQLITE = (3, 35, 0)
# A bound on one transaction keeps a burst of writes from delaying every answer behind one huge
# commit, and bounds the memory of the batch.
_MAX_BATCH = 1024
_BUSY_TIMEOUT_S = 10.0

_INSERT_JOB = (
    'INSERT INTO jobs (project, "user", name, state, spec, reason, submitted_at, updated_at, '
    "token_id, token_expires_at) VALUES (?, ?, ?, 'PENDING', ?, 'queued', ?, ?, ?, ?) "
    "RETURNING id"
)
_FIND_KEY = (
    'SELECT job_id, fingerprint FROM idempotency_keys WHERE project = ? AND "user" = ? '
    "AND idem_key = ? AND expires_at > ?"
)
# An expired entry under the same key is replaced: the key is free again.
_PUT_KEY = """INSERT INTO idempotency_keys
    (project, "user", idem_key, fingerprint, job_id, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project, "user", idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,
    job_id = excluded.job_id, created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE idempotency_keys.expires_at <= excluded.created_at"""
_REVOKE = f"""INSERT INTO revoked_tokens ({REVOKED_COLUMNS}) VALUES (?, ?, ?, ?)
ON CONFLICT (token_id) DO NOTHING"""
_INSERT_EVENT = "INSERT INTO job_events (job_id, at, state, message) VALUES (?, ?, ?, ?)"
_UPDATE_JOB = """UPDATE jobs SET
    updated_at = ?2,
    state = COALESCE(?3, state),
    reason = COALESCE(?4, reason),
    started_at = CASE WHEN ?5 THEN NULL ELSE COALESCE(?6, started_at) END,
    finished_at = CASE WHEN ?7 THEN NULL ELSE COALESCE(?8, finished_at) END,
    exit_code = CASE WHEN ?9 THEN NULL ELSE COALESCE(?10, exit_code) END,
    placement = COALESCE(?11, placement),
    attempt = COALESCE(?12, attempt)
WHERE id = ?1
RETURNING state"""
_INSERT_LOG = (
    "INSERT INTO job_logs (job_id, attempt, rank, stream, data, at) VALUES (?, ?, ?, ?, ?, ?)"
)
_PUT_NODE = f"""INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, spec = excluded.spec,
    labels = excluded.labels, registered_at = excluded.registered_at,
    heartbeat_at = excluded.heartbeat_at"""
_PUT_QUOTA = f"""INSERT INTO quotas ({QUOTA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
_PUT_POOL = f"""INSERT INTO pools ({POOL_COLUMNS}) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET borrowing_cpu_milli = excluded.borrowing_cpu_milli,
    borrowing_memory_mib = excluded.borrowing_memory_mib,
    borrowing_gpu_milli = excluded.borrowing_gpu_milli,
    description = excluded.description"""
_INSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (job_id, attempt, step, uri, size_bytes, kind, parent, complete, at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
)
_INSERT_AUDIT = (
    'INSERT INTO audit (at, "user", project, action, target, status, detail) '
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

_WriteFn = Callable[[sqlite3.Connection], Any]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class _Op:
    """A queued write: what to run on the write connection, and whom to tell."""

    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: _WriteFn | None, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn  # None asks the writer to stop
        self.future = future
        self.loop = loop


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc):
        return StoreError("the write names a job that does not exist")
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite: {exc}")
    return exc


def _settle_now(outcomes: list[_Outcome]) -> None:
    for future, result, exc in outcomes:
        # The waiting coroutine may have been cancelled; its write stands regardless.
        if future.done():
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


def _settle(ops: Sequence[_Op], results: Sequence[tuple[Any, BaseException | None]]) -> None:
    # One wake-up per event loop per batch rather than one per write: each call_soon_threadsafe
    # writes to the loop's self-pipe, which would otherwise dominate small writes.
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = defaultdict(list)
    for op, (result, exc) in zip(ops, results, strict=True):
        by_loop[op.loop].append((op.future, result, None if exc is None else _store_error(exc)))
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_now, outcomes)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting any more


def _connect(path: Path, *, write: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=_BUSY_TIMEOUT_S,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        check_same_thread=write,  # read connections are closed by close(), on another thread
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: SQLite cannot use WAL here (journal_mode stays {mode})")
        # FULL syncs the WAL at every commit: an answered write survives power loss, not just
        # a killed process (NORMAL would only guarantee the latter).
        conn.execute("PRAGMA synchronous=FULL")
        if write:
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _fsync_dir(directory: Path) -> None:
    # The database and its -wal file may have just been created: their directory entries must
    # reach the disk too, or a power loss could forget files whose contents were synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; nothing more can be done there
    finally:
        os.close(fd)


# project, user, name, spec JSON, submitted_at, token_id, token_expires_at
_JobRow = tuple[str, str, str, str, float, str, float | None]


def _job_row(j: NewJob) -> _JobRow:
    exp = None if j.token_expires_at is None else float(j.token_expires_at)
    return (j.project, j.user, j.name, dumps(j.spec), float(j.submitted_at), j.token_id, exp)


def _insert_jobs(
    conn: sqlite3.Connection, rows: Sequence[_JobRow], audit: Sequence[AuditIn]
) -> list[int]:
    # One INSERT per job: SQLite does not promise the order of a multi-row RETURNING.
    ids = [
        int(conn.execute(_INSERT_JOB, (*r[:5], r[4], r[5], r[6])).fetchall()[0][0]) for r in rows
    ]
    conn.executemany(
        _INSERT_EVENT,
        [(job_id, r[4], "PENDING", "submitted") for job_id, r in zip(ids, rows, strict=True)],
    )
    if audit:
        conn.executemany(_INSERT_AUDIT, [(*a[:6], dumps(a[6])) for a in audit_rows(audit, ids)])
    return ids


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, written through group commit.

    Open it with :meth:`open`; every method of :class:`cplat.store.base.Store` is a coroutine
    that never blocks the event loop. A write is committed and synced before its coroutine
    returns; if the waiting coroutine is cancelled, its write may still be committed.

    Parameters
    ----------
    path : path-like
        The database file.
    readers : int
        Threads (each with its own connection) serving reads.
    """

    def __init__(self, path: str | os.PathLike[str], *, readers: int = 2) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self._path = Path(path)
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._writer_main, name="cplat-store-writer", daemon=True
        )
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="cplat-store-read")
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._ready: asyncio.Future[None] | None = None
        self._ready_loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, readers: int = 2) -> SqliteStore:
        """Open (creating if needed) and migrate a database file.

        Parameters
        ----------
        path : path-like
            The database file; its directory must exist.
        readers : int
            Threads serving reads.

        Returns
        -------
        SqliteStore
            The open store.

        Raises
        ------
        StoreError
            When the file cannot be opened, SQLite is too old, or the schema is newer than
            this code.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: cplat needs 3.35 or newer"
            )
        store = cls(path, readers=readers)
        await store._start()
        return store

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # Plumbing ------------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._started:
            raise RuntimeError("SqliteStore already started")
        self._started = True
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._ready_loop = loop
        self._writer.start()
        try:
            await self._ready
        except BaseException:
            self._closed = True
            self._readers.shutdown(wait=False)
            raise

    def _writer_main(self) -> None:
        assert self._ready is not None and self._ready_loop is not None
        try:
            conn = _connect(self._path, write=True)
            try:
                migrate_sqlite(conn)
            except BaseException:
                conn.close()
                raise
            _fsync_dir(self._path.parent)
        except BaseException as exc:
            failed: list[_Outcome] = [(self._ready, None, _store_error(exc))]
            self._ready_loop.call_soon_threadsafe(_settle_now, failed)
            return
        ready: list[_Outcome] = [(self._ready, None, None)]
        self._ready_loop.call_soon_threadsafe(_settle_now, ready)

        stop: list[_Op] = []
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = [op for op in batch if op.fn is None]
            self._run_batch(conn, [op for op in batch if op.fn is not None])
        # Writes that raced close() were accepted before the store was marked closed: honour
        # them rather than leave their coroutines waiting forever.
        late: list[_Op] = []
        while True:
            try:
                late.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._run_batch(conn, [op for op in late if op.fn is not None])
        conn.close()
        _settle(stop, [(None, None)] * len(stop))

    def _run_batch(self, conn: sqlite3.Connection, ops: list[_Op]) -> None:
        if not ops:
            return
        results: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                assert op.fn is not None
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((None, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((result, None))
            conn.execute("COMMIT")
        except Exception as exc:
            # The transaction itself failed (disk full, I/O error, ...): nothing of the batch
            # is committed, so every write of it fails.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            results = []
            for _ in ops:
                failure = StoreError(f"sqlite: transaction failed: {exc}")
                failure.__cause__ = exc
                results.append((None, failure))
        _settle(ops, results)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop))
        return await future

    def _read_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path, write=False)
            self._local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        return conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._read_conn())
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        def run(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return await self._read(run)

    def _shutdown_readers(self) -> None:
        self._readers.shutdown(wait=True)
        if self._writer.ident is not None:
            self._writer.join()
        with self._read_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()

    async def close(self) -> None:
        """Commit every queued write, then close all connections (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._close_done is not None:
            await asyncio.shield(self._close_done)
            return
        self._close_done = loop.create_future()
        self._closed = True
        try:
            if self._writer.is_alive():
                stopped: asyncio.Future[None] = loop.create_future()
                self._queue.put(_Op(None, stopped, loop))
                await stopped
            await loop.run_in_executor(None, self._shutdown_readers)
        finally:
            self._close_done.set_result(None)

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
        rows = [_job_row(j) for j in jobs]

        def run(conn: sqlite3.Connection) -> list[int]:
            return _insert_jobs(conn, rows, audit)

        ids = await self._write(run)
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
        row = _job_row(job)

        def run(conn: sqlite3.Connection) -> tuple[int, bool, str]:
            # The check, the job and the key share the write transaction, and SQLite has one
            # writer at a time (across processes too): two submissions with one key cannot
            # both miss each other.
            found = conn.execute(
                _FIND_KEY, (key.project, key.user, key.key, key.created_at)
            ).fetchall()
            if found:
                return int(found[0][0]), False, str(found[0][1])
            [job_id] = _insert_jobs(conn, [row], audit)
            stored = conn.execute(
                _PUT_KEY + " RETURNING job_id",
                (
                    key.project,
                    key.user,
                    key.key,
                    key.fingerprint,
                    job_id,
                    key.created_at,
                    key.expires_at,
                ),
            ).fetchall()
            if not stored:  # cannot happen under the write lock; fail rather than duplicate
                raise StoreError("the idempotency key was taken concurrently")
            return job_id, True, key.fingerprint

        job_id, created, fingerprint = await self._write(run)
        if created:
            return IdempotentResult(new_job_record(job_id, row), True, fingerprint)
        rec = await self.get_job(job_id)
        if rec is None:  # the key's foreign key keeps its job: only a damaged database
            raise StoreError(f"idempotency key {key.key!r} names job {job_id}, which is gone")
        return IdempotentResult(rec, False, fingerprint)

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

        def run(conn: sqlite3.Connection) -> None:
            for p in params:
                updated = conn.execute(_UPDATE_JOB, p[:12]).fetchall()
                if updated and p[12] is not None:
                    conn.execute(_INSERT_EVENT, (p[0], p[1], updated[0][0], p[12]))

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
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
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
        params: list[Any] = []
        if projects is not None:
            where.append(f"project IN ({', '.join('?' * len(projects))})")
            params.extend(projects)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if user is not None:
            where.append('"user" = ?')
            params.append(user)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        params.append(limit)
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause}ORDER BY id LIMIT ?", params
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
            f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (job_id, -1 if after is None else after, max(limit, 0)),
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
        rows = [(c.job_id, c.attempt, c.rank, c.stream, log_text(c.data), c.at) for c in chunks]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_LOG, rows)

        await self._write(run)

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
        where = ["job_id = ?"]
        params: list[Any] = [job_id]
        if rank is not None:
            where.append("rank = ?")
            params.append(rank)
        if attempt is not None:
            where.append("attempt = ?")
            params.append(attempt)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        params.append(max(limit, 0))
        rows = await self._fetch(
            f"SELECT {LOG_COLUMNS} FROM job_logs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            params,
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
        row = (
            node.name,
            node.state,
            dumps(node.spec),
            dumps(node.labels),
            node.registered_at,
            node.heartbeat_at,
        )

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(_PUT_NODE, row)

        await self._write(run)

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
        rows = await self._fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?", (name,))
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
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, (key,)).rowcount > 0

        return await self._write(run)

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
        return await self._delete("DELETE FROM nodes WHERE name = ?", name)

    # Quotas and pools --------------------------------------------------------------------

    async def put_quota(self, quota: QuotaRecord) -> None:
        """Insert or replace a project's quota.

        Parameters
        ----------
        quota : QuotaRecord
            The quota; the project's previous one is replaced.
        """
        row = quota_params(quota)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(_PUT_QUOTA, row)

        await self._write(run)

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
        return await self._delete("DELETE FROM quotas WHERE project = ?", project)

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
        row = pool_params(pool)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(_PUT_POOL, row)

        await self._write(run)

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
        return await self._delete("DELETE FROM pools WHERE name = ?", name)

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
            int(ck.complete),
            ck.at,
        )

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_INSERT_CHECKPOINT, row).fetchall()[0][0])

        ck_id = await self._write(run)
        return checkpoint_from_row((ck_id, *row))

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
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? ORDER BY id",
            (job_id,),
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
        rows = [
            (e.at, e.user, e.project, e.action, e.target, e.status, dumps(e.detail))
            for e in entries
        ]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_AUDIT, rows)

        await self._write(run)

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
        where = ["id > ?"]
        params: list[Any] = [-1 if after is None else after]
        if project is not None:
            where.append("project = ?")
            params.append(project)
        params.append(max(limit, 0))
        rows = await self._fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            params,
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
        row = (entry.token_id, entry.revoked_at, entry.expires_at, entry.revoked_by)

        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(_REVOKE, row).rowcount > 0

        return await self._write(run)

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
            f"SELECT {REVOKED_COLUMNS} FROM revoked_tokens WHERE expires_at > ? ORDER BY token_id",
            (now,),
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

        def run(conn: sqlite3.Connection) -> int:
            gone = conn.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?", (now,))
            keys = conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
            return int(gone.rowcount) + int(keys.rowcount)

        return await self._write(run)
