"""Job handlers for the grid tests (imported by worker processes: PYTHONPATH includes this folder)."""

from __future__ import annotations

import time


def echo(data: bytes) -> bytes:
    return data


def upper(data: bytes) -> bytes:
    return data.upper()


def fail(data: bytes) -> bytes:
    raise ValueError(f"cannot handle {data!r}")


def hang(data: bytes) -> bytes:
    """Never returns in a test's lifetime (the worker is killed or aborted)."""
    time.sleep(600)
    return data


def slow(data: bytes) -> bytes:
    """0.3 s per job: long enough to interrupt a worker while it runs one."""
    time.sleep(0.3)
    return data


def pid(data: bytes) -> bytes:
    import os

    return f"{os.getpid()}".encode()


def signalled_slow(data: bytes) -> bytes:
    """Tell the test (a byte in the FIFO named by $GRID_TEST_FIFO) that a job started, then work 0.3 s."""
    import os

    with open(os.environ["GRID_TEST_FIFO"], "wb") as fifo:
        fifo.write(b"s")
    time.sleep(0.3)
    return data


def signalled_hang(data: bytes) -> bytes:
    """Like ``signalled_slow`` but never returns in a test's lifetime."""
    import os

    with open(os.environ["GRID_TEST_FIFO"], "wb") as fifo:
        fifo.write(b"h")
    time.sleep(600)
    return data


def tick(data: bytes) -> bytes:
    """1 ms of work, then echo (chaos test)."""
    time.sleep(0.001)
    return data


def crash_on_poison(data: bytes) -> bytes:
    """Kill the worker process on the payload b"poison" (a job that crashes its worker), echo the others."""
    import os

    if data == b"poison":
        os._exit(3)
    return data


def big(data: bytes) -> bytes:
    """A result as large as the payload times 2 (payload limit tests)."""
    return data + data
