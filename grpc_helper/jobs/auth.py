"""Who is calling and which jobs they may see: the owner-or-admin rule, on the core's identity model.

The service's descriptor requires ``Access.AUTHENTICATED`` (the server refuses calls without a verified client
certificate before the manager runs); inside a call :func:`grpc_helper.current_identity` names the caller.
A client sees, stops and reads only its own jobs; admins (the server's ``admins``, plus any given to the
service) see every job.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc_helper import ResultCode, RpcException, current_identity


@dataclass(frozen=True)
class Caller:
    """The verified client of a call: its certificate's common name, and whether it is an admin here."""

    name: str
    admin: bool

    def may_see(self, owner: str) -> bool:
        """A client sees its own jobs; an admin sees every job."""
        return self.admin or self.name == owner


def caller(admins: frozenset[str] = frozenset()) -> Caller:
    """The caller of the call being served; UNAUTHENTICATED without a verified client certificate (the
    descriptor's access rule refuses those already: this is the manager's own guard)."""
    who = current_identity()
    if who is None:
        raise RpcException(
            "the jobs service requires a client certificate (mutual TLS) signed by the server's CA",
            ResultCode.ERROR_UNAUTHENTICATED,
        )
    return Caller(who.name, who.admin or who.name in admins)
