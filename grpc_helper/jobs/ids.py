"""Job ids: UUIDv7 (RFC 9562): 48-bit Unix milliseconds then 74 random bits, so ids sort by creation time
and cannot be guessed."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7; strictly monotonic milliseconds within this process keep ids in creation order."""
    global _last_ms
    with _lock:
        ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
        _last_ms = ms
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def parse(job_id: str) -> str | None:
    """The canonical form of a job id, or None when it is not a UUID."""
    if len(job_id) > 64:
        return None
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return None
