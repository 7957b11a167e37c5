"""``RpcCliParser``: the conventional command line of a server program built on grpc-helper.

    my-server [--host H] [--port P] [--port-file F] [--tls-dir DIR] [--system DIR] [--user DIR]
              [--workspace DIR] [-c name=value ...] [-v | --log-level LEVEL] [--version]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from grpc_helper import certs
from grpc_helper.builtin import BuiltinServices
from grpc_helper.config import Config, ConfigError, CoreConfig, Folders
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.events import Events
from grpc_helper.logger.manager import LEVELS
from grpc_helper.server import RpcServer

#: Identity of a server's own auto-client in its TLS directory (an administrator of its own services).
AUTO_CLIENT = "auto-client"
DEFAULT_PORT = 50051

Descriptors = Callable[[BuiltinServices], Sequence[RpcServiceDescriptor]]


class RpcCliParser:
    """An ``argparse`` parser giving a server program the conventional options, and the server they describe.

    :param name: program name; also names the default folders (``/etc/<name>``, ``~/.config/<name>``).
    :param version: shown by ``--version``.
    :param holders: the program's config holder classes (``CoreConfig`` is always there).
    :param default_port: port when ``--port`` is not given.

    Add your own options on ``.parser``. Example (a whole program)::

        def main() -> int:
            cli = RpcCliParser("my-server", my_pkg.__version__, holders=[MyConfig])
            return cli.serve(lambda services: [my_descriptor(MyManager(services.config, services.events))])

    Exit codes of ``serve``: 0 after a clean stop, 1 when the server cannot start (port busy, a manager's
    ``load()`` failed), 2 for bad arguments or a bad configuration (argparse's usage error).
    """

    def __init__(self, name: str, version: str, *, holders: Iterable[Any] = (), default_port: int = DEFAULT_PORT) -> None:
        self.name = name
        self.holders = list(holders)
        parser = self.parser = argparse.ArgumentParser(prog=name, description=f"{name} server")
        parser.add_argument("--version", action="version", version=f"{name} {version}")
        parser.add_argument("--host", default="[::]", help="interface to bind (default: all)")
        parser.add_argument("--port", type=int, default=default_port, help="port, 0 for any free one (default: %(default)s)")
        parser.add_argument("--port-file", type=Path, help="write the bound port to this file once serving")
        parser.add_argument("--tls-dir", type=Path, help="mTLS material (python -m grpc_helper.certs); plaintext without it")
        parser.add_argument("--system", type=Path, default=Path("/etc") / name, help="system config folder (default: %(default)s)")
        user = Path.home() / ".config" / name
        parser.add_argument("--user", type=Path, default=user, help="user config folder (default: %(default)s)")
        parser.add_argument("--workspace", type=Path, default=Path.cwd(), help="state folder: changed config, logs (default: current)")
        parser.add_argument("-c", "--config", action="append", default=[], metavar="NAME=VALUE", help="set a config item (repeatable)")
        level = parser.add_mutually_exclusive_group()
        level.add_argument("-v", "--verbose", action="count", default=0, help="log INFO (-vv: DEBUG)")
        level.add_argument("--log-level", choices=LEVELS[1:], type=str.upper, help="root log level (default: WARNING)")

    def parse(self, argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
        """Parse ``argv`` and build ``args.services`` (``BuiltinServices`` with the layered ``Config``); a bad
        option or configuration exits with status 2 and a one-line message."""
        args = self.parser.parse_args(argv)
        folders = Folders(args.system, args.user, args.workspace)
        try:
            config = Config(self.holders, folders=folders, environ=os.environ if environ is None else environ, overrides=args.config)
        except ConfigError as exc:
            self.parser.error(str(exc))
        args.services = BuiltinServices(config, Events(config[CoreConfig.EVENTS_WINDOW], config[CoreConfig.EVENTS_KEEPALIVE]))
        level = args.log_level or ("DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args

    def credentials(self, args: argparse.Namespace) -> tuple[grpc.ServerCredentials | None, grpc.ChannelCredentials | None, set[str]]:
        """(server credentials, auto-client credentials, admins) from ``--tls-dir`` (None, None, empty: plaintext)."""
        if args.tls_dir is None:
            return None, None, set()
        try:
            certs.init(args.tls_dir, clients=[AUTO_CLIENT])
            credentials = certs.server_credentials(args.tls_dir)
            client = certs.channel_credentials(args.tls_dir, AUTO_CLIENT)
        except (OSError, ValueError) as exc:
            self.parser.error(f"TLS directory {args.tls_dir}: {exc}")
        return credentials, client, {AUTO_CLIENT, *certs.admins_of(args.tls_dir)}

    def server(self, args: argparse.Namespace, descriptors: Descriptors) -> RpcServer:
        """The ``RpcServer`` ``args`` describe, hosting ``descriptors(args.services)``."""
        services: BuiltinServices = args.services
        config = services.config
        credentials, client_credentials, _admins = self.credentials(args)  # TODO(core access): admins=_admins
        return RpcServer(
            args.port,
            descriptors(services),
            host=args.host,
            credentials=credentials,
            client_credentials=client_credentials,
            max_workers=config[CoreConfig.WORKERS],
            dump_folder=config[CoreConfig.DUMP_FOLDER],
            services=services,
        )

    def serve(self, descriptors: Descriptors, argv: Sequence[str] | None = None) -> int:
        """Parse, start the server, serve until SIGINT/SIGTERM or the server service's ``shutdown``."""
        args = self.parse(argv)
        try:
            server = self.server(args, descriptors)
        except RpcException as exc:
            print(f"{self.name}: error: {exc}", file=sys.stderr)
            return 1
        if args.port_file:
            args.port_file.write_text(f"{server.port}\n")
        print(f"{self.name}: serving on {args.host}:{server.port} ({'mTLS' if args.tls_dir else 'plaintext'})", flush=True)
        server.serve_forever(grace=args.services.config[CoreConfig.SHUTDOWN_GRACE])
        return 0
