"""The data dir of ``cplat serve``: private to the server's user, and used by one server at a time.

The data dir holds the token signing secret, the embedded database and the local agent's work
dir, so it is kept at mode 0700 (an existing looser one is tightened at start) and the
database files at 0600. SQLite creates its ``-wal`` and ``-shm`` files with the mode of the
database file, so creating that file 0600 before SQLite opens it covers them too.

Two servers on one data dir would each run the same jobs and fight over the local agent's
tasks; :func:`lock_data_dir` takes an exclusive ``flock`` on ``serve.lock`` there (released by
the kernel when the process ends, however it ends) and writes the holder's PID into it, so that
a second server can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from cplat.errors import InputError

__all__ = ["LOCK_FILE", "DataDirLock", "lock_data_dir", "secure_data_dir"]

LOCK_FILE = "serve.lock"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    """Set ``path``'s permission bits to at most ``mode`` (never loosen them)."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(current & mode)


def secure_data_dir(data_dir: Path, db_file: Path | None = None) -> None:
    """Create the data dir 0700 (tightening an existing one) and the database file 0600.

    Parameters
    ----------
    data_dir
        The server's data dir.
    db_file
        The SQLite database file (None for PostgreSQL): created empty (a valid empty
        database) with mode 0600 if missing, and it, its ``-wal``, ``-shm`` and ``-journal``
        files tightened to 0600 if present.

    Raises
    ------
    InputError
        When a directory or file cannot be created or its mode changed.
    """
    try:
        data_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _tighten(data_dir, _DIR_MODE)
        secret = data_dir / "jwt-secret"
        if secret.exists():
            _tighten(secret, _FILE_MODE)
        if db_file is not None:
            db_file.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            # O_CREAT with 0600: the file never exists with a looser mode, even for a moment.
            os.close(os.open(db_file, os.O_RDWR | os.O_CREAT, _FILE_MODE))
            for suffix in ("", "-wal", "-shm", "-journal"):
                f = db_file.with_name(db_file.name + suffix)
                if f.exists():
                    _tighten(f, _FILE_MODE)
    except OSError as exc:
        raise InputError(
            f"cannot secure the data dir {data_dir} ({exc.strerror or exc})", field="--data-dir"
        ) from None


class DataDirLock:
    """The exclusive lock of one server on its data dir; :meth:`release` (or exit) frees it.

    Parameters
    ----------
    path
        The lock file.
    fd
        Its open, locked descriptor.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data dir for this process, or say which process has it.

    Parameters
    ----------
    data_dir
        The server's data dir (it must exist).

    Returns
    -------
    DataDirLock
        The lock; keep it for as long as the server runs.

    Raises
    ------
    InputError
        When another process holds the lock (naming its PID), or the lock file cannot be
        opened.
    """
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise InputError(
            f"cannot open the lock file {path} ({exc.strerror or exc})", field="--data-dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"PID {holder}" if holder else "another process"
        raise InputError(
            f"the data dir {data_dir} is in use by another cplat serve ({who}, which holds "
            f"{path}); stop it first, or give this one another --data-dir",
            field="--data-dir",
        ) from None
    except OSError as exc:
        os.close(fd)
        raise InputError(
            f"cannot lock {path} ({exc.strerror or exc})", field="--data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
