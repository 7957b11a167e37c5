"""Who is calling: the common name of the verified client certificate; who may see which job."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from grpc_helper import ResultCode, RpcException


class Authorizer:
    """Identity from mTLS and the owner-or-admin rule."""

    def __init__(self, admins: Iterable[str] = ()) -> None:
        self.admins = frozenset(admins)

    def identity(self, context: grpc.ServicerContext) -> str:
        """The caller's certificate common name; UNAUTHENTICATED without a verified client certificate.

        gRPC only fills ``x509_common_name`` after verifying the certificate chain against the server's CA,
        so on a plaintext server (or TLS without client auth) every call is refused.
        """
        # grpc-stubs types the values as bytes; grpcio gives a list of bytes per property.
        auth: Mapping[str, Any] = context.auth_context()
        names: list[bytes] = list(auth.get("x509_common_name") or [])
        if list(auth.get("transport_security_type") or []) != [b"ssl"] or len(names) != 1 or not names[0]:
            raise RpcException(
                "the jobs service requires a client certificate (mutual TLS) signed by the server's CA",
                ResultCode.ERROR_UNAUTHENTICATED,
            )
        try:
            return names[0].decode()
        except UnicodeDecodeError:
            raise RpcException("client certificate common name is not UTF-8", ResultCode.ERROR_UNAUTHENTICATED) from None

    def is_admin(self, identity: str) -> bool:
        return identity in self.admins

    def can_access(self, identity: str, owner: str) -> bool:
        return identity == owner or identity in self.admins
