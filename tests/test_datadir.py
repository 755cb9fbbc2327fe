"""The data dir of ``cplat serve``: private modes, and one server at a time."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cplat.errors import InputError
from cplat.testing.service import SECRET
from cplat_server.datadir import LOCK_FILE, lock_data_dir, secure_data_dir

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from cplat.cli.main import main; sys.exit(main(sys.argv[1:]))"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secure_data_dir_tightens_what_is_there(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    db = data / "cplat.db"
    for f in (data / "cplat.db-wal", data / "cplat.db-shm", data / "jwt-secret"):
        f.write_text("")
        f.chmod(0o644)
    secure_data_dir(data, db)
    assert mode(data) == 0o700
    assert db.exists() and mode(db) == 0o600
    for name in ("cplat.db-wal", "cplat.db-shm", "jwt-secret"):
        assert mode(data / name) == 0o600, name
    # Never loosens: a stricter mode stays.
    db.chmod(0o400)
    secure_data_dir(data, db)
    assert mode(db) == 0o400
    fresh = tmp_path / "new" / "deeper"
    secure_data_dir(fresh, None)
    assert mode(fresh) == 0o700 and not list(fresh.iterdir())


def test_one_lock_per_data_dir(tmp_path: Path) -> None:
    lock = lock_data_dir(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert mode(tmp_path / LOCK_FILE) == 0o600
    with pytest.raises(InputError) as err:
        lock_data_dir(tmp_path)
    assert f"PID {os.getpid()}" in str(err.value) and err.value.field == "--data-dir"
    lock.release()
    lock.release()  # idempotent
    again = lock_data_dir(tmp_path)
    again.release()


def test_gitignore_keeps_the_default_data_dir_out() -> None:
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "cplat-data/" in lines


def _serve(data: Path) -> list[str]:
    return [sys.executable, "-c", CLI, "serve", "--data-dir", str(data), "--port", "0"]


def test_serve_makes_its_files_private_and_refuses_a_second_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # an existing, far too open data dir
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET}
    first = subprocess.Popen(
        [*_serve(data), "--no-local-agent"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        wal = data / "cplat.db-wal"
        while not wal.exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the server never opened its store"
            time.sleep(0.1)
        assert mode(data) == 0o700
        for name in ("cplat.db", "cplat.db-wal", "cplat.db-shm", LOCK_FILE):
            assert mode(data / name) == 0o600, name
        assert (data / LOCK_FILE).read_text().strip() == str(first.pid)
        second = subprocess.run(
            [*_serve(data), "--no-local-agent"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second
        assert f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one runs on, undisturbed
    finally:
        first.terminate()
        first.wait(timeout=60)
    # Once it has stopped, the data dir is free again.
    lock_data_dir(data).release()
