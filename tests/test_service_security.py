"""Authentication, project isolation, roles, the audit log, and bad input."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from cplat.testing.service import ADMIN, running_service, token

A_VIEW = token("vic", "A", "viewer")
A_MEMBER = token("mia", "A", "member")
A_ADMIN = token("ada", "A", "admin")
B_MEMBER = token("bob", "B", "member")
B_ADMIN = token("bea", "B", "admin")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_tokens_missing_forged_or_expired_are_401(tmp_path: Path) -> None:
    forged = jwt.encode(
        {
            "sub": "x",
            "project": "A",
            "role": "admin",
            "cluster_admin": True,
            "exp": int(time.time()) + 60,
        },
        "not-the-secret-not-the-secret-not-the-secret",
        algorithm="HS256",
    )
    expired = token("ana", "A", "admin", ttl=1)
    none_alg = jwt.encode(
        {"sub": "x", "project": "A", "role": "admin", "exp": int(time.time()) + 60},
        None,
        algorithm="none",
    )

    async def main() -> None:
        await asyncio.sleep(2.1)  # let the short token expire
        async with running_service(tmp_path) as svc:
            for tok in (None, forged, expired, none_alg, "garbage"):
                for method, path in (
                    ("GET", "/v1/jobs"),
                    ("POST", "/v1/jobs"),
                    ("GET", "/v1/nodes"),
                    ("GET", "/v1/cluster"),
                ):
                    status, body = await svc.call(method, path, tok, json={})
                    assert status == 401, (tok, path, body)
                    assert body["error"]["code"] in (
                        "unauthenticated",
                        "invalid_token",
                        "token_expired",
                    )
            status, body = await svc.call("GET", "/v1/jobs", headers={"Authorization": "Basic abc"})
            assert status == 401
            status, _ = await svc.call("GET", "/healthz")
            assert status == 200

    run(main())


def test_cross_project_matrix(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            b_job = await svc.submit(B_MEMBER, name="b-job", command=["true"])
            jid = b_job["id"]
            st, _ = await svc.call(
                "POST", f"/v1/jobs/{jid}/checkpoints", B_MEMBER, json={"step": 1, "uri": "s3://b/1"}
            )
            assert st == 201
            st, _ = await svc.call(
                "PUT",
                "/v1/quotas/B",
                B_ADMIN,
                json={"nominal": {"cpu_milli": 1000, "memory_mib": 1024, "gpu_milli": 0}},
            )
            assert st == 200
            verbs = [
                ("GET", f"/v1/jobs/{jid}", None),
                ("POST", f"/v1/jobs/{jid}/cancel", None),
                ("GET", f"/v1/jobs/{jid}/logs", None),
                ("GET", f"/v1/jobs/{jid}/events", None),
                ("GET", f"/v1/jobs/{jid}/checkpoints", None),
                ("POST", f"/v1/jobs/{jid}/checkpoints", {"step": 2, "uri": "x"}),
                (
                    "PUT",
                    "/v1/quotas/B",
                    {"nominal": {"cpu_milli": 9, "memory_mib": 9, "gpu_milli": 9}},
                ),
                ("DELETE", "/v1/quotas/B", None),
                ("GET", "/v1/audit?project=B", None),
                ("GET", "/v1/jobs/stream?project=B", None),
            ]
            for tok in (A_VIEW, A_MEMBER, A_ADMIN):
                for method, path, body in verbs:
                    status, out = await svc.call(method, path, tok, json=body)
                    assert status == 404, (method, path, status, out)
                # Lists never show B's objects.
                _, jobs = await svc.call("GET", "/v1/jobs", tok)
                assert jobs["jobs"] == []
                _, jobs = await svc.call("GET", "/v1/jobs?project=B", tok)
                assert jobs["jobs"] == []
                _, quotas = await svc.call("GET", "/v1/quotas", tok)
                assert quotas["quotas"] == []
                status, _ = await svc.call(
                    "POST", "/v1/jobs", tok, json={"name": "x", "command": ["true"], "project": "B"}
                )
                assert status == 403
                # Nodes and pools belong to cluster admins.
                for method, path in (
                    ("POST", "/v1/nodes"),
                    ("PUT", "/v1/pools/p"),
                    ("DELETE", "/v1/pools/p"),
                ):
                    status, _ = await svc.call(method, path, tok, json={})
                    assert status in (400, 403)
                status, _ = await svc.call("PUT", "/v1/pools/p", tok, json={})
                assert status == 403
            # B's job is untouched.
            _, job = await svc.call("GET", f"/v1/jobs/{jid}", B_MEMBER)
            assert job["state"] in ("PENDING", "SCHEDULED")

    run(main())


def test_roles_inside_a_project(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            status, out = await svc.call(
                "POST", "/v1/jobs", A_VIEW, json={"name": "x", "command": ["true"]}
            )
            assert status == 403 and out["error"]["code"] == "forbidden"
            job = await svc.submit(A_MEMBER, name="mine", command=["true"])
            status, _ = await svc.call("GET", f"/v1/jobs/{job['id']}", A_VIEW)
            assert status == 200
            status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", A_VIEW)
            assert status == 403
            q = {"nominal": {"cpu_milli": 1, "memory_mib": 1, "gpu_milli": 0}}
            assert (await svc.call("PUT", "/v1/quotas/A", A_MEMBER, json=q))[0] == 403
            assert (await svc.call("PUT", "/v1/quotas/A", A_ADMIN, json=q))[0] == 200
            assert (await svc.call("GET", "/v1/audit", A_MEMBER))[0] == 403
            status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", A_MEMBER)
            assert status == 200

    run(main())


def test_audit_log_records_every_mutation(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            job = await svc.submit(A_MEMBER, name="a", command=["true"])
            await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", A_MEMBER)
            await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", A_MEMBER)  # 409
            await svc.call("POST", "/v1/jobs", A_VIEW, json={"name": "v", "command": ["x"]})
            await svc.call(
                "PUT",
                "/v1/quotas/A",
                A_ADMIN,
                json={"nominal": {"cpu_milli": 1, "memory_mib": 1, "gpu_milli": 0}},
            )
            await svc.call("PUT", "/v1/pools/org", ADMIN, json={"description": "org"})
            await svc.submit(B_MEMBER, name="b", command=["true"])
            status, log = await svc.call("GET", "/v1/audit", A_ADMIN)
            assert status == 200
            seen = [(e["user"], e["action"], e["target"], e["status"]) for e in log["entries"]]
            assert seen == [
                ("mia", "POST /v1/jobs", f"job/{job['id']}", 201),
                ("mia", "POST /v1/jobs/{id}/cancel", f"job/{job['id']}", 200),
                ("mia", "POST /v1/jobs/{id}/cancel", f"job/{job['id']}", 409),
                ("vic", "POST /v1/jobs", "/v1/jobs", 403),
                ("ada", "PUT /v1/quotas/{project}", "quota/A", 200),
            ]
            assert all(e["project"] == "A" for e in log["entries"])
            _, everything = await svc.call("GET", "/v1/audit", ADMIN)
            actions = [e["action"] for e in everything["entries"]]
            assert "PUT /v1/pools/{name}" in actions and len(actions) == 7

    run(main())


BAD = [
    ({"command": ["true"]}, "name"),
    ({"name": "x"}, "command"),
    ({"name": "x", "command": ["true"], "colour": "red"}, "colour"),
    ({"name": "bad name!", "command": ["true"]}, "name"),
    ({"name": "x", "command": []}, "command"),
    ({"name": "x", "command": ["true"], "tasks": {"count": 0}}, "tasks.count"),
    (
        {"name": "x", "command": ["true"], "tasks": {"resources": {"num_gpu": -1}}},
        "tasks.resources.num_gpu",
    ),
    (
        {"name": "x", "command": ["true"], "tasks": {"resources": {"cpu_milli": "lots"}}},
        "tasks.resources.cpu_milli",
    ),
    (
        {
            "name": "x",
            "command": ["true"],
            "tasks": {"resources": {"num_gpu": 2, "gpu_milli": 500}},
        },
        "tasks.resources.gpu_milli",
    ),
    (
        {"name": "x", "command": ["true"], "tasks": {"resources": {"gpus": 2}}},
        "tasks.resources.gpus",
    ),
    ({"name": "x", "command": ["true"], "priority": True}, "priority"),
    ({"name": "x", "command": ["true"], "env": {"1BAD": "x"}}, "env.1BAD"),
    ({"name": "x", "command": ["tr\u0000ue"]}, "command[0]"),
    ({"name": "x", "command": ["true"], "max_runtime": 0}, "max_runtime"),
]


@pytest.mark.parametrize(("body", "field"), BAD)
def test_bad_job_bodies_name_the_field(tmp_path: Path, body: dict[str, Any], field: str) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            status, out = await svc.call("POST", "/v1/jobs", A_MEMBER, json=body)
            assert status == 400, out
            assert out["error"]["field"] == field, out
            _, jobs = await svc.call("GET", "/v1/jobs", A_MEMBER)
            assert jobs["jobs"] == []

    run(main())


def test_malformed_and_oversize_bodies(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path, max_body=4096) as svc:
            ok = await svc.submit(A_MEMBER, name="keep", command=["true"])
            status, out = await svc.call(
                "POST",
                "/v1/jobs",
                A_MEMBER,
                data=b"{not json",
                headers={"Content-Type": "application/json"},
            )
            assert status == 400 and out["error"]["code"] == "invalid"
            status, out = await svc.call(
                "POST",
                "/v1/jobs",
                A_MEMBER,
                data=b"name=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert status == 415
            big = {"name": "big", "command": ["echo", "x" * 10000]}
            status, out = await svc.call("POST", "/v1/jobs", A_MEMBER, json=big)
            assert status == 413 and out["error"]["field"] == "body"
            status, out = await svc.call("POST", "/v1/jobs", A_MEMBER, json=[1, 2])
            assert status == 400
            for path in (
                "/v1/jobs/abc",
                "/v1/jobs/0",
                "/v1/jobs/99999999999999999999",
                "/v1/nowhere",
            ):
                status, out = await svc.call("GET", path, A_MEMBER)
                assert status == 404 and out["error"]["code"] == "not_found", path
            status, out = await svc.call("GET", "/v1/jobs?limit=0", A_MEMBER)
            assert status == 400 and out["error"]["field"] == "limit"
            status, out = await svc.call("GET", "/v1/jobs?state=DONE", A_MEMBER)
            assert status == 400 and out["error"]["field"] == "state"
            status, out = await svc.call("GET", "/v1/jobs?cursor=x", A_MEMBER)
            assert status == 400 and out["error"]["field"] == "cursor"
            status, out = await svc.call("DELETE", "/v1/jobs", A_MEMBER)
            assert status == 405
            # Nothing accepted was lost.
            _, jobs = await svc.call("GET", "/v1/jobs", A_MEMBER)
            assert [j["id"] for j in jobs["jobs"]] == [ok["id"]]

    run(main())


def test_pagination_and_filters(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_service(tmp_path) as svc:
            ids = [
                (await svc.submit(A_MEMBER, name=f"j{i}", command=["true"]))["id"] for i in range(7)
            ]
            other = token("zed", "A", "member")
            z = await svc.submit(other, name="z", command=["true"])
            got: list[int] = []
            cursor = None
            while True:
                q = "/v1/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
                _, page = await svc.call("GET", q, A_VIEW)
                got += [j["id"] for j in page["jobs"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert got == ids + [z["id"]]
            _, page = await svc.call("GET", "/v1/jobs?user=zed", A_VIEW)
            assert [j["id"] for j in page["jobs"]] == [z["id"]]
            _, page = await svc.call("GET", "/v1/jobs?state=PENDING&user=mia", A_VIEW)
            assert [j["id"] for j in page["jobs"]] == ids
            assert all(j["reason"] for j in page["jobs"])

    run(main())
