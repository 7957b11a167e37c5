"""The retry flow of one call, written once for ``RpcClient`` and ``AsyncRpcClient``: every decision, no I/O.

A driver (sync or asyncio) asks ``attempt_timeout()`` before each attempt, makes the attempt with that gRPC
timeout, and after a failure asks ``after_failure()`` how long to sleep; both raise the ``RpcException`` that
ends the call. The per-call ``timeout`` is the call's deadline, retries included; the client's ``timeout`` is
how long a call keeps retrying while the server is unreachable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import grpc

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException, carries_result, from_rpc_error

#: How grpc words a TLS handshake that failed on the client's side (e.g. a server certificate our CA did not sign).
_HANDSHAKE_FAILED = "handshake failed"
#: How grpc words a connection the server closed; over TLS, during the handshake: our certificate was refused.
_SOCKET_CLOSED = "socket closed"
#: How grpc words an address where nothing listens ("localhost" is tried as ::1 and 127.0.0.1 in turn: a server on
#: one of them is reported refused on the other, between its closed connections).
_REFUSED = "connection refused"
#: Closed TLS connections in a row (refused addresses aside) taken as a refused client certificate, not an outage.
MAX_CLOSED_HANDSHAKES = 3


class RetryPolicy:
    """How long and how often a call is retried while the server is unreachable (capped, jittered back-off).

    Certificate problems are not outages: a failed TLS handshake ends the call at once, and a TLS server that
    keeps closing the connection (it refuses the client's certificate, or got none) after a few attempts, both
    with a message saying so (``ERROR_RPC``)."""

    def __init__(self, timeout: float, first_delay: float = 0.05, max_delay: float = 1.0, secure: bool = False) -> None:
        self.timeout = timeout
        self.first_delay = first_delay
        self.max_delay = max_delay
        #: True for TLS channels.
        self.secure = secure

    @staticmethod
    def retryable(error: grpc.RpcError) -> bool:
        """Transport failures are retried; answers from a grpc-helper server never are."""
        return error.code() == grpc.StatusCode.UNAVAILABLE and not carries_result(error)  # type: ignore[attr-defined]


def closed_error(target: str) -> RpcException:
    return RpcException(f"client to {target} is closed", ResultCode.ERROR_CANCELLED)


class CallPlan:
    """One call's deadline and retry budget, and the decision taken before and after each attempt."""

    def __init__(
        self, policy: RetryPolicy, target: str, timeout: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._target = target
        self._clock = clock
        start = clock()
        self.timeout = timeout
        #: ``time.monotonic()`` at which the call fails (None: no deadline).
        self.deadline = None if timeout is None else start + max(0.0, timeout)
        self._retry_end = start + policy.timeout if self.deadline is None else min(start + policy.timeout, self.deadline)
        self._delay = policy.first_delay
        self._last: grpc.RpcError | None = None
        self._closed_handshakes = 0

    def attempt_timeout(self, closed: bool) -> float | None:
        """Before an attempt: its gRPC timeout (what is left of the deadline). Raises ``RpcException`` when the
        client is closed, or when retrying is over (``ERROR_RPC``: the server stayed unreachable)."""
        if closed:
            raise closed_error(self._target)
        now = self._clock()
        if self._last is not None and now >= self._retry_end:
            raise self._unreachable(self._last)
        return None if self.deadline is None else max(0.0, self.deadline - now)

    def after_failure(self, error: grpc.RpcError, replayable: bool, closed: bool) -> float:
        """After a failed attempt: seconds to sleep before the next one, or raise the ``RpcException``.

        ``replayable`` is False once part of a stream went through (a retry would duplicate it)."""
        if closed:
            raise closed_error(self._target)
        if not (replayable and self._policy.retryable(error)):
            raise from_rpc_error(error)
        self._check_certificates(error)
        self._last = error
        left = self._retry_end - self._clock()
        if left <= 0:
            raise self._unreachable(error)
        delay = min(left, self._delay * random.uniform(0.5, 1.0))
        self._delay = min(self._policy.max_delay, self._delay * 2)
        return delay

    def _check_certificates(self, error: grpc.RpcError) -> None:
        """Raise at once when the failure is a certificate problem rather than an unreachable server."""
        if not self._policy.secure:
            return
        details = str(error.details() or "")  # type: ignore[attr-defined]
        lowered = details.lower()
        if _HANDSHAKE_FAILED in lowered:
            raise RpcException(f"TLS with {self._target} failed (a certificate problem: not retried): {details}",
                               ResultCode.ERROR_RPC)
        if _SOCKET_CLOSED in lowered:
            self._closed_handshakes += 1
        elif _REFUSED not in lowered:
            self._closed_handshakes = 0
        if self._closed_handshakes >= MAX_CLOSED_HANDSHAKES:
            raise RpcException(
                f"TLS with {self._target}: handshake failed: the server closed the connection "
                f"{self._closed_handshakes} times in a row (it refuses this client's certificate, or got none)",
                ResultCode.ERROR_RPC,
            )

    def _unreachable(self, error: grpc.RpcError) -> RpcException:
        details = error.details()  # type: ignore[attr-defined]
        if self.timeout is not None and self.timeout < self._policy.timeout:
            why = f"server {self._target} unreachable within the call's {self.timeout:g}s deadline: {details}"
        else:
            why = f"server {self._target} unreachable for {self._policy.timeout:g}s: {details}"
        return RpcException(why, ResultCode.ERROR_RPC)
