"""Service settings (file < environment < flags), tokens on the command line, quotas live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jwt
import pytest

from cplat.cli.main import main
from cplat.errors import InputError
from cplat.testing.service import ADMIN, running_service, token
from cplat_server.config import jwt_secret, load_config


def test_settings_precedence_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nport = 9000\nhost = "0.0.0.0"\nnode_timeout = 12\n')
    cfg = load_config(
        f,
        env={"CPLAT_PORT": "9100", "CPLAT_LOCAL_AGENT": "false"},
        overrides={"port": 9200, "host": None},
    )
    assert (cfg.port, cfg.host, cfg.node_timeout, cfg.local_agent) == (9200, "0.0.0.0", 12.0, False)
    assert cfg.server_url == "http://127.0.0.1:9200"
    assert load_config(env={}).store_url.endswith("cplat-data/cplat.db")
    f.write_text("[serve]\nprot = 1\n")
    with pytest.raises(InputError) as err:
        load_config(f, env={})
    assert err.value.field == "prot" and err.value.source == str(f)
    with pytest.raises(InputError) as err:
        load_config(env={"CPLAT_NODE_TIMEOUT": "soon"})
    assert err.value.field == "CPLAT_NODE_TIMEOUT"
    f.write_text("[server]\nport = 1\n")
    with pytest.raises(InputError):
        load_config(f, env={})


def test_token_secret_is_kept_private(tmp_path: Path) -> None:
    cfg = load_config(env={}, overrides={"data_dir": tmp_path / "d"})
    with pytest.raises(InputError):
        jwt_secret(cfg, create=False)
    secret = jwt_secret(cfg)
    assert jwt_secret(cfg, create=False) == secret
    assert (tmp_path / "d" / "jwt-secret").stat().st_mode & 0o077 == 0


def test_token_create_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CPLAT_JWT_SECRET", raising=False)
    data = tmp_path / "data"
    assert main(["token", "create", "--user", "u", "--project", "p", "--data-dir", str(data)]) == 2
    assert "no JWT secret" in capsys.readouterr().err
    secret = jwt_secret(load_config(env={}, overrides={"data_dir": data}))
    assert (
        main(
            [
                "token",
                "create",
                "--user",
                "u",
                "--project",
                "p",
                "--role",
                "admin",
                "--cluster-admin",
                "--ttl",
                "2h",
                "--data-dir",
                str(data),
            ]
        )
        == 0
    )
    claims = jwt.decode(capsys.readouterr().out.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["project"], claims["role"], claims["cluster_admin"]) == (
        "u",
        "p",
        "admin",
        True,
    )
    assert claims["exp"] - claims["iat"] == 7200
    assert (
        main(
            [
                "token",
                "create",
                "--user",
                "u",
                "--project",
                "p",
                "--ttl",
                "soon",
                "--data-dir",
                str(data),
            ]
        )
        == 2
    )
    assert "--ttl" in capsys.readouterr().err


def test_quotas_and_pools_steer_the_live_scheduler(tmp_path: Path) -> None:
    a = token("ana", "A", "admin")
    b = token("bob", "B", "admin")

    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            body = {"name": "n1", "cpu_milli": 8000, "memory_mib": 65536}
            assert (await svc.call("POST", "/v1/nodes", ADMIN, json=body))[0] == 201
            st, _ = await svc.call(
                "PUT",
                "/v1/pools/org",
                ADMIN,
                json={"borrowing_limit": None, "description": "research"},
            )
            assert st == 200
            vec = {"cpu_milli": 4000, "memory_mib": 32768, "gpu_milli": 0}
            for tok, p, borrow in ((a, "A", 2000), (b, "B", 0)):
                q = {"nominal": vec, "pool": "org", "borrowing_limit": {**vec, "cpu_milli": borrow}}
                st, out = await svc.call("PUT", f"/v1/quotas/{p}", tok, json=q)
                assert st == 200, out
            res = {"cpu_milli": 2000, "memory_mib": 1024}
            jobs = [
                await svc.submit(a, name=f"a{i}", command=["true"], tasks={"resources": res})
                for i in range(4)
            ]
            # A may use its 4 cores and borrow 2 of B's idle ones: 3 jobs, not 4.
            for j in jobs[:3]:
                await svc.wait(j["id"], a, {"SCHEDULED"})
            await asyncio.sleep(0.5)
            _, last = await svc.call("GET", f"/v1/jobs/{jobs[3]['id']}", a)
            assert last["state"] == "PENDING" and last["reason"] == "quota_exceeded"
            _, quotas = await svc.call("GET", "/v1/quotas", a)
            assert quotas["quotas"][0]["usage"]["cpu_milli"] == 6000
            st, _ = await svc.call("DELETE", "/v1/quotas/A", a)
            assert st == 204
            # Without a quota A is limited by the node alone: the fourth job starts.
            await svc.wait(jobs[3]["id"], a, {"SCHEDULED"})
            assert (await svc.call("DELETE", "/v1/quotas/A", a))[0] == 404

    asyncio.run(main_())


def test_project_admins_manage_their_projects_nodes(tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_service(tmp_path) as svc:
            for name, labels in (("own", {"cplat.io/project": "A"}), ("shared", {})):
                body = {"name": name, "cpu_milli": 1000, "memory_mib": 1024, "labels": labels}
                assert (await svc.call("POST", "/v1/nodes", ADMIN, json=body))[0] == 201
            a_admin, a_member = token("ada", "A", "admin"), token("mia", "A", "member")
            b_admin = token("bea", "B", "admin")
            st, node = await svc.call("POST", "/v1/nodes/own/cordon", a_admin)
            assert st == 200 and node["state"] == "cordoned"
            assert (await svc.call("POST", "/v1/nodes/own/uncordon", a_member))[0] == 403
            assert (await svc.call("POST", "/v1/nodes/own/drain", b_admin))[0] == 403
            assert (await svc.call("POST", "/v1/nodes/shared/cordon", a_admin))[0] == 403
            _, log = await svc.call("GET", "/v1/audit", a_admin)
            assert [(e["user"], e["target"], e["status"]) for e in log["entries"]] == [
                ("ada", "node/own", 200),
                ("mia", "node/own", 403),
                ("bea", "node/own", 403),  # another project's attempt on A's node
                ("ada", "node/shared", 403),
            ]

    asyncio.run(main_())
