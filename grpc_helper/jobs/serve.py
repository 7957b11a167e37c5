"""``python -m grpc_helper.jobs serve``: the job runner on the asyncio server (mTLS), until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from grpc_helper import AsyncRpcServer, CallLimits
from grpc_helper import certs as tls
from grpc_helper._cli.exits import CliError, ExitCode
from grpc_helper._cli.parser import add_endpoint
from grpc_helper._cli.tls import add_server_tls_options, server_credentials, tls_dir
from grpc_helper.jobs import default_state_dir, descriptor
from grpc_helper.jobs.limits import (
    DEFAULT_MAX_LOG_BYTES,
    DEFAULT_MAX_RUNNING,
    DEFAULT_MAX_RUNNING_PER_OWNER,
    DEFAULT_MIN_FREE_BYTES,
    JobsLimits,
    parse_keep,
    parse_size,
)
from grpc_helper.jobs.sandbox import Isolation

CA_KEY = "ca.key"


def ca_key_beside(tls_dir: Path, *files: Path | None) -> Path | None:
    """The CA private key when it sits (readable) in a directory the server reads its credentials from."""
    for directory in dict.fromkeys([tls_dir, *(f.parent for f in files if f is not None)]):
        key = directory / CA_KEY
        if key.exists() and os.access(key, os.R_OK):
            return key
    return None


def bind_host(host: str) -> str:
    """The host as gRPC binds it: IPv6 literals in brackets (``::1`` -> ``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0: no limit), not {text[:40]!r}")
    return int(text)


def _keep_arg(text: str) -> tuple[float | None, int | None]:
    try:
        return parse_keep(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mapping(text: str) -> tuple[str, str]:
    name, sep, user = text.partition("=")
    if not sep or not name or not user:
        raise argparse.ArgumentTypeError(f"expected CLIENT=USER, not {text[:80]!r}")
    return name, user


def _namespaces(text: str) -> Isolation:
    names = {n.strip() for n in text.split(",") if n.strip()} - {"none"}
    unknown = names - {"pid", "net", "tmp"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown namespace(s) {', '.join(sorted(unknown))[:80]} (pid, net, tmp, none)")
    return Isolation(pid="pid" in names, net="net" in names, tmp="tmp" in names)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text[:40]!r}")
    return int(text)


def add_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the job runner server (mTLS, asyncio)")
    add_endpoint(s, default_host="localhost")
    add_server_tls_options(s, tls_default=True)
    s.add_argument("--state-dir", default=str(default_state_dir()), help="records and logs (default %(default)s)")
    s.add_argument("--admin", action="append", default=[], help="admin identity (also read from TLS_DIR/admins)")
    s.add_argument("--no-cgroups", action="store_true", help="never use cgroups (jobs with limits are refused)")
    s.add_argument("--grace", type=float, default=5.0, help="SIGTERM->SIGKILL delay for jobs at shutdown")
    s.add_argument("--max-running", type=_count_arg, default=DEFAULT_MAX_RUNNING,
                   help="running jobs on the server at once (default %(default)s)")
    s.add_argument("--max-running-per-client", type=_count_arg, default=DEFAULT_MAX_RUNNING_PER_OWNER,
                   help="running jobs of one client at once (default %(default)s)")
    s.add_argument("--max-log", type=_size_arg, default=DEFAULT_MAX_LOG_BYTES,
                   help="output kept per job; a job writing more is killed (default 1G; 0: no limit)")
    s.add_argument("--min-free", type=_size_arg, default=DEFAULT_MIN_FREE_BYTES,
                   help="Run is refused below this much free space for the state directory (default 64M)")
    s.add_argument("--keep", type=_keep_arg, action="append", default=[], metavar="AGE|COUNT",
                   help="purge finished jobs older than AGE (30d, 12h) or beyond the COUNT most recent; "
                        "repeatable; 'forever' keeps them all (default 30d)")
    s.add_argument("--run-as", help="account jobs run as (default: nobody when serving as root, else the server's)")
    s.add_argument("--run-as-for", type=_mapping, action="append", default=[], metavar="CLIENT=USER",
                   help="account the jobs of one client run as (repeatable)")
    s.add_argument("--namespaces", type=_namespaces, default=None, metavar="LIST",
                   help="namespaces of every job: pid, net, tmp, comma-separated, or none (default: pid where "
                        "available); clients may add net and tmp per job")
    defaults = CallLimits()
    s.add_argument("--max-calls-per-client", type=_positive_int, default=defaults.max_calls,
                   help="calls in flight per client, streams included (default %(default)s)")
    s.add_argument("--max-streams-per-client", type=_positive_int, default=defaults.max_streams,
                   help="log streams (any streaming call) in flight per client (default %(default)s)")
    s.add_argument("--allow-ca-key", action="store_true",
                   help="serve even though the CA private key sits beside the server's credentials (unsafe)")
    s.set_defaults(func=cmd_serve)


def _limits(args: argparse.Namespace) -> JobsLimits:
    keep_age: float | None = JobsLimits.keep_age
    keep_count: int | None = None
    if args.keep:
        keep_age = None
        for age, count in args.keep:
            keep_age = age if age is not None else keep_age
            keep_count = count if count is not None else keep_count
    return JobsLimits(
        max_running=args.max_running, max_running_per_owner=args.max_running_per_client,
        max_log_bytes=args.max_log, min_free_bytes=args.min_free, keep_age=keep_age, keep_count=keep_count,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.insecure:
        raise CliError("the job runner needs mutual TLS (it would refuse every plaintext call): drop --insecure",
                       ExitCode.USAGE)
    directory = tls_dir(args)
    key = ca_key_beside(directory, args.cert, args.key, args.ca)
    if key is not None:
        why = (f"the CA private key {key} is readable beside the server's credentials: whoever reads it (a "
               f"compromised server, a job escaping its sandbox) can mint any identity, admins included")
        if not args.allow_ca_key:
            raise CliError(f"{why}. Keep it out of the server's reach (`grpc-helper certs init {directory}` moves "
                           "it to its CA directory), or pass --allow-ca-key", ExitCode.CERTIFICATE)
        print(f"WARNING: {why} (--allow-ca-key)", file=sys.stderr, flush=True)
    credentials = server_credentials(args)
    admins = set(args.admin) | tls.admins_of(directory)
    options = {
        "cgroups": not args.no_cgroups, "stop_grace": args.grace, "limits": _limits(args), "run_as": args.run_as,
        "run_as_for": dict(args.run_as_for), "isolation": args.namespaces,
    }
    calls = CallLimits(max_calls=args.max_calls_per_client, max_streams=args.max_streams_per_client)
    server = AsyncRpcServer(
        args.endpoint.port, [descriptor(args.state_dir, **options)], host=bind_host(args.endpoint.host),
        credentials=credentials, admins=admins, limits=calls,
    )
    banner = (f"jobs: serving on {bind_host(args.endpoint.host)}:{{port}} (mTLS, CA {args.ca or directory / 'ca.pem'}), "
              f"state in {Path(args.state_dir).expanduser()}, admins: {', '.join(sorted(admins)) or '-'}")
    asyncio.run(_serve(server, banner))  # a refused start (port busy, state dir in use) raises RpcException
    return ExitCode.OK


async def _serve(server: AsyncRpcServer, banner: str) -> None:
    """Start, print the banner (``{port}`` filled in), serve until SIGINT/SIGTERM; running jobs are stopped then."""
    await server.start()
    print(banner.format(port=server.port), flush=True)
    await server.serve_forever(grace=1.0)
