"""Resources API: nodes (and their agents' endpoints), pools, quotas, cluster, audit."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cplat.store.base import NodeRecord, PoolRecord, QuotaRecord
from cplat_server.errors import bad_request, not_found
from cplat_server.keys import (
    CONTROLLER,
    STORE,
    audit,
    json_response,
    path_name,
    principal,
    query_int,
    query_name,
    read_json,
)
from cplat_server.schemas import (
    HEARTBEAT,
    NAME,
    NAME_FILTER,
    NODE_REGISTER,
    PATH_NAME,
    POOL_PUT,
    QUOTA_PUT,
    TASK_REPORT,
)

_VEC = ("cpu_milli", "memory_mib", "gpu_milli")
#: Node label naming the project a node belongs to (its admins may cordon and drain it).
PROJECT_LABEL = "cplat.io/project"


def _vec(v: dict[str, int] | None) -> tuple[int, int, int] | None:
    return None if v is None else (int(v["cpu_milli"]), int(v["memory_mib"]), int(v["gpu_milli"]))


def _vec_json(v: tuple[int, int, int] | None) -> dict[str, int] | None:
    return None if v is None else dict(zip(_VEC, v, strict=True))


def _node_json(request: web.Request, rec: NodeRecord) -> dict[str, Any]:
    ctrl = request.app[CONTROLLER]
    who = principal(request)
    jobs = ctrl.node_jobs(rec.name)
    if not who.cluster_admin:
        jobs = [j for j in jobs if ctrl.jobs[j].rec.project == who.project]
    spec = rec.spec
    cpu, mem, gpu = ctrl.cluster.allocated(rec.name)
    return {
        "name": rec.name,
        "state": rec.state,
        "cpu_milli": spec.get("cpu_milli", 0),
        "memory_mib": spec.get("memory_mib", 0),
        "gpus": spec.get("gpus", []),
        "labels": rec.labels,
        "rack": spec.get("rack", 0),
        "spine": spec.get("spine", 0),
        "hostname": spec.get("hostname", ""),
        "address": spec.get("address", ""),
        "heartbeat_at": rec.heartbeat_at,
        "allocated": {"cpu_milli": cpu, "memory_mib": mem, "gpu_milli": gpu},
        "jobs": jobs,
        # None for an agent older than task isolation.
        "isolation": spec.get("isolation"),
    }


def _node_name(request: web.Request) -> str:
    name = path_name(request, "name", NAME, "node")
    if name not in request.app[CONTROLLER].nodes:
        raise not_found("node")
    return name


async def list_nodes(request: web.Request) -> web.Response:
    """``GET /v1/nodes``."""
    nodes = request.app[CONTROLLER].nodes
    return json_response({"nodes": [_node_json(request, nodes[n].rec) for n in sorted(nodes)]})


async def get_node(request: web.Request) -> web.Response:
    """``GET /v1/nodes/{name}``."""
    name = _node_name(request)
    return json_response(_node_json(request, request.app[CONTROLLER].nodes[name].rec))


async def register_node(request: web.Request) -> web.Response:
    """``POST /v1/nodes`` (agents): register or update this node."""
    principal(request).require_cluster_admin("registering a node")
    body = await read_json(request, NODE_REGISTER)
    ctrl = request.app[CONTROLLER]
    rec, created = await ctrl.register_node(body)
    audit(request, f"node/{rec.name}")
    answer = {**_node_json(request, rec), "lease": ctrl.lease_terms()}
    return json_response(answer, status=201 if created else 200)


def _state_changer(state: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        who = principal(request)
        name = _node_name(request)
        owner = request.app[CONTROLLER].nodes[name].rec.labels.get(PROJECT_LABEL)
        audit(request, f"node/{name}", owner)
        # A project's own nodes (labelled by the operator) are its admins' to manage too.
        if owner is None or not who.can_see(owner):
            who.require_cluster_admin("changing a node's state")
        else:
            who.require(owner, "admin", "node")
        rec = await request.app[CONTROLLER].set_node_state(name, state)
        return json_response(_node_json(request, rec))

    handler.__doc__ = f"Set a node {state}."
    return handler


cordon = _state_changer("cordoned")
drain = _state_changer("draining")
uncordon = _state_changer("up")


async def heartbeat(request: web.Request) -> web.Response:
    """``POST /v1/nodes/{name}/heartbeat`` (agents)."""
    principal(request).require_cluster_admin("heartbeats")
    name = _node_name(request)
    body = await read_json(request, HEARTBEAT)
    ctrl = request.app[CONTROLLER]
    cancel = await ctrl.heartbeat(name, body)
    # The lease this heartbeat renewed, so agent and server count with the same terms.
    return json_response({"cancel": cancel, "lease": ctrl.lease_terms()})


async def task_report(request: web.Request) -> web.Response:
    """``POST /v1/nodes/{name}/tasks`` (agents): a task started or exited."""
    principal(request).require_cluster_admin("task reports")
    name = _node_name(request)
    body = await read_json(request, TASK_REPORT)
    if body["state"] == "exited" and body.get("exit_code") is None:
        raise bad_request("an exited task needs its exit_code", "exit_code")
    await request.app[CONTROLLER].task_report(name, body)
    return json_response({"ok": True})


async def assignments(request: web.Request) -> web.Response:
    """``GET /v1/nodes/{name}/assignments?wait=S`` (agents): long poll for work."""
    principal(request).require_cluster_admin("assignments")
    name = _node_name(request)
    wait = query_int(request, "wait", 0, 0, 60)
    assert wait is not None
    return json_response(await request.app[CONTROLLER].assignments(name, float(wait)))


# Pools -----------------------------------------------------------------------------------
def _pool_json(p: PoolRecord) -> dict[str, Any]:
    return {
        "name": p.name,
        "borrowing_limit": _vec_json(p.borrowing_limit),
        "description": p.description,
    }


async def list_pools(request: web.Request) -> web.Response:
    """``GET /v1/pools``."""
    pools = request.app[CONTROLLER].pools
    return json_response({"pools": [_pool_json(pools[n]) for n in sorted(pools)]})


async def put_pool(request: web.Request) -> web.Response:
    """``PUT /v1/pools/{name}`` (cluster admins)."""
    principal(request).require_cluster_admin("managing pools")
    name = path_name(request, "name", PATH_NAME, "pool", creates=True)
    body = await read_json(request, POOL_PUT)
    rec = PoolRecord(name, _vec(body.get("borrowing_limit")), body.get("description", ""))
    audit(request, f"pool/{name}")
    await request.app[CONTROLLER].put_pool(rec)
    return json_response(_pool_json(rec))


async def delete_pool(request: web.Request) -> web.Response:
    """``DELETE /v1/pools/{name}`` (cluster admins)."""
    principal(request).require_cluster_admin("managing pools")
    name = path_name(request, "name", PATH_NAME, "pool")
    audit(request, f"pool/{name}")
    if not await request.app[CONTROLLER].delete_pool(name):
        raise not_found("pool")
    return web.Response(status=204)


# Quotas ----------------------------------------------------------------------------------
def _quota_json(request: web.Request, q: QuotaRecord) -> dict[str, Any]:
    return {
        "project": q.project,
        "nominal": _vec_json(q.nominal),
        "borrowing_limit": _vec_json(q.borrowing_limit),
        "lending_limit": _vec_json(q.lending_limit),
        "pool": q.pool,
        "overcommit": q.overcommit,
        "usage": _vec_json(request.app[CONTROLLER].cluster.usage(q.project)),
    }


async def list_quotas(request: web.Request) -> web.Response:
    """``GET /v1/quotas``: all for cluster admins, the caller's project otherwise."""
    who = principal(request)
    quotas = request.app[CONTROLLER].quotas
    return json_response(
        {"quotas": [_quota_json(request, quotas[p]) for p in sorted(quotas) if who.can_see(p)]}
    )


async def put_quota(request: web.Request) -> web.Response:
    """``PUT /v1/quotas/{project}`` (project admins, cluster admins)."""
    project = path_name(request, "project", NAME, "quota", creates=True)
    principal(request).require(project, "admin", "quota")
    body = await read_json(request, QUOTA_PUT)
    nominal = _vec(body["nominal"])
    assert nominal is not None
    rec = QuotaRecord(
        project=project,
        nominal=nominal,
        borrowing_limit=_vec(body.get("borrowing_limit")) or (0, 0, 0),
        lending_limit=_vec(body.get("lending_limit")),
        pool=body.get("pool", ""),
        overcommit=float(body.get("overcommit", 1.0)),
    )
    audit(request, f"quota/{project}", project)
    await request.app[CONTROLLER].put_quota(rec)
    return json_response(_quota_json(request, rec))


async def delete_quota(request: web.Request) -> web.Response:
    """``DELETE /v1/quotas/{project}`` (project admins, cluster admins)."""
    project = path_name(request, "project", NAME, "quota")
    principal(request).require(project, "admin", "quota")
    audit(request, f"quota/{project}", project)
    if not await request.app[CONTROLLER].delete_quota(project):
        raise not_found("quota")
    return web.Response(status=204)


# Cluster and audit -----------------------------------------------------------------------
async def cluster(request: web.Request) -> web.Response:
    """``GET /v1/cluster``: capacity, allocation, fragmentation, counts."""
    return json_response(request.app[CONTROLLER].cluster_summary())


async def list_audit(request: web.Request) -> web.Response:
    """``GET /v1/audit``: admins read their project's entries, cluster admins all."""
    who = principal(request)
    project = query_name(request, "project", NAME_FILTER)
    if not who.cluster_admin:
        if project not in (None, who.project):
            raise not_found("project")
        who.require(who.project, "admin", "audit log")
        project = who.project
    after = query_int(request, "after", None)
    limit = query_int(request, "limit", 100, 1, 1000)
    assert limit is not None
    entries = await request.app[STORE].list_audit(project=project, after=after, limit=limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    return json_response(
        {
            "entries": [
                {
                    "id": e.id,
                    "at": e.at,
                    "user": e.user,
                    "project": e.project,
                    "action": e.action,
                    "target": e.target,
                    "status": e.status,
                    "detail": e.detail,
                }
                for e in entries
            ],
            "next_cursor": str(entries[-1].id) if more else None,
        }
    )
