"""The small database interface the tracking store is written against.

The store's SQL is written once, with ``?`` placeholders, in the subset SQLite and PostgreSQL
share (``RETURNING``, ``ON CONFLICT``, ``EXISTS``, row values). A driver runs it: SQLite on
threads (its calls block), PostgreSQL through asyncpg with ``?`` rewritten to ``$n``. The few
places the dialects differ (an auto-increment key, ``WITHOUT ROWID``) are DDL words that
:data:`Driver.ddl` supplies.

Writes run in transactions (:meth:`Driver.transaction`); reads outside one see every committed
write. The SQLite driver keeps one write connection (a lock serialises transactions on it) and a
few read-only connections: WAL lets reads run while a write commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = ["Driver", "PostgresDriver", "Row", "SqliteDriver", "Tx"]

T = TypeVar("T")
Row = Sequence[Any]
_BUSY_TIMEOUT_S = 10.0
_READERS = 4


class Tx(Protocol):
    """Statements inside one transaction."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query (or a statement with ``RETURNING``); return its rows."""
        ...


class Driver(Protocol):
    """A database the tracking store can run its SQL on."""

    #: ``sqlite`` or ``postgresql``.
    dialect: str
    #: DDL words that differ: ``id`` (an auto-increment integer primary key), ``float``
    #: (a double), ``without_rowid`` (a clustered table's suffix).
    ddl: dict[str, str]

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        """Open a write transaction, committed when the block ends without an error."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read-only query outside any transaction."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...


def _connect(path: Path, *, write: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    # MLflow's LIKE is case-sensitive (ILIKE is the other one), as PostgreSQL's is.
    conn.execute("PRAGMA case_sensitive_like = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    if write:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    else:
        conn.execute("PRAGMA query_only = ON")
    return conn


class _SqliteTx:
    def __init__(self, driver: SqliteDriver) -> None:
        self._d = driver

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._d._write(lambda c: c.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._d._write(lambda c: c.executemany(sql, rows))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._d._write(lambda c: c.execute(sql, params).fetchall())


class SqliteDriver:
    """SQLite in WAL mode: one writer connection, a few readers, each call on a thread.

    The database file is created with mode 0600 (SQLite gives its ``-wal`` and ``-shm``
    files the same mode).

    Parameters
    ----------
    path
        The database file; its directory must exist.
    """

    dialect = "sqlite"
    ddl = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "float": "REAL",
        "without_rowid": "WITHOUT ROWID",
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="cplat-tracking-w")
        self._reader_pool = ThreadPoolExecutor(_READERS, thread_name_prefix="cplat-tracking-r")
        self._writer = _connect(path, write=True)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._lock = asyncio.Lock()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_pool, fn, self._writer)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Open a write transaction (``BEGIN IMMEDIATE``), committed at the block's end."""
        async with self._lock:
            await self._write(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteTx(self)
            except BaseException:
                # Shielded: a cancelled request must not leave the connection mid-transaction.
                await asyncio.shield(self._write(lambda c: c.execute("ROLLBACK")))
                raise
            await asyncio.shield(self._write(lambda c: c.execute("COMMIT")))

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, write=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read-only query on a reader thread."""
        loop = asyncio.get_running_loop()

        def run() -> list[Row]:
            return self._reader().execute(sql, params).fetchall()

        return await loop.run_in_executor(self._reader_pool, run)

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        self._reader_pool.shutdown(wait=True)
        self._writer_pool.shutdown(wait=True)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()


_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")


def to_dollar(sql: str) -> str:
    """Rewrite ``?`` placeholders as ``$1, $2, ...`` (question marks in literals stay)."""
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        if m.group(0) != "?":
            return m.group(0)
        n += 1
        return f"${n}"

    return _PLACEHOLDER.sub(sub, sql)


class _PgTx:
    def __init__(self, driver: PostgresDriver, conn: Any) -> None:
        self._d = driver
        self._c = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status: str = await self._c.execute(self._d.sql(sql), *params)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._c.executemany(self._d.sql(sql), rows)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._c.fetch(self._d.sql(sql), *params))


class PostgresDriver:
    """PostgreSQL through an asyncpg pool (the service's own database, its own tables).

    Parameters
    ----------
    pool
        An open ``asyncpg`` pool; :meth:`open` makes one from a DSN.
    """

    dialect = "postgresql"
    ddl = {
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "float": "DOUBLE PRECISION",
        "without_rowid": "",
    }

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._sql: dict[str, str] = {}

    @classmethod
    async def open(cls, dsn: str) -> PostgresDriver:
        """Connect a small pool to ``dsn``."""
        import asyncpg

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        return cls(pool)

    def sql(self, text: str) -> str:
        """Return ``text`` with PostgreSQL placeholders (cached per statement)."""
        out = self._sql.get(text)
        if out is None:
            out = self._sql[text] = to_dollar(text)
        return out

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Open a transaction on a pooled connection, committed at the block's end."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(self, conn)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query on a pooled connection."""
        return list(await self._pool.fetch(self.sql(sql), *params))

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()
