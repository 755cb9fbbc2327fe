"""JWT authentication (HS256) and role checks.

Roles rank ``viewer < member < admin`` inside one project; ``cluster_admin`` may do
everything everywhere. Objects of a project the caller does not belong to answer 404, so a
caller cannot even learn they exist; a role too weak for a verb on its own project answers 403.

Every token has an id (claim ``jti``) of the form ``<random>.<expiry>``: the expiry (seconds
since the epoch) is part of the id so that a revocation, which names only the id, knows when it
stops mattering. A job's token is derived from the token that submitted the job: it carries the
parent's id (claim ``par``), expires no later than the parent, and is revoked with it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from cplat.errors import InputError
from cplat_server.errors import ApiError, forbidden, not_found

ROLES = ("viewer", "member", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
ALGORITHM = "HS256"
#: Shortest signing secret accepted, in bytes (HS256 wants at least its 256-bit output).
MIN_SECRET_BYTES = 32
#: A token id: 16 random URL-safe characters (96 bits), a dot, the token's expiry.
TOKEN_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}\.[0-9]{1,12}$")
#: A job's token outlives the job's run time by this much, so it can still report at the end.
JOB_TOKEN_SLACK = 3600


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting in one project with one role."""

    user: str
    project: str
    role: str
    cluster_admin: bool = False
    #: The token's id (``jti``; empty for tokens made before ids existed) and expiry.
    token_id: str = ""
    expires_at: float | None = None
    #: The run a job's token is scoped to (claim ``run``; empty: none). The MLflow endpoints
    #: accept such a token for writes to that run only (``cplat.ml.tracking.jobs.check_run_scope``).
    run_id: str = ""

    def can_see(self, project: str) -> bool:
        """Whether objects of ``project`` exist for this caller."""
        return self.cluster_admin or project == self.project

    def require(self, project: str, role: str, what: str) -> None:
        """Allow ``role`` or better in ``project``.

        Raises
        ------
        ApiError
            404 for another project's ``what``, 403 when the role is too weak.
        """
        if self.cluster_admin:
            return
        if project != self.project:
            raise not_found(what)
        if _RANK[self.role] < _RANK[role]:
            raise forbidden(f"{what}: needs the {role} role in project {project!r}")

    def require_cluster_admin(self, what: str) -> None:
        """Allow cluster admins only (403 otherwise)."""
        if not self.cluster_admin:
            raise forbidden(f"{what} needs a cluster admin")


def parse_ttl(text: str) -> int:
    """Parse ``90``, ``30s``, ``15m``, ``1h`` or ``7d`` into seconds.

    Raises
    ------
    InputError
        For anything else, or a non-positive duration.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        seconds = int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise InputError(
            f"expected a duration like 30m, 1h or 7d; got {text!r}", field="--ttl"
        ) from None
    if seconds <= 0:
        raise InputError("the duration must be positive", field="--ttl")
    return seconds


def check_secret(secret: str, source: str) -> str:
    """Refuse a signing secret too short to resist guessing.

    Parameters
    ----------
    secret
        The secret.
    source
        Where it came from (an environment variable, a file), for the message.

    Returns
    -------
    str
        ``secret`` itself.

    Raises
    ------
    InputError
        When it is empty or shorter than :data:`MIN_SECRET_BYTES` bytes.
    """
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        what = "is empty" if size == 0 else f"is {size} bytes long"
        raise InputError(
            f"the token signing secret from {source} {what}; it needs at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'`)",
            field="jwt_secret",
        )
    return secret


def new_token_id(expires_at: int) -> str:
    """Return a fresh token id (``jti``) for a token expiring at ``expires_at``."""
    return f"{secrets.token_urlsafe(12)}.{int(expires_at)}"


def token_id_expiry(token_id: str) -> int | None:
    """Return the expiry a token id carries, or None when ``token_id`` is not one."""
    if not TOKEN_ID.match(token_id):
        return None
    return int(token_id.rpartition(".")[2])


def token_id(token: str) -> str:
    """Return the id (``jti``) of a token without checking its signature (empty if none)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return ""
    jti = claims.get("jti")
    return jti if isinstance(jti, str) else ""


def _sign(claims: dict[str, object], secret: str) -> str:
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def create_token(
    secret: str,
    user: str,
    project: str,
    role: str,
    cluster_admin: bool = False,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """Return a signed token with a fresh id (``jti``; read it back with :func:`token_id`).

    Raises
    ------
    InputError
        For an unknown role, an empty user or project, or a non-positive ttl.
    """
    if role not in _RANK:
        raise InputError(f"unknown role {role!r} (valid: {', '.join(ROLES)})", field="--role")
    if not user or not project:
        raise InputError("user and project must not be empty", field="--user")
    if ttl <= 0:
        raise InputError("ttl must be positive", field="--ttl")
    iat = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "project": project,
        "role": role,
        "cluster_admin": bool(cluster_admin),
        "iat": iat,
        "exp": iat + ttl,
        "jti": new_token_id(iat + ttl),
    }
    return _sign(claims, secret)


def job_token_expiry(
    now: float,
    runtime: int,
    parent_expires_at: float | None,
    max_ttl: int,
    slack: int = JOB_TOKEN_SLACK,
) -> int:
    """Return when a job's token expires.

    That is the earliest of: its run time (plus ``slack``) from now, the service's maximum
    lifetime of job tokens from now, and the expiry of the token that submitted the job. The
    result may lie in the past (the submitter's token has expired since): the job then
    gets a token that no longer opens anything, rather than more time than its submitter had.
    """
    exp = int(now) + min(max(int(runtime), 0) + slack, max_ttl)
    if parent_expires_at is not None:
        exp = min(exp, int(parent_expires_at))
    return exp


def create_job_token(
    secret: str,
    user: str,
    project: str,
    expires_at: int,
    parent_id: str = "",
    now: float | None = None,
    run_id: str = "",
) -> str:
    """Return the token a job's processes get: a member of its project.

    It is derived from the submitter's token ``parent_id`` (claim ``par``), so that revoking
    that token revokes this one too.

    Parameters
    ----------
    secret
        The signing secret.
    user, project
        The job's submitter and project.
    expires_at
        Its expiry (see :func:`job_token_expiry`).
    parent_id
        Id of the token that submitted the job (empty when unknown: older jobs).
    now
        The issue time (default: now).
    run_id
        The job's tracking run (claim ``run``): the MLflow endpoints then accept the token
        for writes to that run only.
    """
    iat = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "project": project,
        "role": "member",
        "cluster_admin": False,
        "iat": iat,
        "exp": int(expires_at),
        "jti": new_token_id(int(expires_at)),
    }
    if parent_id:
        claims["par"] = parent_id
    if run_id:
        claims["run"] = run_id
    return _sign(claims, secret)


class Revocations:
    """The revoked token ids a server knows, each with the time it stops mattering.

    Revocations are never undone, so :meth:`merge` only adds: a refresh that read the store
    just before a local revocation committed cannot drop it again.
    """

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, token_id: str, expires_at: float) -> None:
        """Know one more revoked id."""
        self._ids[token_id] = max(expires_at, self._ids.get(token_id, expires_at))

    def merge(self, entries: Iterable[tuple[str, float]], now: float) -> None:
        """Add ``(id, expires_at)`` entries and forget those expired by ``now``."""
        for token_id, expires_at in entries:
            self.add(token_id, expires_at)
        for token_id in [t for t, exp in self._ids.items() if exp <= now]:
            del self._ids[token_id]


def verify(secret: str, header: str | None, revoked: Revocations | None = None) -> Principal:
    """Check an ``Authorization`` header.

    Parameters
    ----------
    secret
        The signing secret.
    header
        The ``Authorization`` header, if any.
    revoked
        Revoked token ids: a token whose id, or whose parent's id, is among them is refused.

    Raises
    ------
    ApiError
        401 for a missing, malformed, forged, expired or revoked token.
    """
    if not header:
        raise ApiError(401, "unauthenticated", "missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "expected Authorization: Bearer <token>")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub", "project", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token_expired", "the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, "invalid_token", f"invalid token ({exc})") from None
    role = claims.get("role")
    user, project = claims.get("sub"), claims.get("project")
    jti, parent = claims.get("jti", ""), claims.get("par", "")
    run = claims.get("run", "")
    if (
        role not in _RANK
        or not isinstance(user, str)
        or not isinstance(project, str)
        or not isinstance(jti, str)
        or not isinstance(parent, str)
        or not isinstance(run, str)
    ):
        raise ApiError(401, "invalid_token", "the token's claims are malformed")
    if revoked is not None and jti and jti in revoked:
        raise ApiError(401, "token_revoked", f"the token has been revoked (id {jti})")
    if revoked is not None and parent and parent in revoked:
        raise ApiError(
            401,
            "token_revoked",
            f"the token was issued to a job submitted with token {parent}, which has been revoked",
        )
    exp = claims.get("exp")
    return Principal(
        user,
        project,
        str(role),
        claims.get("cluster_admin") is True,
        token_id=jti,
        expires_at=float(exp) if isinstance(exp, (int, float)) else None,
        run_id=run,
    )
