"""``host:port`` endpoints (the one parser of every grpc-helper CLI and client: IPv6 literals in brackets)."""

from __future__ import annotations

from grpc_helper._cli.endpoint import parse_endpoint


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port); ``ValueError`` naming the endpoint otherwise."""
    parsed = parse_endpoint(endpoint, require_port=True)
    return parsed.host, parsed.port
