"""Token revocation: the API, and the task that keeps every server's revoked set current.

A revocation is a row in the store. The server that records it applies it at once; every
other server sharing the store reads the revoked ids every :data:`REFRESH` seconds, so a
revoked token stops opening anything everywhere within a second. Rows are pruned once the
token they name has expired, since an expired token is refused anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from cplat.store.base import RevokedToken, Store
from cplat_server.auth import Revocations, token_id_expiry
from cplat_server.errors import bad_request
from cplat_server.keys import STORE, audit, json_response, principal, read_json

__all__ = [
    "PRUNE_EVERY",
    "REFRESH",
    "REVOKED",
    "TOKEN_REVOKE",
    "TOKEN_REVOKED",
    "keep_revocations_fresh",
    "load_revocations",
    "revoke",
    "revoke_token",
]

log = logging.getLogger("cplat.server")

#: The revoked ids every server knows (the auth middleware reads them).
REVOKED = web.AppKey("revoked", Revocations)
#: Seconds between two reads of the revoked ids: well inside the promised second.
REFRESH = 0.4
#: Seconds between two prunings of expired revocations and idempotency keys.
PRUNE_EVERY = 300.0

TOKEN_REVOKE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "maxLength": 80,
            "pattern": "^[A-Za-z0-9_-]{8,64}[.][0-9]{1,12}$",
            "description": "The token's id (its jti), as `cplat token create` prints it",
        }
    },
    "required": ["id"],
    "additionalProperties": False,
}
TOKEN_REVOKED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "expires_at": {"type": "number"},
        "newly_revoked": {"type": "boolean"},
    },
}


async def revoke_token(
    store: Store, revoked: Revocations, token_id: str, by: str, now: float | None = None
) -> tuple[float, bool]:
    """Record a revocation in the store and in this server's set.

    Parameters
    ----------
    store
        The store.
    revoked
        This server's revoked set (updated once the store has the revocation).
    token_id
        The id of the token.
    by
        Who revoked it (for the record).
    now
        The time of the revocation (default: now).

    Returns
    -------
    tuple of (float, bool)
        Until when the revocation matters (the token's expiry), and whether it is new.

    Raises
    ------
    ValueError
        When ``token_id`` is not a token id.
    """
    expires_at = token_id_expiry(token_id)
    if expires_at is None:
        raise ValueError(f"{token_id!r} is not a token id (as `cplat token create` prints it)")
    at = time.time() if now is None else now
    new = await store.revoke_token(RevokedToken(token_id, at, float(expires_at), by))
    revoked.add(token_id, float(expires_at))
    return float(expires_at), new


async def revoke(request: web.Request) -> web.Response:
    """``POST /v1/tokens/revoke``: revoke a token by id (cluster admins)."""
    who = principal(request)
    who.require_cluster_admin("revoking tokens")
    body = await read_json(request, TOKEN_REVOKE)
    token_id = body["id"]
    audit(request, f"token/{token_id}", who.project)
    try:
        expires_at, new = await revoke_token(
            request.app[STORE], request.app[REVOKED], token_id, who.user
        )
    except ValueError as exc:
        raise bad_request(str(exc), "id") from None
    return json_response({"id": token_id, "expires_at": expires_at, "newly_revoked": new})


async def load_revocations(store: Store, revoked: Revocations) -> None:
    """Merge the store's current revocations into ``revoked``."""
    now = time.time()
    entries = await store.revoked_tokens(now)
    revoked.merge(((e.token_id, e.expires_at) for e in entries), now)


async def keep_revocations_fresh(store: Store, revoked: Revocations) -> None:
    """Refresh ``revoked`` from the store every :data:`REFRESH` seconds until cancelled.

    The store's expired entries are pruned now and then. A failed read keeps the set as it
    was and is retried.
    """
    pruned = time.monotonic()
    failing = False
    while True:
        await asyncio.sleep(REFRESH)
        try:
            await load_revocations(store, revoked)
            if time.monotonic() - pruned >= PRUNE_EVERY:
                pruned = time.monotonic()
                await store.prune_expired(time.time())
            if failing:
                log.info("revoked tokens: reading the store again")
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store may be down for a while
            if not failing:
                log.warning("revoked tokens: cannot read the store (%s); retrying", exc)
            failing = True
