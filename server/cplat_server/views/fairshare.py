"""Fair-share API: ``GET /v1/fairshare``, the live queue sort's view of the projects.

Per project: decayed usage (cluster-seconds; the half-life is the profile's
``[queue_sort] half_life``), its share of all usage, the configured share, the effective
priority factor (fair share: ``2 ** (-usage_share / share)``; DRF: the dominant share), what
its running jobs hold and how many of its jobs wait; and the waiting jobs in the order the next
cycle considers them. Cluster admins see every project, others their own (queue positions stay
global, so a user sees how many jobs are ahead of theirs).
"""

from __future__ import annotations

import time

from aiohttp import web

from cplat_server.keys import CONTROLLER, json_response, principal

FAIRSHARE = {
    "type": "object",
    "properties": {
        "policy": {"type": ["string", "null"]},
        "half_life": {"type": ["number", "null"]},
        "projects": {"type": "array", "items": {"type": "object"}},
        "queue": {"type": "array", "items": {"type": "object"}},
    },
}


async def fairshare(request: web.Request) -> web.Response:
    """``GET /v1/fairshare``."""
    who = principal(request)
    ctrl = request.app[CONTROLLER]
    now = int(time.time())
    cluster = ctrl.cluster
    report = cluster.fairshare(now)
    report["projects"] = [p for p in report["projects"] if who.can_see(p["project"])]
    queue = []
    for position, job_id in enumerate(cluster.queue_order(now), start=1):
        rt = ctrl.jobs.get(job_id)
        if rt is not None and who.can_see(rt.rec.project):
            queue.append({"job_id": job_id, "project": rt.rec.project, "position": position})
    report["queue"] = queue
    return json_response(report)
