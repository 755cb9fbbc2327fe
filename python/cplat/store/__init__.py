"""Durable state of the live service: :func:`open_store` picks a backend from a URL.

``sqlite:///abs/path.db``, ``sqlite://relative.db`` or a plain filesystem path open the embedded
SQLite store (parent directories are created); ``postgresql://...`` or ``postgres://...`` open
the PostgreSQL store. The record types of :mod:`cplat.store.base` are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from cplat.store.base import (
    JOB_STATES,
    NODE_STATES,
    TERMINAL_STATES,
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
    Store,
    StoreError,
)

__all__ = [
    "JOB_STATES",
    "NODE_STATES",
    "TERMINAL_STATES",
    "AuditIn",
    "AuditRecord",
    "CheckpointIn",
    "CheckpointRecord",
    "EventRecord",
    "IdempotencyIn",
    "IdempotentResult",
    "JobChange",
    "JobRecord",
    "LogChunk",
    "LogRecord",
    "NewJob",
    "NodeRecord",
    "PoolRecord",
    "QuotaRecord",
    "RevokedToken",
    "Store",
    "StoreError",
    "open_store",
    "sqlite_path",
]

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> Path | None:
    """Return the database file an SQLite store URL names (None for PostgreSQL URLs).

    Parameters
    ----------
    url : str
        ``sqlite:///abs/path.db``, ``sqlite://relative.db``, a plain path, or a PostgreSQL URL.

    Returns
    -------
    Path or None
        The file (relative paths stay relative to the working directory).

    Raises
    ------
    ValueError
        For an empty URL or an unknown scheme.
    """
    if url.startswith(_POSTGRES):
        return None
    if url.startswith(_SQLITE):
        # sqlite:///abs keeps its leading slash; sqlite://rel is relative.
        path = url[len(_SQLITE) :]
    elif "://" in url:
        raise ValueError(
            f"unknown store URL {url!r}: use sqlite:///path.db, a plain path, or postgresql://..."
        )
    else:
        path = url
    if not path:
        raise ValueError(f"store URL {url!r} names no database file")
    return Path(path)


async def open_store(url: str) -> Store:
    """Open (creating and migrating as needed) the store a URL names.

    Parameters
    ----------
    url : str
        ``sqlite:///abs/path.db``, ``sqlite://relative.db``, a plain filesystem path, or
        ``postgresql://user:password@host:port/database`` (``postgres://`` too).

    Returns
    -------
    Store
        The open store; close it with ``await store.close()``.

    Raises
    ------
    ValueError
        For an unknown scheme or a URL without a database.
    StoreError
        When the database cannot be opened or its schema is newer than this code.
    """
    path = sqlite_path(url)
    if path is None:
        # Imported here so that the embedded store works without asyncpg installed.
        from cplat.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    from cplat.store.sqlite import SqliteStore

    path.parent.mkdir(parents=True, exist_ok=True)
    return await SqliteStore.open(path)
