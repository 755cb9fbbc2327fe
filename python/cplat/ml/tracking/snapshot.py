"""The environment a run was submitted from: interpreter, packages, source tree, command.

``cplat job submit --experiment`` takes a snapshot on the submitting machine (the user's
working dir and interpreter) and sends it with the job; the service records it on the job's
run as ``cplat.snapshot.*`` tags and as the artifact ``cplat/snapshot.json``
(:mod:`cplat.ml.tracking.jobs`). What it holds:

- the interpreter: version, implementation, path; the platform;
- ``python -m pip freeze`` of that interpreter, time-bounded, at most :data:`MAX_FREEZE_LINES`
  lines and :data:`MAX_FREEZE_BYTES` bytes (``truncated`` says when more was cut), with the
  SHA-256 of the whole output so that two environments compare even when truncated;
- the git commit of the working dir and whether it is dirty, with the SHA-256 of
  ``git diff HEAD`` plus the names of untracked files (not the diff itself: it may be large
  and hold secrets); ``null`` when the working dir is not in a git work tree;
- the command, the working dir, and the NAMES of the environment variables. Values are never
  read into the snapshot: they are where tokens and passwords live.

:func:`check_snapshot` is the service's side: it accepts only this shape, bounded, and refuses
anything that looks like an environment value (a name holding ``=``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cplat.errors import InputError

__all__ = [
    "MAX_FREEZE_BYTES",
    "MAX_FREEZE_LINES",
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_VERSION",
    "check_snapshot",
    "git_state",
    "pip_freeze",
    "snapshot_tags",
    "take_snapshot",
]

SNAPSHOT_VERSION = 1
#: Most lines and bytes of ``pip freeze`` kept (a large environment has about 500 lines).
MAX_FREEZE_LINES = 5000
MAX_FREEZE_BYTES = 256 * 1024
#: Most environment variable names kept, and the longest name.
MAX_ENV_NAMES = 2000
MAX_ENV_NAME = 256
#: Largest snapshot the service accepts, as JSON.
MAX_SNAPSHOT_BYTES = 512 * 1024
#: Seconds ``pip freeze`` and each git command may take before they are given up.
FREEZE_TIMEOUT = 30.0
GIT_TIMEOUT = 10.0
#: Longest tag value of the tracking store (``env_names`` is cut to fit).
_TAG_LIMIT = 8000
_SHORT = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# POSIX names are [A-Za-z_][A-Za-z0-9_]*; shells accept more, but never '=' or NUL.
_ENV_NAME = re.compile(r"^[^=\x00]{1,256}$")


def _run(
    argv: Sequence[str], cwd: Path | None, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    # Never prompt, never take the index lock a concurrent git in the same tree may want.
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "PIP_NO_INPUT": "1"})
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return (text.splitlines() or [""])[-1][:500]


def pip_freeze(
    python: str = sys.executable,
    timeout: float = FREEZE_TIMEOUT,
    max_lines: int = MAX_FREEZE_LINES,
    max_bytes: int = MAX_FREEZE_BYTES,
) -> dict[str, Any]:
    """Run ``python -m pip freeze`` and return its packages, bounded.

    Parameters
    ----------
    python
        The interpreter whose packages to list (default: the running one).
    timeout
        Seconds before the command is killed; the result then holds ``error``.
    max_lines, max_bytes
        What is kept of the output; the rest is cut and ``truncated`` is true.

    Returns
    -------
    dict
        ``packages`` (lines), ``count`` (all lines, kept or not), ``truncated``, ``sha256``
        (of the whole output, None on failure) and ``error`` (None on success).
    """
    out: dict[str, Any] = {
        "packages": [],
        "count": 0,
        "truncated": False,
        "sha256": None,
        "error": None,
    }
    try:
        done = _run([python, "-m", "pip", "freeze", "--disable-pip-version-check"], None, timeout)
    except subprocess.TimeoutExpired:
        out["error"] = f"pip freeze took longer than {timeout:g} s"
        return out
    except OSError as exc:
        out["error"] = f"cannot run {python}: {exc.strerror or exc}"
        return out
    if done.returncode != 0:
        out["error"] = f"pip freeze failed ({done.returncode}): {_first_line(done.stderr)}"
        return out
    lines = [ln for ln in done.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
    kept: list[str] = []
    size = 0
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if len(kept) >= max_lines or size > max_bytes:
            out["truncated"] = True
            break
        kept.append(line)
    out.update(packages=kept, count=len(lines), sha256=hashlib.sha256(done.stdout).hexdigest())
    return out


def git_state(cwd: Path, timeout: float = GIT_TIMEOUT) -> dict[str, Any] | None:
    """Return the git commit of ``cwd`` and a hash of its uncommitted changes.

    Returns
    -------
    dict or None
        None when ``cwd`` is not inside a git work tree (or git is not installed). Otherwise
        ``commit`` (None in a repository without commits), ``branch`` (None when detached),
        ``dirty``, ``diff_sha256`` (SHA-256 of ``git diff HEAD --binary``, a NUL, and the
        NUL-separated names of untracked files not ignored; None when clean), ``untracked``
        (how many) and ``error`` (what failed, if anything).
    """
    try:
        inside = _run(["git", "rev-parse", "--is-inside-work-tree"], cwd, timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if inside.returncode != 0 or inside.stdout.strip() != b"true":
        return None
    out: dict[str, Any] = {
        "commit": None,
        "branch": None,
        "dirty": False,
        "diff_sha256": None,
        "untracked": 0,
        "error": None,
    }
    try:
        head = _run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd, timeout)
        if head.returncode == 0:
            out["commit"] = head.stdout.decode("ascii", "replace").strip()
        branch = _run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd, timeout)
        if branch.returncode == 0:
            out["branch"] = branch.stdout.decode("utf-8", "replace").strip()[:_SHORT]
        # Without a commit everything tracked is new: diff against the empty tree instead.
        base = "HEAD" if out["commit"] else "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        diff = _run(["git", "diff", base, "--binary", "--no-ext-diff", "--no-color"], cwd, timeout)
        others = _run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd, timeout)
    except subprocess.TimeoutExpired as exc:
        out["error"] = f"git took longer than {timeout:g} s ({' '.join(map(str, exc.cmd[:3]))})"
        return out
    except OSError as exc:
        out["error"] = f"cannot run git: {exc.strerror or exc}"
        return out
    if diff.returncode != 0 or others.returncode != 0:
        failed = diff if diff.returncode != 0 else others
        out["error"] = f"git failed: {_first_line(failed.stderr)}"
        return out
    names = [n for n in others.stdout.split(b"\x00") if n]
    out["untracked"] = len(names)
    if diff.stdout or names:
        digest = hashlib.sha256(diff.stdout)
        digest.update(b"\x00")
        digest.update(b"\x00".join(sorted(names)))
        out.update(dirty=True, diff_sha256=digest.hexdigest())
    return out


def take_snapshot(
    command: str | Sequence[str],
    cwd: Path | None = None,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
    image: str | None = None,
    freeze_timeout: float = FREEZE_TIMEOUT,
    git_timeout: float = GIT_TIMEOUT,
) -> dict[str, Any]:
    """Describe the environment a job is submitted from.

    Parameters
    ----------
    command
        The job's command (an argument list, or one shell string).
    cwd
        The working dir whose git state to record (default: the current one).
    python
        The interpreter to describe (default: the running one).
    environ
        The environment whose variable NAMES to record (default: ``os.environ``); values are
        never read.
    image
        The container image the job runs in, if any.
    freeze_timeout, git_timeout
        Time bounds of ``pip freeze`` and of each git command (seconds).

    Returns
    -------
    dict
        The snapshot; :func:`check_snapshot` accepts it.
    """
    where = (cwd or Path.cwd()).resolve()
    env = os.environ if environ is None else environ
    names = sorted(n for n in env if _ENV_NAME.match(n))
    if python == sys.executable:
        interp = {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        }
    else:
        interp = _describe_python(python, freeze_timeout)
    return {
        "version": SNAPSHOT_VERSION,
        "taken_at": time.time(),
        "python": interp,
        "platform": platform.platform()[:_SHORT],
        "cwd": str(where)[:_SHORT],
        "command": command if isinstance(command, str) else list(command),
        "pip_freeze": pip_freeze(python, freeze_timeout),
        "git": git_state(where, git_timeout),
        "env_names": names[:MAX_ENV_NAMES],
        "env_names_truncated": len(names) > MAX_ENV_NAMES,
        "image": image,
    }


def _describe_python(python: str, timeout: float) -> dict[str, Any]:
    code = (
        "import json, platform, sys; print(json.dumps({'version': platform.python_version(), "
        "'implementation': platform.python_implementation(), 'executable': sys.executable}))"
    )
    try:
        done = _run([python, "-c", code], None, timeout)
        found = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        found = None
    if not isinstance(found, dict):
        return {"version": None, "implementation": None, "executable": python}
    return {k: found.get(k) for k in ("version", "implementation", "executable")}


# --- the service's side ------------------------------------------------------------------------


def _text(value: Any, field: str, limit: int = _SHORT, null: bool = True) -> str | None:
    if value is None and null:
        return None
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string" + (" or null" if null else ""), field=field)
    if len(value) > limit:
        raise InputError(f"{field} is longer than {limit} characters", field=field)
    if "\x00" in value:
        raise InputError(f"{field} must not contain NUL", field=field)
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{field} must be true or false", field=field)
    return value


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
        raise InputError(f"{field} must be a non-negative integer", field=field)
    return value


def _digest(value: Any, field: str, pattern: re.Pattern[str] = _HEX64) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise InputError(f"{field} must be lowercase hex ({pattern.pattern})", field=field)
    return value


def _object(value: Any, field: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{field} must be an object", field=field)
    extra = sorted(set(value) - set(keys))
    if extra:
        raise InputError(f"{field} has unknown field {extra[0]!r}", field=f"{field}.{extra[0]}")
    return value


def check_snapshot(data: Any, field: str = "snapshot") -> dict[str, Any]:
    """Return a snapshot sent with a job after checking its shape and bounds.

    Parameters
    ----------
    data
        The snapshot as received (decoded JSON).
    field
        Where it sits in the request, for error messages.

    Raises
    ------
    InputError
        Naming the field at fault: an unknown field, a wrong type, a value past its bound, or
        an environment variable "name" that holds ``=`` (a value: refused, never stored).
    """
    try:
        raw = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise InputError(
            f"{field} must be plain JSON without NaN or Infinity", field=field
        ) from None
    if len(raw.encode("utf-8")) > MAX_SNAPSHOT_BYTES:
        raise InputError(f"{field} is larger than {MAX_SNAPSHOT_BYTES} bytes", field=field)
    keys = (
        "version", "taken_at", "python", "platform", "cwd", "command", "pip_freeze", "git",
        "env_names", "env_names_truncated", "image",
    )  # fmt: skip
    snap = _object(data, field, keys)
    version = snap.get("version", SNAPSHOT_VERSION)
    if version != SNAPSHOT_VERSION:
        raise InputError(f"{field}.version must be {SNAPSHOT_VERSION}", field=f"{field}.version")
    taken = snap.get("taken_at")
    if taken is not None and (
        isinstance(taken, bool) or not isinstance(taken, (int, float)) or not 0 <= taken < 1e11
    ):
        raise InputError(
            f"{field}.taken_at must be seconds since the epoch", field=f"{field}.taken_at"
        )
    py = _object(
        snap.get("python") or {}, f"{field}.python", ("version", "implementation", "executable")
    )
    python = {
        k: _text(py.get(k), f"{field}.python.{k}")
        for k in ("version", "implementation", "executable")
    }
    command = snap.get("command")
    if isinstance(command, list):
        if len(command) > 4096 or not all(isinstance(a, str) for a in command):
            raise InputError(f"{field}.command must be a list of strings", field=f"{field}.command")
        for i, arg in enumerate(command):
            _text(arg, f"{field}.command[{i}]", 65536, null=False)
    elif command is not None:
        _text(command, f"{field}.command", 65536)
    freeze_in = _object(
        snap.get("pip_freeze") or {}, f"{field}.pip_freeze",
        ("packages", "count", "truncated", "sha256", "error"),
    )  # fmt: skip
    packages = freeze_in.get("packages") or []
    if not isinstance(packages, list) or len(packages) > MAX_FREEZE_LINES:
        raise InputError(
            f"{field}.pip_freeze.packages must be a list of at most {MAX_FREEZE_LINES} lines",
            field=f"{field}.pip_freeze.packages",
        )
    for i, line in enumerate(packages):
        _text(line, f"{field}.pip_freeze.packages[{i}]", _SHORT, null=False)
    freeze = {
        "packages": packages,
        "count": _count(freeze_in.get("count", len(packages)), f"{field}.pip_freeze.count"),
        "truncated": _flag(freeze_in.get("truncated", False), f"{field}.pip_freeze.truncated"),
        "sha256": _digest(freeze_in.get("sha256"), f"{field}.pip_freeze.sha256"),
        "error": _text(freeze_in.get("error"), f"{field}.pip_freeze.error", 1000),
    }
    git: dict[str, Any] | None = None
    if snap.get("git") is not None:
        g = _object(
            snap["git"], f"{field}.git",
            ("commit", "branch", "dirty", "diff_sha256", "untracked", "error"),
        )  # fmt: skip
        git = {
            "commit": _digest(g.get("commit"), f"{field}.git.commit", _COMMIT),
            "branch": _text(g.get("branch"), f"{field}.git.branch"),
            "dirty": _flag(g.get("dirty", False), f"{field}.git.dirty"),
            "diff_sha256": _digest(g.get("diff_sha256"), f"{field}.git.diff_sha256"),
            "untracked": _count(g.get("untracked", 0), f"{field}.git.untracked"),
            "error": _text(g.get("error"), f"{field}.git.error", 1000),
        }
    names = snap.get("env_names") or []
    if not isinstance(names, list) or len(names) > MAX_ENV_NAMES:
        raise InputError(
            f"{field}.env_names must be a list of at most {MAX_ENV_NAMES} names",
            field=f"{field}.env_names",
        )
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InputError(
                f"{field}.env_names[{i}] must be a variable name (no '=', at most "
                f"{MAX_ENV_NAME} characters): values are never recorded",
                field=f"{field}.env_names",
            )
    return {
        "version": SNAPSHOT_VERSION,
        "taken_at": float(taken) if taken is not None else None,
        "python": python,
        "platform": _text(snap.get("platform"), f"{field}.platform"),
        "cwd": _text(snap.get("cwd"), f"{field}.cwd"),
        "command": command,
        "pip_freeze": freeze,
        "git": git,
        "env_names": sorted(set(names)),
        "env_names_truncated": _flag(
            snap.get("env_names_truncated", False), f"{field}.env_names_truncated"
        ),
        "image": _text(snap.get("image"), f"{field}.image", 1024),
    }


def _cut(text: str, limit: int = _TAG_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def snapshot_tags(snap: Mapping[str, Any]) -> dict[str, str]:
    """Return the run tags of a checked snapshot (``cplat.snapshot.*`` and MLflow's git tag).

    Tags hold the short facts a search filters on (``tags.`cplat.snapshot.git_commit` =
    '...'``); the package list lives in the ``snapshot.json`` artifact and, as a digest, in
    ``cplat.snapshot.pip_freeze_sha256``.
    """
    tags: dict[str, str] = {}
    python = snap.get("python") or {}
    for key in ("version", "implementation", "executable"):
        if python.get(key):
            tags[f"cplat.snapshot.python_{key}"] = _cut(str(python[key]))
    for key in ("platform", "cwd", "image"):
        if snap.get(key):
            tags[f"cplat.snapshot.{key}"] = _cut(str(snap[key]))
    freeze = snap.get("pip_freeze") or {}
    tags["cplat.snapshot.pip_packages"] = str(freeze.get("count", 0))
    if freeze.get("sha256"):
        tags["cplat.snapshot.pip_freeze_sha256"] = str(freeze["sha256"])
    if freeze.get("truncated"):
        tags["cplat.snapshot.pip_freeze_truncated"] = "true"
    if freeze.get("error"):
        tags["cplat.snapshot.pip_freeze_error"] = _cut(str(freeze["error"]))
    git = snap.get("git")
    if git is None:
        tags["cplat.snapshot.git"] = "absent"
    else:
        tags["cplat.snapshot.git"] = "present"
        tags["cplat.snapshot.git_dirty"] = "true" if git.get("dirty") else "false"
        if git.get("commit"):
            tags["cplat.snapshot.git_commit"] = str(git["commit"])
            # The tag MLflow's own tools read the source version from.
            tags["mlflow.source.git.commit"] = str(git["commit"])
        if git.get("branch"):
            tags["cplat.snapshot.git_branch"] = _cut(str(git["branch"]))
        if git.get("diff_sha256"):
            tags["cplat.snapshot.git_diff_sha256"] = str(git["diff_sha256"])
        if git.get("error"):
            tags["cplat.snapshot.git_error"] = _cut(str(git["error"]))
    names = list(snap.get("env_names") or [])
    tags["cplat.snapshot.env_names"] = _cut(",".join(names))
    return tags
