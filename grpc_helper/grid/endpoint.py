"""``host:port`` endpoints (the one parser of every grpc-helper CLI and client: IPv6 literals in brackets)."""

from __future__ import annotations

from collections.abc import Iterable

from grpc_helper._cli.endpoint import parse_endpoint, parse_endpoints


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port); ``ValueError`` naming the endpoint otherwise."""
    parsed = parse_endpoint(endpoint, require_port=True)
    return parsed.host, parsed.port


def split_endpoints(endpoints: str | Iterable[str]) -> list[tuple[str, int]]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` -> ``[(host, port), ...]`` in order (duplicates once); ``ValueError``
    naming a bad endpoint, or for an empty list."""
    return [(e.host, e.port) for e in parse_endpoints(endpoints, require_port=True)]
