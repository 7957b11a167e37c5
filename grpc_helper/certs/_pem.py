"""Reading PEM files for credentials, with errors that name the file and say what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class CertificateError(Exception):
    """TLS material that is missing, unreadable, not what it should be, or a certificate that does not match
    its key. ``path`` is the file at fault."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise CertificateError(path, f"{what} expected, this is a directory") from None
    except OSError as exc:
        raise CertificateError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if not data.strip():
        raise CertificateError(path, f"{what} is empty")
    return data


def read_certificate(path: Path, what: str = "certificate") -> tuple[bytes, x509.Certificate]:
    """The PEM bytes and the first certificate of ``path``."""
    data = read(path, what)
    try:
        return data, x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(path, f"not a PEM {what}") from None


def read_key(path: Path) -> tuple[bytes, PrivateKeyTypes]:
    data = read(path, "private key")
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertificateError(path, "not an unencrypted PEM private key") from None


def read_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """``(certificate PEM, key PEM)`` after checking the key is the certificate's."""
    cert_pem, certificate = read_certificate(cert)
    key_pem, private_key = read_key(key)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(serialization.Encoding.DER, public) != private_key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise CertificateError(cert, f"certificate does not match the private key {key}")
    return cert_pem, key_pem
