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

from cplat.store.base import AuditIn, IdempotencyIn, StoreError
from cplat.store.schema import migrate_sqlite
from cplat.store.sql import (
    UPDATE_JOB,
    AuditRow,
    JobRow,
    LogRow,
    SqlStore,
    Statement,
    audit_entries,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

# RETURNING (used to hand ids back in input order) arrived in SQLite 3.35.
_MIN_SQLITE = (3, 35, 0)
# A bound on one transaction keeps a burst of writes from delaying every answer behind one huge
# commit, and bounds the memory of the batch.
_MAX_BATCH = 1024
_BUSY_TIMEOUT_S = 10.0

# Writes of many rows run one statement per row on the writer's connection (executemany where
# no id comes back): inside one transaction that costs little in SQLite, and keeps input order.
_INSERT_JOB = (
    'INSERT INTO jobs (project, "user", name, state, spec, reason, submitted_at, updated_at, '
    "token_id, token_expires_at) VALUES (?, ?, ?, 'PENDING', ?, 'queued', ?, ?, ?, ?) "
    "RETURNING id"
)
_INSERT_EVENT = "INSERT INTO job_events (job_id, at, state, message) VALUES (?, ?, ?, ?)"
_INSERT_LOG = (
    "INSERT INTO job_logs (job_id, attempt, rank, stream, data, at) VALUES (?, ?, ?, ?, ?, ?)"
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


def _insert_jobs(
    conn: sqlite3.Connection, rows: Sequence[JobRow], audit: Sequence[AuditIn]
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
        conn.executemany(_INSERT_AUDIT, audit_entries(audit, ids))
    return ids


class SqliteStore(SqlStore):
    """The embedded store: one SQLite file in WAL mode, written through group commit.

    Open it with :meth:`open`; every method of :class:`cplat.store.base.Store` is a coroutine
    that never blocks the event loop (their SQL is shared with the PostgreSQL store, in
    :class:`cplat.store.sql.SqlStore`). A write is committed and synced before its coroutine
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

    # The backend's part of SqlStore -------------------------------------------------------

    def placeholder(self, n: int) -> str:
        """Spell parameter ``n``: ``?n`` (numbered, so a statement may use one twice)."""
        return f"?{n}"

    async def _write_statements(self, statements: Sequence[Statement]) -> list[list[Any]]:
        spelled = [(self.sql(sql), params) for sql, params in statements]

        def run(conn: sqlite3.Connection) -> list[list[Any]]:
            return [conn.execute(sql, params).fetchall() for sql, params in spelled]

        return await self._write(run)

    async def _insert_jobs(self, rows: list[JobRow], audit: Sequence[AuditIn]) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            return _insert_jobs(conn, rows, audit)

        return await self._write(run)

    async def _claim_key(
        self, row: JobRow, key: IdempotencyIn, audit: Sequence[AuditIn]
    ) -> tuple[int, bool, str]:
        find = self._find_key(key)

        def run(conn: sqlite3.Connection) -> tuple[int, bool, str]:
            # The check, the job and the key share the write transaction, and SQLite has one
            # writer at a time (across processes too): two submissions with one key cannot
            # both miss each other.
            found = conn.execute(*find).fetchall()
            if found:
                return int(found[0][0]), False, str(found[0][1])
            [job_id] = _insert_jobs(conn, [row], audit)
            if not conn.execute(*self._put_key(key, job_id)).fetchall():
                # Cannot happen under the write lock; fail rather than duplicate.
                raise StoreError("the idempotency key was taken concurrently")
            return job_id, True, key.fingerprint

        return await self._write(run)

    async def _apply_changes(self, params: list[tuple[Any, ...]]) -> None:
        # SQLite cannot put the UPDATE in a CTE: its RETURNING tells whether the job exists and
        # which state the event records.
        update = self.sql(UPDATE_JOB + "\nRETURNING state")

        def run(conn: sqlite3.Connection) -> None:
            for p in params:
                updated = conn.execute(update, p[:12]).fetchall()
                if updated and p[12] is not None:
                    conn.execute(_INSERT_EVENT, (p[0], p[1], updated[0][0], p[12]))

        await self._write(run)

    async def _insert_logs(self, rows: list[LogRow]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_LOG, rows)

        await self._write(run)

    async def _insert_audit(self, rows: list[AuditRow]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_AUDIT, rows)

        await self._write(run)
