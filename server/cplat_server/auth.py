"""JWT authentication (HS256) and role checks.

Roles rank ``viewer < member < admin`` inside one project; ``cluster_admin`` may do
everything everywhere. Objects of a project the caller does not belong to answer 404, so a
caller cannot even learn they exist; a role too weak for a verb on its own project answers 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from cplat.errors import InputError
from cplat_server.errors import ApiError, forbidden, not_found

ROLES = ("viewer", "member", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting in one project with one role."""

    user: str
    project: str
    role: str
    cluster_admin: bool = False

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


def create_token(
    secret: str,
    user: str,
    project: str,
    role: str,
    cluster_admin: bool = False,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """Return a signed token.

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
    claims = {
        "sub": user,
        "project": project,
        "role": role,
        "cluster_admin": bool(cluster_admin),
        "iat": iat,
        "exp": iat + ttl,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, header: str | None) -> Principal:
    """Check an ``Authorization`` header.

    Raises
    ------
    ApiError
        401 for a missing, malformed, forged or expired token.
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
    if role not in _RANK or not isinstance(user, str) or not isinstance(project, str):
        raise ApiError(401, "invalid_token", "the token's claims are malformed")
    return Principal(user, project, str(role), claims.get("cluster_admin") is True)
