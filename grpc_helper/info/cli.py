"""``grpc-helper info`` (``python -m grpc_helper.info``): show what a server hosts.

    grpc-helper info                                  # 127.0.0.1:50051, table
    grpc-helper info -e [::1]:50051 --json            # JSON
    grpc-helper info --port 50051 --tls-dir DIR       # mTLS with the files of `grpc-helper certs init`

Exit codes: the shared table of doc/cli.md (0 ok, 2 usage, 3 server unreachable, 4 unknown service, 8 TLS
material...).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from grpc_helper._cli.endpoint import DEFAULT_PORT, Endpoint, parse_endpoint
from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper._cli.parser import add_endpoint, new_parser
from grpc_helper._cli.tls import add_client_tls_options, client_credentials
from grpc_helper.api import info_pb2, info_pb2_grpc
from grpc_helper.client import RpcClient

__all__ = ["DEFAULT_PORT", "format_table", "main"]

_COLUMNS = ("name", "package", "version", "supported_api_version", "current_api_version", "full_name")
_HEADERS = ("SERVICE", "PACKAGE", "VERSION", "API MIN", "API CUR", "GRPC SERVICE")


def format_table(items: Sequence[info_pb2.ServiceInfo]) -> str:
    rows = [_HEADERS, *([str(getattr(i, c)) for c in _COLUMNS] for i in items)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = new_parser(prog, "Show the services a server hosts.")
    add_endpoint(parser)
    parser.add_argument("--host", help="server host (overrides the endpoint's)")
    parser.add_argument("--port", type=int, help="server port (overrides the endpoint's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default: %(default)s)")
    parser.add_argument("--service", dest="names", action="append", default=[], help="only this service (repeatable)")
    add_client_tls_options(parser)
    return parser


def _endpoint(args: argparse.Namespace) -> Endpoint:
    endpoint: Endpoint = args.endpoint
    if args.host:
        try:
            host = parse_endpoint(args.host if ":" not in args.host or args.host.startswith("[") else f"[{args.host}]").host
        except ValueError as exc:
            raise CliError(f"--host: {exc}", ExitCode.USAGE) from None
        endpoint = endpoint._replace(host=host)
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise CliError(f"--port: {args.port} is not a port", ExitCode.USAGE)
        endpoint = endpoint._replace(port=args.port)
    return endpoint


def _info(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    credentials = client_credentials(args)
    stubs = {"info": (info_pb2_grpc.InfoServiceStub, info_pb2.INFO_API_CURRENT)}
    with RpcClient(endpoint.host, endpoint.port, stubs, timeout=args.timeout, name="info-cli", credentials=credentials) as c:
        reply = c.info.get(info_pb2.InfoFilter(names=args.names), timeout=args.timeout)
    if args.json:
        print(json.dumps([{c: getattr(i, c) for c in _COLUMNS} for i in reply.items], indent=2))
    else:
        print(format_table(reply.items))
    return ExitCode.OK


def main(argv: Sequence[str] | None = None, prog: str = "grpc-helper info") -> int:
    args = _parser(prog).parse_args(argv)
    return run(lambda: _info(args))
