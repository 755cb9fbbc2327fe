"""``cplat serve``, ``cplat agent`` and ``cplat token``: the live service's command line."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from cplat.errors import InputError

_MISSING = "the service needs its extra packages: pip install 'cplat[service]'"


def _need_service() -> None:
    try:
        import aiohttp  # noqa: F401
        import jwt  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise InputError(f"{_MISSING} ({exc.name} is missing)", field="install") from None


def _config(args: argparse.Namespace) -> Any:
    from cplat_server.config import load_config

    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "db": args.db,
        "profile": getattr(args, "profile", None),
        "local_agent": False if getattr(args, "no_local_agent", False) else None,
        "node_timeout": getattr(args, "node_timeout", None),
        "lease": getattr(args, "lease", None),
        "max_streams_per_user": getattr(args, "max_streams_per_user", None),
        "submit_rate": getattr(args, "submit_rate", None),
        "submit_burst": getattr(args, "submit_burst", None),
        "tls_cert": getattr(args, "tls_cert", None),
        "tls_key": getattr(args, "tls_key", None),
        "max_job_token_ttl": getattr(args, "max_job_token_ttl", None),
        "idempotency_ttl": getattr(args, "idempotency_ttl", None),
        "task_user": getattr(args, "task_user", None),
    }
    try:
        return load_config(args.config, overrides=overrides)
    except InputError as exc:
        # A value typed as an option is reported as that option, not as the key it overrides.
        if exc.source is None and exc.field is not None and overrides.get(exc.field) is not None:
            flag = "--no-local-agent" if exc.field == "local_agent" else "--" + exc.field
            raise InputError(exc.message, field=flag.replace("_", "-")) from None
        raise


def _cmd_serve(args: argparse.Namespace) -> int:
    _need_service()
    import logging

    from aiohttp import web

    from cplat_server.app import create_app
    from cplat_server.config import ssl_context
    from cplat_server.datadir import lock_data_dir, secure_data_dir

    cfg = _config(args)
    # Before anything starts: a bad certificate is the operator's to fix, not a crash.
    tls = ssl_context(cfg)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Private before anything is written there, and ours alone while we run.
    secure_data_dir(cfg.data_dir, _sqlite_file(cfg.store_url))
    lock = lock_data_dir(cfg.data_dir)
    try:
        app = create_app(cfg)
    except BaseException:
        lock.release()
        raise
    where = "PostgreSQL" if cfg.store_url.startswith("postgres") else cfg.store_url
    banner = (
        f"cplat serve: {'https' if tls else 'http'}://{cfg.host}:{cfg.port}  store {where}  "
        f"data {cfg.data_dir}\n"
        f"  token: cplat token create --data-dir {cfg.data_dir} --user you --project "
        "default --role admin"
    )

    def listening(_aiohttp_banner: str) -> None:
        # run_app calls this once every socket is bound: a port clash never shows the banner.
        print(banner, flush=True)

    try:
        web.run_app(
            app, host=cfg.host, port=cfg.port, access_log=None, print=listening, ssl_context=tls
        )
    except OSError as exc:
        raise InputError(
            f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})", field="--port"
        ) from None
    finally:
        lock.release()
    return 0


def _sqlite_file(url: str) -> Path | None:
    from cplat.store import sqlite_path

    try:
        return sqlite_path(url)
    except ValueError as exc:
        raise InputError(str(exc), field="--db") from None


def _cmd_token(args: argparse.Namespace) -> int:
    _need_service()
    import sys
    import time

    from cplat_server.auth import create_token, parse_ttl, token_id, token_id_expiry
    from cplat_server.config import jwt_secret, load_config

    cfg = load_config(args.config, overrides={"data_dir": args.data_dir})
    secret = jwt_secret(cfg, create=False)
    token = create_token(
        secret,
        args.user,
        args.project,
        args.role,
        cluster_admin=args.cluster_admin,
        ttl=parse_ttl(args.ttl),
    )
    # The token alone on stdout (scripts capture it); its id, needed to revoke it, on stderr.
    print(token, flush=True)
    jti = token_id(token)
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(token_id_expiry(jti) or 0))
    print(
        f"token id: {jti} (expires {expires}; revoke with: cplat token revoke {jti})",
        file=sys.stderr,
    )
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    _need_service()
    import asyncio

    from cplat.store import open_store
    from cplat_server.auth import Revocations, token_id_expiry
    from cplat_server.config import load_config
    from cplat_server.views.tokens import revoke_token

    if token_id_expiry(args.id) is None:
        raise InputError(
            f"{args.id!r} is not a token id (the `token id:` that `cplat token create` prints)",
            field="ID",
        )
    cfg = load_config(args.config, overrides={"data_dir": args.data_dir, "db": args.db})
    db = _sqlite_file(cfg.store_url)
    if db is not None and not db.exists():
        raise InputError(
            f"no store at {db}: give the server's --data-dir, or its --db", field="--data-dir"
        )

    async def revoke() -> bool:
        store = await open_store(cfg.store_url)
        try:
            _, new = await revoke_token(store, Revocations(), args.id, _whoami())
            return new
        finally:
            await store.close()

    new = asyncio.run(revoke())
    print(
        f"revoked token {args.id}: every server refuses it, and the job tokens derived from "
        "it, within a second"
        if new
        else f"token {args.id} was already revoked"
    )
    return 0


def _whoami() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cplat token revoke)"
    except (KeyError, OSError):
        return f"uid {os.getuid()} (cplat token revoke)"


def _cmd_agent(args: argparse.Namespace) -> int:
    _need_service()
    import asyncio

    from cplat.runtime.agent import run_agent

    token = args.token or os.environ.get("CPLAT_TOKEN", "")
    if not token:
        raise InputError("give --token or set CPLAT_TOKEN (a cluster-admin token)", field="--token")
    work = args.work_dir or Path("cplat-agent")
    ca = args.ca or os.environ.get("CPLAT_CA") or None
    from cplat.runtime.isolation import load_isolation_settings

    isolation = load_isolation_settings(
        args.agent_config,
        flags={
            "task_user": args.task_user,
            "task_root": args.task_root,
            "uid_range": args.uid_range,
            "project_users": args.project_user,
            "user_map": args.user_map,
            "cgroup": args.cgroup,
            "pids_max": args.pids_max,
            "devices": args.devices,
        },
    )
    asyncio.run(
        run_agent(args.server, token, args.name, work, args.heartbeat, ca=ca, isolation=isolation)
    )
    return 0


def add_service_commands(sub: Any) -> None:
    """Add ``serve``, ``agent`` and ``token`` to the ``cplat`` parser."""
    serve = sub.add_parser(
        "serve",
        help="run the control plane (API, scheduler loop, local agent)",
        description="Run the cplat service: the API over a durable store (SQLite in the data "
        "dir by default, or --db postgresql://...), the scheduling loop, and an agent for "
        "this machine. Settings: flags > CPLAT_* environment > --config FILE ([serve]).",
    )
    serve.add_argument("--config", metavar="FILE.toml", help="settings file with a [serve] table")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8470)")
    serve.add_argument("--data-dir", type=Path, help="data directory (default ./cplat-data)")
    serve.add_argument("--db", help="store URL: sqlite:///path or postgresql://user@host/db")
    serve.add_argument("--profile", help="scheduler profile (placement, queue) TOML")
    serve.add_argument("--no-local-agent", action="store_true", help="run no agent in-process")
    serve.add_argument("--node-timeout", type=float, help="seconds without heartbeat: node down")
    serve.add_argument(
        "--lease",
        type=float,
        help="node lease in seconds (default 20): an agent that cannot renew it stops its "
        "tasks; they are requeued lease + grace after its last heartbeat",
    )
    serve.add_argument(
        "--max-streams-per-user",
        type=int,
        help="event streams and log follows one user may hold open (default 16; 0: no cap)",
    )
    serve.add_argument(
        "--submit-rate",
        type=float,
        help="submissions per second per token, sustained (default 100; 0: no limit)",
    )
    serve.add_argument(
        "--submit-burst", type=int, help="submissions per token in one burst (default 1000)"
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    serve.add_argument(
        "--max-job-token-ttl",
        type=int,
        metavar="SECONDS",
        help="longest lifetime of a job's token (default 604800, 7 days); it also ends with "
        "the token that submitted the job",
    )
    serve.add_argument(
        "--idempotency-ttl",
        type=int,
        metavar="SECONDS",
        help="how long a submission's Idempotency-Key is remembered (default 86400)",
    )
    serve.add_argument(
        "--task-user",
        help="local agent's task user: dynamic (default as root), self, or an account",
    )
    serve.set_defaults(func=_cmd_serve)

    agent = sub.add_parser(
        "agent",
        help="run a node agent: register this machine, run the tasks placed here",
        description="Discover this machine (CPU, memory, GPUs through NVML), register it with "
        "the server, heartbeat, and run the tasks the scheduler places here as processes.",
    )
    agent.add_argument("--server", default=os.environ.get("CPLAT_SERVER", "http://127.0.0.1:8470"))
    agent.add_argument("--token", help="cluster-admin token (default $CPLAT_TOKEN)")
    agent.add_argument("--name", default=None, help=f"node name (default {socket.gethostname()})")
    agent.add_argument(
        "--work-dir", type=Path, help="the agent's state, kept 0700 (default ./cplat-agent)"
    )
    agent.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS")
    agent.add_argument(
        "--ca",
        metavar="FILE",
        help="PEM CA bundle to verify an https:// server (default $CPLAT_CA, else the system's)",
    )
    iso = agent.add_argument_group(
        "task isolation",
        "Who tasks run as and what bounds them; settings: flags > CPLAT_* environment > "
        "--config FILE ([agent] table). Give the token through CPLAT_TOKEN rather than "
        "--token: a process's command line is readable by every user of the machine.",
    )
    iso.add_argument(
        "--config", dest="agent_config", metavar="FILE.toml", help="settings with an [agent] table"
    )
    iso.add_argument(
        "--task-user",
        help="dynamic (a transient uid per task; default as root), self (the agent's own "
        "user; the only choice without root), or an existing account ($CPLAT_TASK_USER)",
    )
    iso.add_argument("--task-root", type=Path, help="parent of the task folders")
    iso.add_argument("--uid-range", metavar="FIRST-LAST", help="dynamic uids (61184-65519)")
    iso.add_argument(
        "--project-user",
        action="append",
        metavar="PROJECT=ACCOUNT",
        help="run a project's tasks as this account (repeatable)",
    )
    iso.add_argument(
        "--user-map",
        action="append",
        metavar="USER=ACCOUNT",
        help="run a cplat user's tasks as this account (repeatable; wins over --project-user)",
    )
    iso.add_argument(
        "--cgroup",
        choices=("auto", "v2", "v1", "none"),
        help="task limits: cgroup v2, v1, or none (rlimits only); default auto",
    )
    iso.add_argument("--pids-max", type=int, help="processes per task (default 4096)")
    iso.add_argument(
        "--devices",
        choices=("auto", "bpf", "none"),
        help="device restriction: auto (v1 devices controller, else an eBPF device program), "
        "bpf (the program or refuse to start), none; default auto",
    )
    agent.set_defaults(func=_cmd_agent)

    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    create = tsub.add_parser(
        "create",
        help="print a signed token",
        description="Sign a token with the service's secret (CPLAT_JWT_SECRET, or the one "
        "`cplat serve` keeps in its data dir). The token goes to stdout alone; its id, which "
        "`cplat token revoke` takes, goes to stderr.",
    )
    create.add_argument("--user", required=True)
    create.add_argument("--project", required=True)
    create.add_argument("--role", choices=("viewer", "member", "admin"), default="member")
    create.add_argument("--cluster-admin", action="store_true")
    create.add_argument("--ttl", default="1h", help="lifetime: 30m, 1h, 7d (default 1h)")
    create.add_argument(
        "--data-dir", type=Path, help="the server's data dir (default ./cplat-data)"
    )
    create.add_argument("--config", metavar="FILE.toml")
    create.set_defaults(func=_cmd_token)
    revoke = tsub.add_parser(
        "revoke",
        help="revoke a token by id",
        description="Record in the service's store that a token (by the id `cplat token "
        "create` printed) is revoked: every server sharing the store refuses it within a "
        "second, and with it the tokens of the jobs it submitted. Cluster admins can also "
        "POST /v1/tokens/revoke.",
    )
    revoke.add_argument("id", metavar="ID", help="the token's id")
    revoke.add_argument(
        "--data-dir", type=Path, help="the server's data dir (default ./cplat-data)"
    )
    revoke.add_argument("--db", help="the server's store URL, when it is not in the data dir")
    revoke.add_argument("--config", metavar="FILE.toml")
    revoke.set_defaults(func=_cmd_token_revoke)
