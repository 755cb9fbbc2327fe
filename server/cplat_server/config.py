"""Service configuration: defaults < TOML file (``[serve]``) < ``CPLAT_*`` environment < flags."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cplat.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PORT = 8470


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of ``cplat serve``.

    Parameters
    ----------
    host, port
        Where the API listens.
    data_dir
        Directory of the embedded store, the JWT secret file and the local agent's work dir.
    db
        Store URL (``sqlite:///path``, a path, or ``postgresql://...``); empty: SQLite file
        ``cplat.db`` in ``data_dir``.
    jwt_secret
        HS256 secret; empty: ``CPLAT_JWT_SECRET``, else a secret kept in ``data_dir``.
    profile
        Scheduler profile file (placement and queue; see ``cplat.config``); empty: best fit,
        priority order with EASY backfilling.
    local_agent
        Also run an agent for this machine inside the server process.
    node_timeout
        Seconds without a heartbeat before a node is marked down and its jobs requeued.
    tick
        Longest pause between scheduling cycles (seconds); submissions and reports wake the
        loop at once.
    max_body
        Largest request body in bytes.
    grace
        Seconds a stopped task gets between SIGTERM and SIGKILL.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("cplat-data")
    db: str = ""
    jwt_secret: str = ""
    profile: str = ""
    local_agent: bool = True
    node_timeout: float = 30.0
    tick: float = 1.0
    max_body: int = 1 << 20
    grace: float = 10.0

    @property
    def store_url(self) -> str:
        """The store URL, with the embedded default filled in."""
        return self.db or f"sqlite:///{(self.data_dir / 'cplat.db').resolve()}"

    @property
    def server_url(self) -> str:
        """URL agents and clients on this machine use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def _coerce(name: str, kind: Any, value: Any, source: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is Path:
            return Path(str(value))
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(
            f"invalid value {value!r} (expected {kind.__name__})", source=source, field=name
        ) from None


_KINDS: dict[str, Any] = {
    "host": str,
    "port": int,
    "data_dir": Path,
    "db": str,
    "jwt_secret": str,
    "profile": str,
    "local_agent": bool,
    "node_timeout": float,
    "tick": float,
    "max_body": int,
    "grace": float,
}


def load_config(
    file: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> ServiceConfig:
    """Merge the settings sources; ``overrides`` (flags) win, ``None`` values are skipped.

    Raises
    ------
    InputError
        For an unreadable file, unknown keys or invalid values (naming source and key).
    """
    assert set(_KINDS) == {f.name for f in fields(ServiceConfig)}
    values: dict[str, Any] = {}
    if file:
        source = str(file)
        try:
            data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"cannot read config ({exc})", source=source) from None
        table = data.get("serve", {})
        unknown = set(data) - {"serve"}
        if unknown or not isinstance(table, dict):
            raise InputError(
                "a service config has one [serve] table",
                source=source,
                field=sorted(unknown)[0] if unknown else "serve",
            )
        for key, value in table.items():
            if key not in _KINDS:
                raise InputError(
                    f"unknown key (valid: {', '.join(_KINDS)})", source=source, field=key
                )
            values[key] = _coerce(key, _KINDS[key], value, source)
    environ = os.environ if env is None else env
    for key, kind in _KINDS.items():
        var = f"CPLAT_{key.upper()}"
        if var in environ:
            values[key] = _coerce(var, kind, environ[var], "environment")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(f"--{key.replace('_', '-')}", _KINDS[key], value, "command line")
    cfg = replace(ServiceConfig(), **values)
    if not 0 <= cfg.port < 65536:
        raise InputError("port must be in 0..65535", field="port")
    if cfg.node_timeout <= 0 or cfg.tick <= 0 or cfg.max_body <= 0 or cfg.grace < 0:
        raise InputError("node_timeout, tick and max_body must be positive", field="serve")
    return cfg


def jwt_secret(cfg: ServiceConfig, create: bool = True) -> str:
    """Return the token secret: configured, else the one kept in ``data_dir/jwt-secret``.

    Raises
    ------
    InputError
        When no secret is configured and ``create`` is false and none was kept yet.
    """
    if cfg.jwt_secret:
        return cfg.jwt_secret
    path = cfg.data_dir / "jwt-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not create:
        raise InputError(
            f"no JWT secret: set CPLAT_JWT_SECRET or start `cplat serve` once with "
            f"--data-dir {cfg.data_dir}",
            field="CPLAT_JWT_SECRET",
        )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Written with 0600 before the content goes in, so the secret is never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    return secret
