"""``HOST:PORT`` parsing for every CLI: host names, IPv4, and IPv6 literals in brackets (``[::1]:50051``), and
lists of endpoints (``A:1,B:2``, or the option repeated)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


class Endpoint(NamedTuple):
    host: str  # without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, endpoint: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"invalid endpoint {endpoint!r}: port must be 0-65535")
    return int(text)


def _host(text: str, endpoint: str, ipv6: bool) -> str:
    if ipv6:
        try:
            ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"invalid endpoint {endpoint!r}: {text!r} is not an IPv6 address") from None
        return text
    if not _HOST_RE.match(text):
        raise ValueError(f"invalid endpoint {endpoint!r}: bad host {text!r}")
    return text


def parse_endpoint(
    text: str, default_host: str = DEFAULT_HOST, default_port: int = DEFAULT_PORT, *, require_port: bool = False
) -> Endpoint:
    """``host:port``, ``[v6]:port``, ``host``, ``[v6]``, a bare IPv6 literal (``::1``) or ``:port``; with
    ``require_port``, only the forms with a port.

    Raises ``ValueError`` with a message naming the endpoint.
    """
    text = text.strip()
    endpoint = _parse(text, default_host, default_port)
    has_port = "]:" in text if text.startswith("[") else text.count(":") == 1
    if require_port and not has_port:
        raise ValueError(f"invalid endpoint {text!r}: expected HOST:PORT ([IPV6]:PORT)")
    return endpoint


def _parse(text: str, default_host: str, default_port: int) -> Endpoint:
    if not text:
        raise ValueError("invalid endpoint '': expected HOST:PORT")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid endpoint {text!r}: expected [IPV6]:PORT")
        return Endpoint(_host(host, text, ipv6=True), _port(rest[1:], text) if rest else default_port)
    if text.count(":") > 1:  # a bare IPv6 literal: no port
        return Endpoint(_host(text, text, ipv6=True), default_port)
    host, sep, port = text.partition(":")
    return Endpoint(_host(host, text, ipv6=False) if host else default_host, _port(port, text) if sep else default_port)


def parse_endpoints(
    texts: str | Iterable[str], default_host: str = DEFAULT_HOST, default_port: int = DEFAULT_PORT, *,
    require_port: bool = False,
) -> list[Endpoint]:
    """Several endpoints, in order: a string with comma-separated endpoints, or strings that may each hold
    several (``["a:1,b:2", "c:3"]``). Duplicates are kept once (first place); an empty list is an error.

    Raises ``ValueError`` with a message naming the bad endpoint.
    """
    found: list[Endpoint] = []
    for text in [texts] if isinstance(texts, str) else texts:
        if not isinstance(text, str):
            raise TypeError(f"endpoints are strings, got {type(text).__name__}")
        for part in text.split(","):
            endpoint = parse_endpoint(part, default_host, default_port, require_port=require_port)
            if endpoint not in found:
                found.append(endpoint)
    if not found:
        raise ValueError("no endpoint given: expected HOST:PORT[,HOST:PORT...]")
    return found


def endpoint_type(default_host: str = DEFAULT_HOST, default_port: int = DEFAULT_PORT) -> Callable[[str], Endpoint]:
    """An argparse ``type=`` parsing endpoints (a bad one is a usage error, exit code 2)."""

    def parse(text: str) -> Endpoint:
        try:
            return parse_endpoint(text, default_host, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse
