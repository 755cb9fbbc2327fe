"""Reservations API: nodes held for a project, or for nobody (maintenance windows).

``POST /v1/reservations`` (cluster admins) names nodes or asks for capacity (nodes, CPUs,
memory, GPUs of a model), a window ``[start, end)`` in Unix seconds, an owner project (none: a
maintenance window) and optionally ``drain`` (the window's nodes are drained at its start and
come back at its end). Other projects' jobs may use the nodes only if they end, by their
``max_runtime``, before the window starts. ``GET`` lists them: cluster admins all, others
their project's reservations and the maintenance windows (which concern everyone).
``DELETE /v1/reservations/{id}`` (cluster admins) ends one.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cplat.errors import InputError
from cplat.live.controller import live_reservation
from cplat.store.base import ReservationIn, ReservationRecord
from cplat_server.errors import bad_request, not_found
from cplat_server.keys import (
    CONTROLLER,
    STORE,
    audit,
    json_response,
    path_int,
    principal,
    read_json,
)
from cplat_server.schemas import NAME, _int, _obj

#: Longest window, and how far ahead one may start (seconds).
MAX_WINDOW = 366 * 86400
MAX_AHEAD = 2 * 366 * 86400
#: Most nodes one reservation names.
MAX_NODES = 4096
_TIME = _int(0, 2**40)
CAPACITY = _obj(
    {
        "nodes": _int(0, MAX_NODES),
        "cpu_milli": _int(0, 10**12),
        "memory_mib": _int(0, 10**13),
        "gpus": _int(0, 10**6),
        "gpu_model": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    }
)
RESERVATION_IN = _obj(
    {
        "start": _TIME,
        "end": _TIME,
        "owner": {"anyOf": [{"type": "string", "pattern": NAME}, {"const": ""}]},
        "nodes": {
            "type": "array",
            "items": {"type": "string", "pattern": NAME},
            "minItems": 1,
            "maxItems": MAX_NODES,
            "uniqueItems": True,
        },
        "capacity": CAPACITY,
        "drain": {"type": "boolean"},
    },
    ("start", "end"),
)
RESERVATION = {
    "type": "object",
    "properties": {
        "id": _int(1),
        "owner": {"type": "string"},
        "start": _TIME,
        "end": _TIME,
        "nodes": {"type": "array", "items": {"type": "string"}},
        "drain": {"type": "boolean"},
        "request": {"type": "object"},
        "created_by": {"type": "string"},
        "created_at": {"type": "number"},
        "active": {"type": "boolean"},
    },
}


def reservation_json(rec: ReservationRecord, now: float) -> dict[str, Any]:
    """Return the API's view of a stored reservation."""
    return {
        "id": rec.id,
        "owner": rec.owner,
        "start": rec.start,
        "end": rec.end,
        "nodes": list(rec.nodes),
        "drain": rec.drain,
        "request": rec.request,
        "created_by": rec.created_by,
        "created_at": rec.created_at,
        "active": rec.start <= now < rec.end,
    }


async def create(request: web.Request) -> web.Response:
    """``POST /v1/reservations`` (cluster admins)."""
    who = principal(request)
    who.require_cluster_admin("creating a reservation")
    body = await read_json(request, RESERVATION_IN)
    now = time.time()
    start, end = int(body["start"]), int(body["end"])
    if end <= start:
        raise bad_request("end must come after start", "end")
    if end <= now:
        raise bad_request("the window has already ended", "end")
    if end - start > MAX_WINDOW:
        raise bad_request(f"a window lasts at most {MAX_WINDOW} seconds", "end")
    if start > now + MAX_AHEAD:
        raise bad_request(f"a window starts at most {MAX_AHEAD} seconds ahead", "start")
    owner = str(body.get("owner", ""))
    drain = bool(body.get("drain", False))
    if drain and owner:
        raise bad_request("a drain window belongs to nobody: leave owner out", "owner")
    if ("nodes" in body) == ("capacity" in body):
        raise bad_request("give either nodes or capacity", "nodes")
    cluster = request.app[CONTROLLER].cluster
    if "nodes" in body:
        nodes = tuple(body["nodes"])
        unknown = [n for n in nodes if cluster.node(n) is None]
        if unknown:
            raise bad_request(f"no node named {unknown[0]!r} is registered", "nodes")
    else:
        cap = body["capacity"]
        try:
            nodes = cluster.pick_nodes(
                start,
                end,
                count=int(cap.get("nodes", 0)),
                cpu_milli=int(cap.get("cpu_milli", 0)),
                memory_mib=int(cap.get("memory_mib", 0)),
                gpus=int(cap.get("gpus", 0)),
                gpu_model=str(cap.get("gpu_model", "")),
            )
        except InputError as exc:
            raise bad_request(exc.message, "capacity") from None
    request_body = {k: body[k] for k in ("nodes", "capacity") if k in body}
    rec = await request.app[STORE].add_reservation(
        ReservationIn(owner, start, end, nodes, drain, request_body, who.user, now)
    )
    audit(request, f"reservation/{rec.id}", owner or None)
    cluster.add_reservation(live_reservation(rec))
    return json_response(reservation_json(rec, now), status=201)


async def list_reservations(request: web.Request) -> web.Response:
    """``GET /v1/reservations``: cluster admins all; others their project's and the windows."""
    who = principal(request)
    now = time.time()
    recs = await request.app[STORE].list_reservations()
    return json_response(
        {
            "reservations": [
                reservation_json(r, now)
                for r in recs
                if r.end > now and (who.cluster_admin or r.owner in ("", who.project))
            ]
        }
    )


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v1/reservations/{id}`` (cluster admins)."""
    principal(request).require_cluster_admin("deleting a reservation")
    res_id = path_int(request, "id", "reservation")
    audit(request, f"reservation/{res_id}")
    if not await request.app[STORE].delete_reservation(res_id):
        raise not_found("reservation")
    request.app[CONTROLLER].cluster.remove_reservation(res_id)
    return web.Response(status=204)
