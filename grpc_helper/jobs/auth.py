"""Who is calling and which jobs they may see: the owner-or-admin rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grpc_helper import ResultCode, RpcException


@dataclass(frozen=True)
class Caller:
    """The verified client of a call: its certificate's common name, and whether it is an admin."""

    name: str
    admin: bool

    def may_see(self, owner: str) -> bool:
        """A client sees its own jobs; an admin sees every job."""
        return self.admin or self.name == owner


def caller(context: Any, admins: frozenset[str]) -> Caller:
    """The caller of the call being served; UNAUTHENTICATED without a verified client certificate.

    TODO(core identity API): replace with ``grpc_helper.current_identity()`` once it is on main.
    """
    auth: Mapping[str, Any] = context.auth_context()
    names: list[bytes] = list(auth.get("x509_common_name") or [])
    if list(auth.get("transport_security_type") or []) != [b"ssl"] or len(names) != 1 or not names[0]:
        raise RpcException(
            "the jobs service requires a client certificate (mutual TLS) signed by the server's CA",
            ResultCode.ERROR_UNAUTHENTICATED,
        )
    try:
        name = names[0].decode()
    except UnicodeDecodeError:
        raise RpcException("client certificate common name is not UTF-8", ResultCode.ERROR_UNAUTHENTICATED) from None
    return Caller(name, name in admins)
