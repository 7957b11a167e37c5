"""The TLS options of every CLI, and the credentials they give.

Client side (``add_client_tls_options``)::

    --tls-dir DIR    files of ``grpc-helper certs init``: DIR/ca.pem, DIR/<name>.pem, DIR/<name>.key
    --name NAME      identity in DIR (default: $GRPC_HELPER_CLIENT, else the login name)
    --cert F --key F --ca F    explicit files (override those of the directory)
    --insecure       plaintext

Commands whose default is plaintext (``info``, ``grid``) use TLS once any TLS option is given; ``--ca``
alone verifies the server without presenting a client certificate. Commands whose default is mTLS (``jobs``)
read the default TLS directory when no option is given. Server side (``add_server_tls_options``): DIR's
``server.pem``/``server.key``/``ca.pem`` (or the explicit files), client certificates required.

Any file that is missing, unreadable, invalid, or a certificate that does not match its key is reported as
``CertificateError`` naming the file (exit code ``CERTIFICATE``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from grpc_helper import certs
from grpc_helper._cli.exits import CliError, ExitCode
from grpc_helper.certs._pem import read_certificate


def _add_common(parser: argparse.ArgumentParser, tls_default: bool, title: str) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(title)
    default_dir = certs.default_dir()
    group.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"TLS directory made by `grpc-helper certs init` ({'default' if tls_default else 'e.g.'} {default_dir})",
    )
    group.add_argument("--cert", type=Path, metavar="FILE", help="certificate (PEM); overrides the TLS directory's")
    group.add_argument("--key", type=Path, metavar="FILE", help="private key (PEM); overrides the TLS directory's")
    group.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate (PEM) verifying the peer")
    group.add_argument("--insecure", action="store_true", help="plaintext, no TLS")
    parser.set_defaults(_tls_default=tls_default)
    return group


def add_client_tls_options(parser: argparse.ArgumentParser, *, tls_default: bool = False) -> None:
    """``--tls-dir``, ``--name``, ``--cert``, ``--key``, ``--ca``, ``--insecure`` (see the module doc)."""
    title = "TLS (default: mTLS with the default TLS directory)" if tls_default else "TLS (default: plaintext)"
    group = _add_common(parser, tls_default, title)
    group.add_argument("--name", default=None, help="client identity in the TLS directory (default: login name)")


def add_server_tls_options(parser: argparse.ArgumentParser, *, tls_default: bool = True) -> None:
    """``--tls-dir``, ``--cert``, ``--key``, ``--ca``, ``--insecure`` for a server."""
    title = "TLS (default: mTLS with the default TLS directory)" if tls_default else "TLS (default: plaintext)"
    _add_common(parser, tls_default, title)


def _wants_tls(args: argparse.Namespace) -> bool:
    given = any(getattr(args, name, None) for name in ("tls_dir", "cert", "key", "ca"))
    if args.insecure:
        if given:
            raise CliError("--insecure excludes --tls-dir, --cert, --key and --ca", ExitCode.USAGE)
        return False
    return given or bool(args._tls_default)


def tls_dir(args: argparse.Namespace) -> Path:
    """The TLS directory in use (``--tls-dir`` or the default)."""
    return Path(args.tls_dir or certs.default_dir()).expanduser()


def client_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """Channel credentials from the options; None for plaintext."""
    if not _wants_tls(args):
        return None
    if bool(args.cert) != bool(args.key):
        raise CliError("--cert and --key go together", ExitCode.USAGE)
    if args.ca and not (args.cert or args.tls_dir or args._tls_default):
        return grpc.ssl_channel_credentials(read_certificate(args.ca, "CA certificate")[0])  # server-verified TLS only
    return certs.channel_credentials(tls_dir(args), getattr(args, "name", None), cert=args.cert, key=args.key, ca=args.ca)


def server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    """Server credentials (client certificates required) from the options; None for plaintext."""
    if not _wants_tls(args):
        return None
    if bool(args.cert) != bool(args.key):
        raise CliError("--cert and --key go together", ExitCode.USAGE)
    return certs.server_credentials(tls_dir(args), cert=args.cert, key=args.key, ca=args.ca)

