"""Service configuration: defaults < TOML file (``[serve]``) < ``CPLAT_*`` environment < flags."""

from __future__ import annotations

import math
import os
import secrets
import ssl
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cplat.errors import InputError
from cplat.settings import read_toml

DEFAULT_PORT = 8470
#: Choices of the ``unschedulable`` setting.
UNSCHEDULABLE = ("hold", "reject")


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
        Seconds without any word from a node's agent before the node is marked down (no new
        placements). Its tasks are requeued once its lease has run out too (see ``lease``).
    tick
        Longest pause between scheduling cycles (seconds); submissions and reports wake the
        loop at once.
    max_body
        Largest request body in bytes.
    grace
        Seconds a stopped task gets between SIGTERM and SIGKILL (the local agent's, and the
        one every agent is told to use when its lease runs out).
    lease
        Seconds a node's lease lasts; every answered heartbeat renews it. An agent whose lease
        runs out stops its tasks (SIGTERM, SIGKILL after ``grace``); the server requeues them
        only ``lease + grace`` seconds after the last renewal, once they are surely dead. The
        defaults (lease 20 s, grace 10 s, heartbeats every 2 s) requeue a silent node's jobs
        after 30 s, as ``node_timeout`` marks it down. A server outage longer than the lease
        stops every task: set it above the longest restart you expect.
    max_streams_per_user
        Event streams and log follows one user may hold open at once (0: no cap).
    submit_rate, submit_burst
        Submissions per second a token may sustain, and how many it may send in one burst
        (a token bucket; ``submit_rate`` 0: no limit). Cluster admins are not limited.
    tls_cert, tls_key
        PEM certificate (chain) and private key: serve HTTPS (TLS 1.2 or later). Both or
        neither.
    max_job_token_ttl
        Longest lifetime, in seconds, of the token a job's processes get (default 7 days).
        A job token also expires with the token that submitted the job, and one hour after
        the job's ``max_runtime``, whichever comes first.
    idempotency_ttl
        Seconds an ``Idempotency-Key`` of a submission is remembered (default 24 hours): a
        retry with the same key within that time returns the job the first one created.
    task_user
        Who the local agent runs tasks as: ``dynamic`` (a transient uid per task; the
        default under root), ``self`` (the server's own user; the default otherwise) or an
        existing account (see ``cplat.runtime.isolation``).
    unschedulable
        What becomes of a job no registered node could ever run (more CPUs, memory or GPUs
        per task than the largest node has, a GPU model no node has, more tasks than all
        nodes together hold): ``hold`` (the default, for clusters that may grow) accepts it
        and keeps it waiting with the reason in words until nodes that fit register;
        ``reject`` (for a cluster declared complete) answers 400 naming the field and the
        largest node. While no node is registered at all, jobs are held either way.
    artifact_root
        Folder of the tracking artifacts (the MLflow artifact proxy); empty:
        ``<data_dir>/artifacts``. Unused when ``artifact_s3_bucket`` is set.
    artifact_s3_bucket, artifact_s3_prefix
        Keep the artifacts in this S3-compatible bucket, under this key prefix, instead.
    artifact_s3_endpoint, artifact_s3_region
        The object store's URL (MinIO, Ceph, ...; empty: AWS) and region.
    artifact_s3_access_key_id, artifact_s3_secret_access_key
        The object store's credentials; empty: boto3's own chain (``AWS_ACCESS_KEY_ID``
        and ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles). Never logged.
    max_artifact_upload
        Largest artifact file one upload may store, in bytes (default 5 GiB).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("cplat-data")
    db: str = field(default="", repr=False)  # a PostgreSQL URL may hold a password
    jwt_secret: str = field(default="", repr=False)
    profile: str = ""
    local_agent: bool = True
    node_timeout: float = 30.0
    tick: float = 1.0
    max_body: int = 1 << 20
    grace: float = 10.0
    lease: float = 20.0
    max_streams_per_user: int = 16
    submit_rate: float = 100.0
    submit_burst: int = 1000
    tls_cert: str = ""
    tls_key: str = ""
    max_job_token_ttl: int = 7 * 86400
    idempotency_ttl: int = 86400
    task_user: str = ""
    unschedulable: str = "hold"
    artifact_root: str = ""
    artifact_s3_bucket: str = ""
    artifact_s3_prefix: str = ""
    artifact_s3_endpoint: str = ""
    artifact_s3_region: str = ""
    artifact_s3_access_key_id: str = field(default="", repr=False)
    artifact_s3_secret_access_key: str = field(default="", repr=False)
    max_artifact_upload: int = 5 << 30

    @property
    def store_url(self) -> str:
        """The store URL, with the embedded default filled in."""
        return self.db or f"sqlite:///{(self.data_dir / 'cplat.db').resolve()}"

    @property
    def server_url(self) -> str:
        """URL agents and clients on this machine use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"


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
    "lease": float,
    "max_streams_per_user": int,
    "submit_rate": float,
    "submit_burst": int,
    "tls_cert": str,
    "tls_key": str,
    "max_job_token_ttl": int,
    "idempotency_ttl": int,
    "task_user": str,
    "unschedulable": str,
    "artifact_root": str,
    "artifact_s3_bucket": str,
    "artifact_s3_prefix": str,
    "artifact_s3_endpoint": str,
    "artifact_s3_region": str,
    "artifact_s3_access_key_id": str,
    "artifact_s3_secret_access_key": str,
    "max_artifact_upload": int,
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
        data = read_toml(file)
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
    _check_limits(cfg)
    from cplat_server.views.mlflow_compat.artifacts import check_artifact_settings

    check_artifact_settings(cfg)
    return cfg


def _check_limits(cfg: ServiceConfig) -> None:
    # ``not x > 0`` rather than ``x <= 0``: NaN fails every comparison.
    if not (cfg.lease > 0 and math.isfinite(cfg.lease)):
        raise InputError("lease must be a positive number of seconds", field="lease")
    if not (cfg.grace >= 0 and math.isfinite(cfg.grace)):
        raise InputError("grace must be a non-negative number of seconds", field="grace")
    if cfg.max_streams_per_user < 0:
        raise InputError(
            "max_streams_per_user must be 0 (no cap) or more", field="max_streams_per_user"
        )
    if not (cfg.submit_rate >= 0 and math.isfinite(cfg.submit_rate)):
        raise InputError("submit_rate must be 0 (no limit) or a positive rate", field="submit_rate")
    if cfg.submit_rate > 0 and cfg.submit_burst < 1:
        raise InputError("submit_burst must be at least 1", field="submit_burst")
    if cfg.max_job_token_ttl <= 0:
        raise InputError(
            "max_job_token_ttl must be a positive number of seconds", field="max_job_token_ttl"
        )
    if cfg.idempotency_ttl <= 0:
        raise InputError(
            "idempotency_ttl must be a positive number of seconds", field="idempotency_ttl"
        )
    if cfg.unschedulable not in UNSCHEDULABLE:
        raise InputError(
            f"unschedulable must be one of {', '.join(UNSCHEDULABLE)}", field="unschedulable"
        )
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        missing = "tls_key" if cfg.tls_cert else "tls_cert"
        raise InputError("HTTPS needs both tls_cert and tls_key", field=missing)


def ssl_context(cfg: ServiceConfig) -> ssl.SSLContext | None:
    """Return the server's TLS context (TLS 1.2 or later), or None when TLS is off.

    Raises
    ------
    InputError
        When the certificate or the key cannot be read or do not make a pair.
    """
    if not cfg.tls_cert:
        return None
    for name, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key)):
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise InputError(f"cannot read {path} ({exc.strerror or exc})", field=name) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (ssl.SSLError, ValueError) as exc:
        raise InputError(
            f"cannot use certificate {cfg.tls_cert} with key {cfg.tls_key} ({exc}); both must "
            "be PEM and the key must match the certificate",
            field="--tls-cert",
        ) from None
    return ctx


def jwt_secret(cfg: ServiceConfig, create: bool = True) -> str:
    """Return the token secret: configured, else the one kept in ``data_dir/jwt-secret``.

    Raises
    ------
    InputError
        When no secret is configured and ``create`` is false and none was kept yet; or when
        the secret (configured or kept) is shorter than 32 bytes, naming where it came from.
    """
    from cplat_server.auth import check_secret

    if cfg.jwt_secret:
        env = os.environ.get("CPLAT_JWT_SECRET")
        source = (
            "the CPLAT_JWT_SECRET environment variable"
            if env == cfg.jwt_secret
            else "the jwt_secret setting"
        )
        return check_secret(cfg.jwt_secret, source)
    path = cfg.data_dir / "jwt-secret"
    if path.exists():
        try:
            kept = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot read the secret file {path} ({exc})", field="jwt_secret"
            ) from None
        return check_secret(kept, f"the file {path}")
    if not create:
        raise InputError(
            f"no JWT secret: set CPLAT_JWT_SECRET or start `cplat serve` once with "
            f"--data-dir {cfg.data_dir}",
            field="CPLAT_JWT_SECRET",
        )
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Written with 0600 before the content goes in, so the secret is never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    return secret
