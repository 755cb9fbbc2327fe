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
    }
    return load_config(args.config, overrides=overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    _need_service()
    import logging

    from aiohttp import web

    from cplat_server.app import create_app

    cfg = _config(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg)
    where = "PostgreSQL" if cfg.store_url.startswith("postgres") else cfg.store_url
    print(
        f"cplat serve: http://{cfg.host}:{cfg.port}  store {where}  data {cfg.data_dir}\n"
        f"  token: cplat token create --data-dir {cfg.data_dir} --user you --project "
        "default --role admin",
        flush=True,
    )
    try:
        web.run_app(app, host=cfg.host, port=cfg.port, access_log=None, print=None)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {cfg.host}:{cfg.port} ({exc})", field="--port"
        ) from None
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    _need_service()
    from cplat_server.auth import create_token, parse_ttl
    from cplat_server.config import jwt_secret, load_config

    cfg = load_config(args.config, overrides={"data_dir": args.data_dir})
    secret = jwt_secret(cfg, create=False)
    print(
        create_token(
            secret,
            args.user,
            args.project,
            args.role,
            cluster_admin=args.cluster_admin,
            ttl=parse_ttl(args.ttl),
        )
    )
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    _need_service()
    import asyncio

    from cplat.runtime.agent import run_agent

    token = args.token or os.environ.get("CPLAT_TOKEN", "")
    if not token:
        raise InputError("give --token or set CPLAT_TOKEN (a cluster-admin token)", field="--token")
    work = args.work_dir or Path("cplat-agent")
    asyncio.run(run_agent(args.server, token, args.name, work, args.heartbeat))
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
    agent.add_argument("--work-dir", type=Path, help="task directories (default ./cplat-agent)")
    agent.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS")
    agent.set_defaults(func=_cmd_agent)

    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    create = tsub.add_parser(
        "create",
        help="print a signed token",
        description="Sign a token with the service's secret (CPLAT_JWT_SECRET, or the one "
        "`cplat serve` keeps in its data dir).",
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
