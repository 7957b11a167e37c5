"""``python -m grpc_helper.certs init DIR [--client NAME ...] [--admin NAME ...]``."""

from __future__ import annotations

import argparse
import sys

from grpc_helper.certs import default_client, default_dir, init


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_helper.certs", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create (or complete) a CA, a server certificate and client key pairs")
    p.add_argument("dir", nargs="?", default=str(default_dir()), help=f"TLS directory (default {default_dir()})")
    p.add_argument("--client", action="append", default=[], metavar="NAME", help="client identity (repeatable)")
    p.add_argument("--admin", action="append", default=[], metavar="NAME", help="admin identity (repeatable)")
    args = parser.parse_args(argv)
    clients = args.client or ([] if args.admin else [default_client()])
    try:
        directory = init(args.dir, clients, args.admin)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = ", ".join(dict.fromkeys(clients + args.admin))
    print(f"{directory}: CA, server and client key pairs ready ({names})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
