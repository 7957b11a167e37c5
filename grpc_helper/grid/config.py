"""Grid limits and timings: one small immutable value object."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: Room left in a gRPC message around the payloads it carries (field tags, ids, error texts).
MESSAGE_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class GridLimits:
    """Limits that bound the grid server's memory, keep clients apart, and define its reliability policy.

    max_jobs: jobs held by the server (queued + running + completed but not yet acknowledged), all sessions.
    max_session_jobs / max_session_bytes: the same, per client session: one careless client never blocks another.
    max_identity_jobs: the same, per authenticated identity (all its sessions; anonymous sessions: per session).
    max_identity_sessions: shared backend (Redis) only: sessions holding jobs per authenticated identity on the
        whole grid (bounds the work of counting an identity's jobs at each submit).
    max_payload_bytes: largest job payload or result accepted; the server's gRPC message limit follows it.
    max_bytes: payload and unacknowledged result bytes held by the server, all sessions.
    max_batch: most jobs in one submit call.
    max_retained, max_retained_bytes: acknowledged results kept for ``get_result`` (oldest dropped first).
    max_retries: re-runs of a job whose handler raised before it completes with the error.
    max_lost: times a job may be running when its worker is lost (crash, disconnect, missed heartbeats) before
        it fails as a job that crashes its workers; jobs that were leased but not started are never counted.
    result_ttl: seconds a completed result waits for its client's acknowledgement before it is dropped.
    session_ttl: seconds a session may stay without an open results stream and without calls; then its jobs
        are cancelled and its results dropped.
    heartbeat_interval: seconds between worker heartbeats; a worker silent for ``heartbeat_timeout`` is dropped.
    lease_ttl: shared backend (Redis) only: seconds after which the jobs held by a grid server that stopped
        renewing its leases (it crashed, or lost Redis) are taken over by the other servers.
    shutdown_delay: default delay of the controller's shutdown, so that its response is delivered first.
    stream_batch_bytes, stream_batch_count: soft caps of one streamed message (job batch or result batch).
    max_spawned: worker processes started by the controller that may run at once.
    """

    max_jobs: int = 100_000
    max_session_jobs: int = 20_000
    max_session_bytes: int = 64 * 1024 * 1024
    max_identity_jobs: int = 50_000
    max_identity_sessions: int = 1_000
    max_payload_bytes: int = 1024 * 1024
    max_bytes: int = 256 * 1024 * 1024
    max_batch: int = 10_000
    max_retained: int = 10_000
    max_retained_bytes: int = 64 * 1024 * 1024
    max_retries: int = 2
    max_lost: int = 3
    result_ttl: float = 600.0
    session_ttl: float = 600.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 6.0
    lease_ttl: float = 10.0
    shutdown_delay: float = 0.5
    stream_batch_bytes: int = 2 * 1024 * 1024
    stream_batch_count: int = 2_000
    max_spawned: int = 16

    def __post_init__(self) -> None:
        zero_ok = ("max_retries", "shutdown_delay", "max_retained", "max_retained_bytes", "max_spawned")
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"GridLimits.{name} must be finite (got {value})")
            if value < 0 or (value == 0 and name not in zero_ok):
                raise ValueError(f"GridLimits.{name} must be > 0 (got {value})")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("GridLimits.heartbeat_timeout must be greater than heartbeat_interval")
        if self.max_payload_bytes > 1024 * 1024 * 1024:
            raise ValueError("GridLimits.max_payload_bytes must be <= 1 GiB")

    @property
    def max_message_bytes(self) -> int:
        """gRPC message limit of the grid server (receive side): one payload or one batch, plus overhead."""
        return max(self.max_payload_bytes, self.stream_batch_bytes, 4 * 1024 * 1024) + MESSAGE_OVERHEAD

    def server_options(self) -> list[tuple[str, Any]]:
        """gRPC server options matching these limits (pass them to the hosting server's ``options``)."""
        return [("grpc.max_receive_message_length", self.max_message_bytes), ("grpc.max_send_message_length", -1)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Channel options of grid clients and workers: they accept what the server sends (the server bounds it).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)
