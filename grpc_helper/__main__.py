"""``grpc-helper serve`` (``python -m grpc_helper serve``): a server hosting every bundled service until Ctrl+C.

``python -m grpc_helper`` is the ``grpc-helper`` console script (sub-commands info, serve, jobs, grid, certs).

    grpc-helper serve [--host 127.0.0.1] [--port 50051] [--port-file F] [--tls-dir DIR | --insecure]

Hosts the info, health and reflection services, the job runner (``grpc_helper.jobs``) and the compute
grid (``grpc_helper.grid``; its controller's ``shutdown`` stops the whole server). With TLS (the default)
the server requires client certificates signed by the CA of ``--tls-dir`` (created, with the current user
as admin, on first use; see ``python -m grpc_helper.certs``); the job runner only answers such clients.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from grpc_helper import AsyncRpcServer, certs, grid, jobs
from grpc_helper._cli.commands import main as commands_main
from grpc_helper._cli.endpoint import DEFAULT_PORT
from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper._cli.parser import new_parser
from grpc_helper.jobs.serve import bind_host, ca_key_beside

AUTO_CLIENT = "auto-client"


def serve(args: argparse.Namespace) -> int:
    admins = set(args.admin)
    credentials = client_credentials = None
    worker_args: list[str] = []  # how workers spawned by the grid controller reach this server
    if not args.insecure:
        tls_dir = Path(args.tls_dir)
        if not (tls_dir / "ca.pem").exists():
            certs.init(tls_dir, admins=[certs.default_client()])
            print(f"created TLS material in {tls_dir} (admin: {certs.default_client()})", flush=True)
        # The server's own auto-client needs a key pair too (created once, beside the others).
        certs.init(tls_dir, clients=[AUTO_CLIENT])
        key = ca_key_beside(tls_dir)
        if key is not None:
            why = f"the CA private key {key} is readable beside the server's credentials: whoever reads it can mint any identity"
            if not args.allow_ca_key:
                raise CliError(f"{why}. Move it out of {tls_dir} (`grpc-helper certs init` keeps it in DIR-ca), "
                               "or pass --allow-ca-key", ExitCode.CERTIFICATE)
            print(f"WARNING: {why} (--allow-ca-key)", file=sys.stderr, flush=True)
        credentials = certs.server_credentials(tls_dir)
        client_credentials = certs.channel_credentials(tls_dir, AUTO_CLIENT)
        admins |= certs.admins_of(tls_dir)
        own = certs.TlsFiles(tls_dir, AUTO_CLIENT)
        worker_args = ["--ca", str(own.ca), "--cert", str(own.cert), "--key", str(own.key)]
    else:
        worker_args = ["--insecure"]
    hosting: list[AsyncRpcServer] = []
    limits = grid.GridLimits()
    descriptors = [
        jobs.descriptor(Path(args.state_dir) / "jobs"),
        *grid.descriptors(limits=limits, worker_args=worker_args, on_shutdown=lambda: hosting[0].shutdown(args.grace)),
    ]
    # asyncio: a waiting log follower, grid worker or event listener costs memory, not a thread.
    server = AsyncRpcServer(  # a busy port raises RpcException(ERROR_PORT_BUSY): exit code PORT_BUSY
        args.port,
        descriptors,
        host=bind_host(args.host),
        credentials=credentials,
        client_credentials=client_credentials,
        options=limits.server_options(),
        admins=admins,
    )
    hosting.append(server)
    asyncio.run(_serve(server, args))
    print("stopped", flush=True)
    return 0


async def _serve(server: AsyncRpcServer, args: argparse.Namespace) -> None:
    await server.start()
    if args.port_file:
        Path(args.port_file).write_text(f"{server.port}\n")
    names = ", ".join(d.name for d in server.descriptors)
    print(f"serving {names} on {args.host}:{server.port} ({'plaintext' if args.insecure else 'mTLS'}); Ctrl+C stops",
          flush=True)
    await server.serve_forever(grace=args.grace)


def serve_main(argv: Sequence[str] | None = None, prog: str = "grpc-helper serve") -> int:
    s = new_parser(prog, "Serve every bundled service until Ctrl+C.")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port, 0 for any free one (default: %(default)s)")
    s.add_argument("--port-file", help="write the bound port to this file once serving")
    s.add_argument("--tls-dir", default=str(certs.default_dir()), help="CA and certificates (default: %(default)s)")
    s.add_argument("--insecure", action="store_true", help="plaintext (the job runner then refuses every call)")
    s.add_argument("--state-dir", default=str(jobs.default_state_dir().parent), help="service state (default: %(default)s)")
    s.add_argument("--admin", action="append", default=[],
                   help="admin identity: every job, grid control, config changes, shutdown (repeatable; "
                        "also read from TLS_DIR/admins)")
    s.add_argument("--allow-ca-key", action="store_true",
                   help="serve even though the CA private key sits beside the server's credentials (unsafe)")
    s.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get at shutdown")
    s.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = s.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return run(lambda: serve(args))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpc_helper``: the ``grpc-helper`` command."""
    return commands_main(argv, prog="python -m grpc_helper")


if __name__ == "__main__":
    sys.exit(main())
