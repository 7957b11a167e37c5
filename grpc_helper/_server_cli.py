"""``RpcCliParser``: the conventional command line of a server program built on grpc-helper.

    my-server [--host H] [--port P] [--port-file F] [--tls-dir DIR | --cert F --key F --ca F | --insecure]
              [--system DIR] [--user DIR] [--workspace DIR] [-c name=value ...] [-v | --log-level LEVEL] [--version]

TLS options, exit codes and their one-line error messages are those of every grpc-helper CLI (doc/cli.md).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from grpc_helper import __version__, certs
from grpc_helper._builtin import BuiltinServices
from grpc_helper._cli import tls
from grpc_helper._cli.endpoint import DEFAULT_PORT
from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper.aio.server import AsyncRpcServer
from grpc_helper.certs import CertificateError
from grpc_helper.config import Config, ConfigError, CoreConfig, Folders
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.events import Events
from grpc_helper.logger.manager import LEVELS
from grpc_helper.server import RpcServer

#: Identity of a server's own auto-client in its TLS directory (an administrator of its own services).
AUTO_CLIENT = "auto-client"

#: Builds the services a program hosts, given the server's built-in services (their ``config`` and ``events``).
Descriptors = Callable[[BuiltinServices], Sequence[RpcServiceDescriptor]]


class RpcCliParser:
    """An ``argparse`` parser giving a server program the conventional options, and the server they describe.

    :param name: program name; also names the default folders (``/etc/<name>``, ``~/.config/<name>``).
    :param version: the program's version, shown by ``--version``.
    :param holders: the program's config holder classes (``CoreConfig`` is always there).
    :param default_port: port when ``--port`` is not given.

    Add your own options on ``.parser``. A whole program::

        def main() -> int:
            cli = RpcCliParser("my-server", my_pkg.__version__, holders=[MyConfig])
            return cli.serve(lambda services: [my_descriptor(MyManager(services.config, services.events))])

    ``serve`` returns the shared exit codes: 0 after a clean stop, 2 for bad options or a bad configuration,
    8 for bad TLS material, 11 when the port is busy, 1 when a manager's ``load()`` failed.
    """

    def __init__(self, name: str, version: str, *, holders: Iterable[Any] = (), default_port: int = DEFAULT_PORT) -> None:
        self.name = name
        self.holders = list(holders)
        parser = self.parser = argparse.ArgumentParser(prog=name, description=f"{name} server")
        parser.add_argument(
            "--version", action="version", version=f"{name} {version} (grpc-helper {__version__})", help="print the version and exit"
        )
        parser.add_argument("--host", default="[::]", help="interface to bind (default: all)")
        parser.add_argument("--port", type=int, default=default_port, help="port, 0 for any free one (default: %(default)s)")
        parser.add_argument("--port-file", type=Path, metavar="FILE", help="write the bound port to this file once serving")
        tls.add_server_tls_options(parser, tls_default=False)
        folders = parser.add_argument_group("folders")
        user = Path.home() / ".config" / name
        system = Path("/etc") / name
        folders.add_argument("--system", type=Path, metavar="DIR", default=system, help="system config.json (default: %(default)s)")
        folders.add_argument("--user", type=Path, metavar="DIR", default=user, help="user config.json (default: %(default)s)")
        folders.add_argument("--workspace", type=Path, metavar="DIR", default=Path.cwd(), help="changed config, logs (default: .)")
        parser.add_argument("-c", "--config", action="append", default=[], metavar="NAME=VALUE", help="set a config item (repeatable)")
        level = parser.add_mutually_exclusive_group()
        level.add_argument("-v", "--verbose", action="count", default=0, help="log INFO (-vv: DEBUG)")
        level.add_argument("--log-level", choices=LEVELS[1:], type=str.upper, help="root log level (default: WARNING)")

    def parse(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
        """Parse ``argv``; set up logging; build ``args.services``: ``BuiltinServices`` with the layered
        ``Config`` (environment: ``environ``, default ``os.environ``). A bad option or configuration exits
        with status 2 and a one-line message naming the item and the reason."""
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

    def _tls(self, args: argparse.Namespace) -> dict[str, Any]:
        credentials = tls.server_credentials(args)
        if credentials is None:
            return {"credentials": None, "client_credentials": None, "admins": set()}
        directory = tls.tls_dir(args)
        certs.init(directory, clients=[AUTO_CLIENT])
        return {
            "credentials": credentials,
            "client_credentials": certs.channel_credentials(directory, AUTO_CLIENT),
            "admins": {AUTO_CLIENT, *certs.admins_of(directory)},
        }

    def server(self, args: argparse.Namespace, descriptors: Descriptors) -> RpcServer:
        """The ``RpcServer`` that ``args`` describe, hosting ``descriptors(args.services)``.

        With TLS, the server's auto-client uses the ``auto-client`` key pair of the TLS directory (created if
        missing) and the administrators are those of the directory's ``admins`` file, plus the auto-client."""
        services: BuiltinServices = args.services
        config = services.config
        return RpcServer(
            args.port,
            descriptors(services),
            host=args.host,
            max_workers=config[CoreConfig.WORKERS],
            dump_folder=config[CoreConfig.DUMP_FOLDER],
            limits=CoreConfig.limits(config),
            services=services,
            **self._tls(args),
        )

    def async_server(self, args: argparse.Namespace, descriptors: Descriptors) -> AsyncRpcServer:
        """The ``AsyncRpcServer`` that ``args`` describe (not started), like ``server()``::

            asyncio.run(cli.async_server(args, descriptors).serve_forever(grace))
        """
        services: BuiltinServices = args.services
        config = services.config
        return AsyncRpcServer(
            args.port,
            descriptors(services),
            host=args.host,
            dump_folder=config[CoreConfig.DUMP_FOLDER],
            limits=CoreConfig.limits(config, async_server=True),
            services=services,
            **self._tls(args),
        )

    def serve(self, descriptors: Descriptors, argv: Sequence[str] | None = None) -> int:
        """Parse, start the server, serve until SIGINT/SIGTERM or the server service's ``shutdown``; returns
        the exit code (failures are one ``error:`` line on stderr)."""
        args = self.parse(argv)

        def serve() -> int:
            try:
                server = self.server(args, descriptors)
            except (CliError, CertificateError, RpcException):
                raise  # reported with their own exit codes
            except Exception as exc:  # a manager's load() failed, a folder is unusable...
                raise CliError(f"cannot start {self.name}: {type(exc).__name__}: {exc}", ExitCode.ERROR) from None
            if args.port_file:
                args.port_file.write_text(f"{server.port}\n")
            print(f"{self.name}: serving on {args.host}:{server.port}", flush=True)
            server.serve_forever(grace=args.services.config[CoreConfig.SHUTDOWN_GRACE])
            return ExitCode.OK

        return run(serve)
