"""``python -m grpc_helper.grid``: serve, worker, status, stop-worker, start-worker, shutdown, submit."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from grpc_helper import RpcException, RpcServer
from grpc_helper._cli.parser import add_version
from grpc_helper.grid.client import GridClient, GridController, JobError
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.handlers import load_handler
from grpc_helper.grid.manager import descriptors
from grpc_helper.grid.worker import GridWorker

DEFAULT_ENDPOINT = "127.0.0.1:50051"


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _tls_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (plaintext when omitted)")
    group.add_argument("--ca", help="CA certificate (PEM): verify the peer")
    group.add_argument("--cert", help="own certificate (PEM)")
    group.add_argument("--key", help="own private key (PEM)")


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not (args.ca or args.cert or args.key):
        return None
    return grpc.ssl_channel_credentials(_read(args.ca), _read(args.key), _read(args.cert))


def _server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    if not (args.cert and args.key):
        if args.ca or args.cert or args.key:
            raise SystemExit("serve: TLS needs --cert and --key (and --ca to require client certificates)")
        return None
    pair = [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())]
    ca = _read(args.ca)
    return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=ca is not None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grpc_helper.grid", description=__doc__)
    add_version(parser)
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
    serve.add_argument("--max-jobs", type=int, default=GridLimits.max_jobs)
    serve.add_argument("--max-payload-bytes", type=int, default=GridLimits.max_payload_bytes)
    serve.add_argument("--max-retries", type=int, default=GridLimits.max_retries)
    serve.add_argument("--heartbeat", type=float, default=GridLimits.heartbeat_interval, help="seconds")
    serve.add_argument("--worker-arg", action="append", default=[], help="extra option for spawned workers")
    _tls_args(serve)

    worker = sub.add_parser("worker", help="run a worker (Ctrl+C: drain and exit 0; twice: exit at once)")
    worker.add_argument("handler", help="package.module:function taking and returning bytes")
    worker.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    worker.add_argument("--service", required=True, help="service id")
    worker.add_argument("--version", required=True, help="service version")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--prefetch", type=int, default=None)
    worker.add_argument("--description", default="")
    _tls_args(worker)

    for name, help_ in (
        ("status", "print the grid status"),
        ("stop-worker", "stop a worker (it finishes its jobs and exits)"),
        ("start-worker", "spawn a worker process on the server host"),
        ("shutdown", "shut the grid server down (jobs not done are reported failed)"),
        ("submit", "submit jobs and print their results"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds")
        _tls_args(p)
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


def _serve(args: argparse.Namespace) -> int:
    handlers = {}
    for item in args.handler:
        service, sep, ref = item.partition("=")
        if not sep:
            raise SystemExit(f"--handler expects SERVICE=package.module:function, got {item!r}")
        handlers[service] = ref
    limits = GridLimits(
        max_jobs=args.max_jobs,
        max_payload_bytes=args.max_payload_bytes,
        max_retries=args.max_retries,
        heartbeat_interval=args.heartbeat,
        heartbeat_timeout=3 * args.heartbeat,
    )
    hosting: list[RpcServer] = []  # the controller's shutdown stops the server once the grid is closed
    descs = descriptors(
        limits=limits, handlers=handlers, worker_args=args.worker_arg, on_shutdown=lambda: hosting[0].shutdown(2.0)
    )
    creds = _server_credentials(args)
    client_creds = channel_credentials(args) if creds is not None else None
    server = RpcServer(args.port, descs, host=args.host, credentials=creds, client_credentials=client_creds)
    hosting.append(server)
    print(f"grid serving on {args.host}:{server.port}", flush=True)
    server.serve_forever(grace=2.0)  # the grid closes first (begin_shutdown): workers drain, streams end
    return 0


def _worker(args: argparse.Namespace) -> int:
    worker = GridWorker(
        args.endpoint,
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


def _submit(args: argparse.Namespace) -> int:
    payloads = [d.encode() for d in args.data] or [line.rstrip("\n").encode() for line in sys.stdin]
    failed = 0
    with GridClient(args.endpoint, credentials=channel_credentials(args), timeout=args.timeout) as client:
        handles = client.submit_batch(args.service, args.version, payloads)
        for handle in handles:
            try:
                print(f"{handle.job_id}: {handle.result(args.timeout).decode(errors='replace')}")
            except JobError as exc:
                failed += 1
                print(f"{handle.job_id}: ERROR {exc.message}")
            except TimeoutError:
                failed += 1
                print(f"{handle.job_id}: no result within {args.timeout:g}s (is a worker serving "
                      f"{args.service}/{args.version}?)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command in ("serve", "worker") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "submit":
            return _submit(args)
        with GridController(args.endpoint, credentials=channel_credentials(args), timeout=args.timeout) as ctl:
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
                print(f"shutting down in {done.delay:g}s ({done.jobs_pending} job(s) pending will fail)")
        return 0
    except (RpcException, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
