"""``grpc-helper certs init DIR [--client NAME ...] [--admin NAME ...] [--ca-dir CA_DIR]``
(``python -m grpc_helper.certs``): create or complete a TLS directory (see ``grpc_helper.certs``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper._cli.parser import new_parser
from grpc_helper.certs import CertificateError, default_ca_dir, default_client, default_dir, init


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = new_parser(prog, "TLS material for grpc-helper servers and clients (a private CA, mTLS key pairs).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create (or complete) a CA, a server certificate and client key pairs")
    p.add_argument("dir", nargs="?", type=Path, default=default_dir(), help="TLS directory (default %(default)s)")
    p.add_argument("--client", action="append", default=[], metavar="NAME", help="client identity (repeatable)")
    p.add_argument("--admin", action="append", default=[], metavar="NAME", help="admin identity (repeatable)")
    p.add_argument("--ca-dir", type=Path, help="where the CA and its private key live (default: DIR-ca, beside DIR)")
    return parser


def _init(args: argparse.Namespace) -> int:
    clients = args.client or ([] if args.admin else [default_client()])
    try:
        directory = init(args.dir, clients, args.admin, ca_dir=args.ca_dir)
    except OSError as exc:
        raise CliError(f"cannot write TLS material: {exc}", ExitCode.CERTIFICATE) from None
    except CertificateError:
        raise
    except ValueError as exc:  # a bad name
        raise CliError(str(exc), ExitCode.USAGE) from None
    names = ", ".join(dict.fromkeys(clients + args.admin))
    ca_dir = args.ca_dir or default_ca_dir(directory)
    print(f"{directory}: CA certificate, server and client key pairs ready ({names}); CA private key in {ca_dir}")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None, prog: str = "grpc-helper certs") -> int:
    args = _parser(prog).parse_args(argv)
    return run(lambda: _init(args))
