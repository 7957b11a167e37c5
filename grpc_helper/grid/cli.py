"""``python -m grpc_helper.grid``: serve, worker, status, stop-worker, start-worker, shutdown, submit.

Every command speaks mTLS with the material of ``--tls-dir`` (see ``python -m grpc_helper.certs``) unless
``--insecure`` asks for plaintext. ``--endpoint`` may name several servers of one grid (repeated, or
comma-separated): the commands use the first reachable one and fail over to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence

import grpc

from grpc_helper import Access, AsyncRpcServer, RpcException
from grpc_helper import certs as tls
from grpc_helper._cli import tls as cli_tls
from grpc_helper._cli.endpoint import parse_endpoints
from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper._cli.parser import new_parser
from grpc_helper.grid.backends import Backend, BackendUnavailable, SqliteBackend, StateDirBusy, default_state_dir, open_backend
from grpc_helper.grid.client import GridClient
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.controller import GridController
from grpc_helper.grid.handlers import load_handler
from grpc_helper.grid.manager import descriptors
from grpc_helper.grid.worker import GridWorker

DEFAULT_ENDPOINT = "127.0.0.1:50051"
#: Identity of the workers that the controller's start-worker spawns (created in the TLS directory if needed).
SPAWNED_WORKER = "grid-worker"


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    return cli_tls.client_credentials(args)


def _spawned_tls_options(args: argparse.Namespace, credentials: grpc.ServerCredentials | None) -> list[str]:
    """The TLS options of the workers the server spawns (their identity: ``SPAWNED_WORKER``)."""
    if credentials is None:
        return ["--insecure"]
    options = ["--tls-dir", str(cli_tls.tls_dir(args)), "--name", SPAWNED_WORKER]
    if args.ca:
        options += ["--ca", str(args.ca)]
    return options


def _endpoints(text: str) -> list[str]:
    """argparse ``type``: ``HOST:PORT[,HOST:PORT...]``, by the shared parser (a bad one is a usage error)."""
    try:
        return [str(e) for e in parse_endpoints(text, require_port=True)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        action="append",
        type=_endpoints,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"grid server ([IPV6]:PORT); several servers of one grid: repeat the option or separate with "
        f"commas (used in order, failing over to the next; default {DEFAULT_ENDPOINT})",
    )


def endpoints_of(args: argparse.Namespace) -> list[str]:
    """The ``--endpoint`` values, flattened in order, duplicates once (default: ``DEFAULT_ENDPOINT``)."""
    given: Iterable[list[str]] = args.endpoint or [[DEFAULT_ENDPOINT]]
    return list(dict.fromkeys(e for group in given for e in group))


def _parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m grpc_helper.grid", __doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a grid server (Ctrl+C/SIGTERM or the shutdown command stop it)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind ([::] for all)")
    serve.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed on stdout)")
    serve.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="SERVICE=package.module:function",
        help="handler of workers spawned by start-worker for SERVICE (default: echo)",
    )
    serve.add_argument(
        "--backend",
        default="sqlite",
        metavar="sqlite|memory|redis://HOST:PORT/DB",
        help="where accepted jobs and undelivered results live: sqlite (durable, in --state-dir; default), "
        "memory (lost when the server exits), or redis://HOST:PORT/DB[?prefix=NAME] (one queue shared by the "
        "grid servers using the same Redis)",
    )
    serve.add_argument(
        "--state-dir", default=str(default_state_dir()), help="sqlite backend's directory (default %(default)s)"
    )
    serve.add_argument("--admin", action="append", default=[], help="admin identity (also read from TLS_DIR/admins)")
    serve.add_argument("--max-jobs", type=int, default=GridLimits.max_jobs)
    serve.add_argument("--max-session-jobs", type=int, default=GridLimits.max_session_jobs)
    serve.add_argument("--max-payload-bytes", type=int, default=GridLimits.max_payload_bytes)
    serve.add_argument("--max-retries", type=int, default=GridLimits.max_retries)
    serve.add_argument("--result-ttl", type=float, default=GridLimits.result_ttl, help="seconds")
    serve.add_argument("--session-ttl", type=float, default=GridLimits.session_ttl, help="seconds")
    serve.add_argument("--heartbeat", type=float, default=GridLimits.heartbeat_interval, help="seconds")
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=GridLimits.lease_ttl,
        help="redis backend: seconds before the jobs of a lost grid server are taken over by the others",
    )
    serve.add_argument("--worker-arg", action="append", default=[], help="extra option for spawned workers")
    cli_tls.add_server_tls_options(serve)

    worker = sub.add_parser("worker", help="run a worker (Ctrl+C: drain and exit 0; twice: exit at once)")
    worker.add_argument("handler", help="package.module:function taking and returning bytes")
    _add_endpoint_option(worker)
    worker.add_argument("--service", required=True, help="service id")
    worker.add_argument("--version", required=True, help="service version")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--prefetch", type=int, default=None, help="default: adapted to the handler's speed")
    worker.add_argument("--description", default="")
    cli_tls.add_client_tls_options(worker, tls_default=True)

    for name, help_ in (
        ("status", "print the grid status"),
        ("stop-worker", "stop a worker (it finishes its jobs and exits)"),
        ("start-worker", "spawn a worker process on the server host"),
        ("shutdown", "shut the grid server down (jobs not done are reported failed)"),
        ("submit", "submit jobs and print their results"),
    ):
        p = sub.add_parser(name, help=help_)
        _add_endpoint_option(p)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds (for submit: the whole command's)")
        cli_tls.add_client_tls_options(p, tls_default=True)
        if name == "status":
            p.add_argument("--json", action="store_true", help="raw JSON")
        elif name == "stop-worker":
            p.add_argument("worker_id", type=int)
        elif name == "start-worker":
            p.add_argument("spec", help='"<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>"')
        elif name == "shutdown":
            p.add_argument("--delay", type=float, default=0.0, help="seconds (0: server default)")
        elif name == "submit":
            p.add_argument("--service", required=True)
            p.add_argument("--version", required=True)
            p.add_argument("data", nargs="*", help="payloads (UTF-8); none: one per stdin line")
    return parser


def _limits(args: argparse.Namespace) -> GridLimits:
    return GridLimits(
        max_jobs=args.max_jobs,
        max_session_jobs=args.max_session_jobs,
        max_payload_bytes=args.max_payload_bytes,
        max_retries=args.max_retries,
        result_ttl=args.result_ttl,
        session_ttl=args.session_ttl,
        heartbeat_interval=args.heartbeat,
        heartbeat_timeout=3 * args.heartbeat,
        lease_ttl=args.lease_ttl,
    )


def _serve(args: argparse.Namespace) -> int:
    """Host the grid on an asyncio server: waiting workers and clients cost no thread."""
    handlers = {}
    for item in args.handler:
        service, sep, ref = item.partition("=")
        if not sep:
            raise ValueError(f"--handler expects SERVICE=package.module:function, got {item!r}")
        handlers[service] = ref
    limits = _limits(args)
    admins: set[str] = set(args.admin)
    credentials = cli_tls.server_credentials(args)
    client_credentials = None
    if credentials is not None:
        directory = cli_tls.tls_dir(args)
        admins |= tls.admins_of(directory)
        if not tls.TlsFiles(directory, SPAWNED_WORKER).cert.exists():
            try:
                tls.init(directory, clients=[SPAWNED_WORKER])  # needs the CA key: else spawned workers can't connect
            except Exception as exc:
                logging.getLogger("grpc_helper.grid").warning("no certificate for spawned workers: %s", exc)
        if tls.TlsFiles(directory, SPAWNED_WORKER).cert.exists():
            client_credentials = tls.channel_credentials(directory, SPAWNED_WORKER, ca=args.ca)
    try:
        backend = open_backend(args.backend, args.state_dir)
    except StateDirBusy as exc:
        raise CliError(str(exc), ExitCode.CONFLICT) from None
    except ValueError as exc:  # not a backend name or URL this build knows
        raise CliError(f"--backend: {exc}", ExitCode.USAGE) from None
    except BackendUnavailable as exc:
        raise CliError(str(exc), ExitCode.UNREACHABLE) from None
    except (OSError, sqlite3.Error) as exc:
        where = f"in {args.state_dir}" if args.backend == "sqlite" else f"of --backend {args.backend}"
        raise CliError(f"cannot open the grid state {where}: {exc}", ExitCode.ERROR) from None
    try:
        return asyncio.run(_serve_async(args, limits, handlers, admins, credentials, client_credentials, backend))
    finally:
        backend.close()


async def _serve_async(
    args: argparse.Namespace,
    limits: GridLimits,
    handlers: dict[str, str],
    admins: set[str],
    credentials: grpc.ServerCredentials | None,
    client_credentials: grpc.ChannelCredentials | None,
    backend: Backend,
) -> int:
    hosting: list[AsyncRpcServer] = []  # the controller's shutdown stops the server once the grid is closed
    descs = descriptors(
        limits=limits,
        backend=backend,
        handlers=handlers,
        worker_args=[*_spawned_tls_options(args, credentials), *args.worker_arg],
        on_shutdown=lambda: hosting[0].shutdown(2.0),
        workers=Access.AUTHENTICATED if credentials is not None else Access.ANYONE,
    )
    server = AsyncRpcServer(
        args.port,
        descs,
        host=args.host,
        credentials=credentials,
        client_credentials=client_credentials,
        options=limits.server_options(),
        admins=admins,
    )
    hosting.append(server)
    await server.start()
    mode = "plaintext" if credentials is None else f"mTLS, admins: {', '.join(sorted(admins)) or '-'}"
    mode += f", backend {backend.name}" + (f" in {backend.state_dir}" if isinstance(backend, SqliteBackend) else "")
    print(f"grid serving on {args.host}:{server.port} ({mode})", flush=True)
    await server.serve_forever(grace=2.0)  # the grid closes first (begin_shutdown): workers drain, streams end
    return 0


def _worker(args: argparse.Namespace) -> int:
    worker = GridWorker(
        endpoints_of(args),
        args.service,
        args.version,
        load_handler(args.handler),
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        description=args.description,
        credentials=channel_credentials(args),
    )
    return worker.run()


def _print_status(status: dict[str, object]) -> None:
    workers = status.get("workers", [])
    queues = status.get("queues", [])
    backend = status.get("backend", {})
    if isinstance(backend, dict):
        where = f" ({backend.get('path') or backend.get('url')})" if backend.get("path") or backend.get("url") else ""
        print(f"backend: {backend.get('name')}{where}, durable: {'yes' if backend.get('durable') else 'no'}")
    print(f"workers: {len(workers)}")  # type: ignore[arg-type]
    for w in workers:  # type: ignore[attr-defined]
        print(
            f"  #{w['id']} {w['description']} {w['service_id']}/{w['service_version']} {w['state']}"
            f" in_flight={w['in_flight']} done={w['jobs_done']} failed={w['jobs_failed']}"
        )
    print("queues:")
    for q in queues:  # type: ignore[attr-defined]
        print(f"  {q['service_id']}/{q['service_version']}: depth={q['depth']} running={q['running']} workers={q['workers']}")
    print("counters: " + " ".join(f"{k}={v}" for k, v in status.get("counters", {}).items()))  # type: ignore[attr-defined]
    grid = status.get("grid")
    if isinstance(grid, dict):  # a shared backend: the whole grid
        if "error" in grid:
            print(f"grid: unknown ({grid['error']})")
            return
        servers, shared = grid.get("servers", []), grid.get("queues", [])
        print(f"grid: {len(servers)} server(s)")
        for server in servers:
            counters = server.get("counters", {})
            print(
                f"  {server['server']} workers={len(server.get('workers', []))}"
                f" sessions={server.get('sessions', {}).get('count', 0)} done={counters.get('done', 0)}"
            )
        print("grid queues:")
        for q in shared:
            print(f"  {q['service_id']}/{q['service_version']}: queued={q['queued']} leased={q['leased']}")


def _submit(args: argparse.Namespace) -> int:
    payloads = [d.encode() for d in args.data] or [line.rstrip("\n").encode() for line in sys.stdin]
    end = time.monotonic() + args.timeout
    failed = 0
    with GridClient(endpoints_of(args), credentials=channel_credentials(args), timeout=args.timeout) as client:
        print(f"session {client.session}", flush=True)
        handles = client.submit_batch(args.service, args.version, payloads)
        for handle in handles:
            try:
                print(f"{handle.job_id}: {handle.result(max(0.0, end - time.monotonic())).decode(errors='replace')}")
            except RpcException as exc:
                failed += 1
                print(f"{handle.job_id}: ERROR {exc.message}")
            except TimeoutError:
                failed += 1
                cancelled = "cancelled" if _cancel(client, handle.job_id) else "not cancelled"
                print(
                    f"{handle.job_id}: no result within {args.timeout:g}s ({cancelled}; is a worker serving "
                    f"{args.service}/{args.version}?)"
                )
    return ExitCode.TASK_FAILED if failed else ExitCode.OK


def _cancel(client: GridClient, job_id: int) -> bool:
    try:
        return client.cancel(job_id)
    except RpcException:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command in ("serve", "worker") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "submit":
            return _submit(args)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    with GridController(endpoints_of(args), credentials=channel_credentials(args), timeout=args.timeout) as ctl:
        if args.command == "status":
            status = ctl.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
        elif args.command == "stop-worker":
            print(json.dumps(ctl.stop_worker(args.worker_id)))
        elif args.command == "start-worker":
            started = ctl.start_worker(args.spec)
            print(f"worker started: pid {started.pid}, handler {started.handler}")
        elif args.command == "shutdown":
            done = ctl.shutdown(args.delay)
            print(f"{ctl.endpoint} shutting down in {done.delay:g}s ({done.jobs_pending} job(s) pending)")
    return ExitCode.OK
