"""Who is calling: the identity carried by a verified client certificate (mutual TLS).

gRPC verifies the client's certificate chain against the server's CA and exposes the peer's certificate in
the call's auth context. The identity is the certificate subject's common name (CN). A subject with several
common names is ambiguous (gRPC's own ``x509_common_name`` property shows only the first one, so a
certificate with CNs ``alice`` and ``root`` would pass for ``root``): it is refused.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException, bounded


@dataclass(frozen=True)
class Identity:
    """The verified caller of a call.

    :param name: the common name (CN) of the caller's client certificate.
    :param admin: True when ``name`` is one of the server's ``admins``.

    Read it in any manager method with ``current_identity()``::

        def cancel(self, request):
            who = current_identity()
            if who is None or not (who.admin or who.name == self.owner_of(request.id)):
                raise RpcException("no such job", ResultCode.ERROR_ITEM_UNKNOWN)
    """

    name: str
    admin: bool = False

    def __str__(self) -> str:
        return f"{self.name} (admin)" if self.admin else self.name


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("grpc_helper_identity", default=None)


def current_identity() -> Identity | None:
    """The identity of the caller of the call being served, or None (plaintext, or no client certificate).

    Works in every manager method, sync or ``async``, unary or streaming, on ``RpcServer`` and
    ``AsyncRpcServer``; outside a call it is None.
    """
    return _current.get()


def set_current(identity: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def reset_current(token: contextvars.Token[Identity | None]) -> None:
    try:  # noqa: SIM105 - hot path: contextlib.suppress costs more
        _current.reset(token)
    except ValueError:  # a stream closed from another thread or context than the one that served it
        pass


_CACHE_SIZE = 4096


class IdentityResolver:
    """Turns a call's auth context into an ``Identity`` (cached per certificate), or refuses it."""

    def __init__(self, admins: Iterable[str] = ()) -> None:
        self.admins = frozenset(admins)
        self._cache: OrderedDict[bytes, Identity | RpcException] = OrderedDict()

    def resolve(self, auth: Mapping[str, Any]) -> Identity | None:
        """The caller's identity; None without a verified client certificate; raises ``RpcException``
        (UNAUTHENTICATED) for an ambiguous or unreadable certificate subject."""
        pems = auth.get("x509_pem_cert")
        if not pems:
            return None
        pem: bytes = pems[0]
        found = self._cache.get(pem)
        if found is None:
            found = self._parse(pem)
            self._cache[pem] = found
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        if isinstance(found, RpcException):
            raise found
        return found

    def _parse(self, pem: bytes) -> Identity | RpcException:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        except ValueError as exc:
            return RpcException(f"unreadable client certificate: {bounded(str(exc))}", ResultCode.ERROR_UNAUTHENTICATED)
        if len(names) != 1:
            what = "no common name" if not names else f"{len(names)} common names"
            return RpcException(
                f"client certificate subject has {what}; exactly one is required", ResultCode.ERROR_UNAUTHENTICATED
            )
        name = names[0] if isinstance(names[0], str) else bytes(names[0]).decode("utf-8", "replace")
        if not name:
            return RpcException("client certificate common name is empty", ResultCode.ERROR_UNAUTHENTICATED)
        return Identity(name, name in self.admins)
