"""mTLS material for grpc-helper services: a private CA, a server certificate and client key pairs.

``init(dir, clients, admins)`` writes, with the ``cryptography`` library (no openssl binary)::

    DIR/ca.pem                         the CA certificate: what servers and clients verify peers against
    DIR/server.pem  server.key         server certificate, SAN localhost, 127.0.0.1, ::1
    DIR/<name>.pem  <name>.key         one client key pair per name; the certificate CN is the identity
    DIR/admins                         admin identities, one per line (read by the servers)
    CA_DIR/ca.pem  ca.key              the certificate authority, outside DIR (default: ``DIR-ca`` beside it)

The CA private key never sits in ``DIR``, the directory servers read: a server compromised through its TLS
directory cannot mint identities. Only ``init`` reads ``CA_DIR``, and only when it must sign something new.

``server_credentials(dir)`` and ``channel_credentials(dir, client_name)`` turn them into gRPC credentials
(mutual TLS: the server requires a client certificate signed by the CA). A missing, unreadable or invalid
file, or a certificate that does not match its key, raises ``CertificateError`` naming the file.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grpc_helper.certs._pem import CertificateError, read_certificate, read_pair

__all__ = [
    "DEFAULT_DIR",
    "CertificateError",
    "TlsFiles",
    "admins_of",
    "channel_credentials",
    "default_ca_dir",
    "default_client",
    "default_dir",
    "init",
    "server_credentials",
]

CA = "ca"
SERVER = "server"
ADMINS_FILE = "admins"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_RESERVED = {CA, SERVER, ADMINS_FILE}


def default_dir() -> Path:
    """$GRPC_HELPER_TLS_DIR, else ~/.config/grpc-helper/tls."""
    env = os.environ.get("GRPC_HELPER_TLS_DIR")
    return Path(env) if env else Path.home() / ".config" / "grpc-helper" / "tls"


DEFAULT_DIR = default_dir()


def default_ca_dir(directory: Path | str) -> Path:
    """Where ``init`` keeps the CA of TLS directory ``directory`` by default: ``<directory>-ca`` beside it."""
    directory = Path(directory).expanduser()
    return directory.with_name(directory.name + "-ca")


def default_client() -> str:
    """$GRPC_HELPER_CLIENT, else the login name."""
    return os.environ.get("GRPC_HELPER_CLIENT") or getpass.getuser()


class TlsFiles:
    """Paths of the files of one identity (``ca``, ``server`` or a client name) in a TLS directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}.key"
        self.ca = directory / f"{CA}.pem"


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in _RESERVED:
        raise ValueError(f"invalid client name {name!r}: 1-64 of [A-Za-z0-9_.@-], not {sorted(_RESERVED)}")
    return name


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode so that a private key is never readable by others, even briefly.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _save_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def _save_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = TlsFiles(ca_dir, CA)
    _, cert = read_certificate(files.cert, "CA certificate")
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(files.key, f"cannot load the CA private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(files.key, "expected an EC private key")
    return cert, key


def _make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grpc-helper CA")])
    cert = (
        _builder("grpc-helper CA", name, key, 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory, CA)
    _save_key(files.key, key)
    _save_cert(files.cert, cert)
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
) -> None:
    ca_cert, ca_key = ca
    key = _new_key()
    builder = (
        _builder(name, ca_cert.subject, key, 825)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    files = TlsFiles(directory, name)
    _save_key(files.key, key)
    _save_cert(files.cert, cert)


def _ca(directory: Path, ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of ``directory`` (kept in ``ca_dir``), created with ``DIR/ca.pem`` when there is none yet."""
    legacy = TlsFiles(directory, CA)
    ca = TlsFiles(ca_dir, CA)
    if legacy.key.exists() and not ca.key.exists():
        # Older layout: the CA key sat beside the server's credentials; move it out of the TLS directory.
        ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(legacy.cert, ca.cert)
        os.replace(legacy.key, ca.key)
    if ca.key.exists():
        return _load_ca(ca_dir)
    if legacy.cert.exists():
        raise CertificateError(ca.key, f"CA private key not found (the CA of {directory} is kept elsewhere: pass its CA directory)")
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _make_ca(ca_dir)


def init(
    directory: Path | str, clients: Iterable[str] = (), admins: Iterable[str] = (), *, ca_dir: Path | str | None = None
) -> Path:
    """Create (or complete) a TLS directory; existing CA and key pairs are kept, missing ones are created.

    ``admins`` get a client key pair too and are appended to ``DIR/admins``. The CA (with its private key)
    lives in ``ca_dir`` (default :func:`default_ca_dir`), read only when a new certificate must be signed;
    ``DIR`` gets its certificate as ``ca.pem``. Returns the directory.
    """
    directory = Path(directory).expanduser()
    ca_path = Path(ca_dir).expanduser() if ca_dir is not None else default_ca_dir(directory)
    clients = [_check_name(c) for c in clients]
    admin_names = [_check_name(a) for a in admins]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    missing = [name for name in dict.fromkeys([SERVER, *clients, *admin_names]) if not TlsFiles(directory, name).cert.exists()]
    if missing or not TlsFiles(directory, CA).cert.exists() or TlsFiles(directory, CA).key.exists():
        ca = _ca(directory, ca_path)
        if not TlsFiles(directory, CA).cert.exists():
            _save_cert(TlsFiles(directory, CA).cert, ca[0])
        for name in missing:
            _make_leaf(directory, name, ca, server=name == SERVER)
    known = admins_of(directory)
    new = [a for a in dict.fromkeys(admin_names) if a not in known]
    if new:
        _write(directory / ADMINS_FILE, "".join(f"{a}\n" for a in [*sorted(known), *new]).encode(), 0o644)
    return directory


def admins_of(directory: Path | str) -> set[str]:
    """Admin identities listed in ``DIR/admins`` (empty when the file does not exist)."""
    path = Path(directory).expanduser() / ADMINS_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def server_credentials(
    directory: Path | str | None = None, *, cert: Path | None = None, key: Path | None = None, ca: Path | None = None
) -> grpc.ServerCredentials:
    """mTLS server credentials: clients must present a certificate signed by the CA.

    Raises ``CertificateError`` naming the file when one is missing, unreadable or invalid, or when the
    certificate does not match the key."""
    files = TlsFiles(Path(directory or default_dir()).expanduser(), SERVER)
    cert_pem, key_pem = read_pair(cert or files.cert, key or files.key)
    ca_pem, _ = read_certificate(ca or files.ca, "CA certificate")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def channel_credentials(
    directory: Path | str | None = None,
    client_name: str | None = None,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    ca: Path | None = None,
) -> grpc.ChannelCredentials:
    """mTLS client credentials for ``client_name`` (default: :func:`default_client`), or explicit files.

    Raises ``CertificateError`` like :func:`server_credentials`."""
    base = Path(directory or default_dir()).expanduser()
    files = TlsFiles(base, client_name or default_client())
    cert_pem, key_pem = read_pair(cert or files.cert, key or files.key)
    ca_pem, _ = read_certificate(ca or files.ca, "CA certificate")
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
