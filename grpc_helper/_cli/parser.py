"""Argument parsers with ``--version``, and the endpoint option of client commands."""

from __future__ import annotations

import argparse
import os

from grpc_helper import __version__
from grpc_helper._cli.endpoint import DEFAULT_HOST, DEFAULT_PORT, Endpoint, endpoint_type


def new_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--version``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s (grpc-helper {__version__})", help="print the version and exit"
    )


def add_endpoint(
    parser: argparse.ArgumentParser, *, default_host: str = DEFAULT_HOST, default_port: int = DEFAULT_PORT, env: str | None = None
) -> None:
    """``-e/--endpoint HOST:PORT`` (``[::1]:50051`` for IPv6), parsed into an ``Endpoint`` (``args.endpoint``)."""
    default = str(Endpoint(default_host, default_port))
    parser.add_argument(
        "-e",
        "--endpoint",
        type=endpoint_type(default_host, default_port),
        default=(os.environ.get(env) if env else None) or default,
        metavar="HOST:PORT",
        help=f"server address, [IPV6]:PORT for IPv6 (default {default}{f', or ${env}' if env else ''})",
    )
