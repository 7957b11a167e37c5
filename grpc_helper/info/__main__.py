"""``python -m grpc_helper.info``: show what a server hosts.

    python -m grpc_helper.info --host 127.0.0.1 --port 50051          # table
    python -m grpc_helper.info --port 50051 --json                     # JSON
    python -m grpc_helper.info --port 50051 --ca ca.pem --cert me.pem --key me.key   # (m)TLS

Exit codes: 0 ok, 1 server unreachable or call failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from grpc_helper.api import info_pb2, info_pb2_grpc
from grpc_helper.client import RpcClient
from grpc_helper.errors import RpcException

DEFAULT_PORT = 50051
_COLUMNS = ("name", "package", "version", "supported_api_version", "current_api_version", "full_name")
_HEADERS = ("SERVICE", "PACKAGE", "VERSION", "API MIN", "API CUR", "GRPC SERVICE")


def channel_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from PEM files (None: plaintext). ``cert``/``key`` go together (mTLS)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("--cert and --key go together")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))


def format_table(items: Sequence[info_pb2.ServiceInfo]) -> str:
    rows = [_HEADERS, *([str(getattr(i, c)) for c in _COLUMNS] for i in items)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_helper.info", description="Show the services a server hosts.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the server (default: %(default)s)")
    parser.add_argument("--name", action="append", default=[], help="only this service (repeatable)")
    parser.add_argument("--ca", help="CA certificate (PEM) to verify a TLS server")
    parser.add_argument("--cert", help="client certificate (PEM) for mTLS")
    parser.add_argument("--key", help="client private key (PEM) for mTLS")
    args = parser.parse_args(argv)
    try:
        credentials = channel_credentials(args.ca, args.cert, args.key)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stubs = {"info": (info_pb2_grpc.InfoServiceStub, info_pb2.INFO_API_CURRENT)}
    try:
        with RpcClient(args.host, args.port, stubs, timeout=args.timeout, name="info-cli", credentials=credentials) as c:
            reply = c.info.get(info_pb2.InfoFilter(names=args.name), timeout=args.timeout)
    except RpcException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{c: getattr(i, c) for c in _COLUMNS} for i in reply.items], indent=2))
    else:
        print(format_table(reply.items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
