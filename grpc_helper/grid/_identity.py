"""Who calls the grid: the core's identity of the caller (its certificate's name; "" when anonymous)."""

from __future__ import annotations

from grpc_helper import current_identity


def caller() -> str:
    """The caller's identity name ("" for anonymous callers): sessions and workers belong to it."""
    identity = current_identity()
    return identity.name if identity is not None else ""
