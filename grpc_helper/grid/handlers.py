"""Built-in job handlers (``package.module:function`` references usable by workers)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

Handler = Callable[[bytes], bytes]


def echo(data: bytes) -> bytes:
    """Return the payload unchanged (default handler of spawned workers, and the benchmark's)."""
    return data


def sleep_echo(data: bytes) -> bytes:
    """Sleep 10 ms, then echo: a stand-in for a job that waits on I/O."""
    time.sleep(0.01)
    return data


def fail(data: bytes) -> bytes:
    """Always raise (to see retries and errors)."""
    raise RuntimeError(f"fail handler called with {len(data)} bytes")


def load_handler(reference: str) -> Handler:
    """Import ``"package.module:function"``."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must be 'package.module:function', got {reference!r}")
    try:
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load handler {reference!r}: {exc}") from None
    if not callable(target):
        raise ValueError(f"handler {reference!r} is not callable")
    return target  # type: ignore[return-value]
