"""The client session core shared by ``GridClient`` and ``AsyncGridClient`` (no I/O).

A session tracks the futures of the jobs it submitted, turns streamed results into settled futures once each
(results may arrive twice on the wire, or before their submit's response), lists what to acknowledge and what
to ask the server about when a results stream is reopened, and paces those reopenings. ``Endpoints`` is the
list of grid servers a client, worker or controller may use and the one in use; ``failover`` decides what
a failed call does next when there are several.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum

from grpc_helper import ResultCode, RpcException
from grpc_helper._client.core import target
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.endpoint import split_endpoints

API_VERSION = int(pb.GRID_API_CURRENT)
_SUBMIT_BYTES = 2 * 1024 * 1024  # keep each submit message well under gRPC's default 4 MiB

#: Failures of a results stream after which the client reopens it (the others are answers: reported at once).
RECONNECTABLE = frozenset(
    {ResultCode.ERROR_RPC, ResultCode.ERROR_STREAM_SHUTDOWN, ResultCode.ERROR_CANCELLED, ResultCode.ERROR_DEADLINE}
)

Future = concurrent.futures.Future[bytes] | asyncio.Future[bytes]

#: How gRPC words a failure to reach a server at all: the call never left the client.
_NOT_CONNECTED = ("failed to connect", "dns resolution failed")


class Endpoints:
    """The grid servers to use, in order, and the one in use (thread-safe, no I/O).

    Every call goes to the current endpoint. ``failed(generation)`` moves to the next one (round robin) when the
    caller's view is still current, so that several calls failing together move once; listeners (the results
    stream of a client) hear about each move.
    """

    def __init__(self, endpoints: str | Sequence[str]) -> None:
        self.endpoints = split_endpoints(endpoints)
        self.targets = [target(host, port) for host, port in self.endpoints]
        self._lock = threading.Lock()
        self._index = 0
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    def current(self) -> tuple[int, int]:
        """``(generation, index)`` of the endpoint in use."""
        with self._lock:
            return self._generation, self._index

    @property
    def target(self) -> str:
        """The endpoint in use, ``host:port``."""
        with self._lock:
            return self.targets[self._index]

    def failed(self, generation: int) -> bool:
        """The endpoint of ``generation`` failed: use the next one (round robin). True if this call moved; False
        when another caller already did, or when there is one endpoint."""
        with self._lock:
            if generation != self._generation or not self.several:
                return False
            self._generation += 1
            self._index = (self._index + 1) % len(self.endpoints)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
        return True

    def on_move(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def __str__(self) -> str:
        return ",".join(self.targets)


class Next(Enum):
    """What a call that failed on one of several endpoints does next."""

    RAISE = "raise"  # an answer or a deadline: raise, the endpoint stays in use
    LEAVE = "leave"  # raise (the call must not be re-sent), and later calls go to the next endpoint
    MOVE = "move"  # go on with the next endpoint


def failover(error: RpcException, *, once: bool) -> Next:
    """After ``error`` on the current endpoint of several, what the call does.

    Transport failures (``UNAVAILABLE`` without an answer: what the core client retries) and a grid that shut
    down move to the next endpoint. A call that must reach a server at most ``once`` (``submit``,
    ``start_worker``) moves only when it provably never left the client (its connection could not be made);
    otherwise its outcome is unknown: it raises and later calls go to the next endpoint (``LEAVE``). "The grid
    is shut down" is an answer, but a submit may have been stored before it came: a ``once`` call leaves too.
    Other answers (permission, quota, invalid...) and deadlines raise.
    """
    if error.rc == ResultCode.ERROR_STREAM_SHUTDOWN:
        return Next.LEAVE if once else Next.MOVE
    if not transport_failure(error):
        return Next.RAISE
    if once and not never_sent(error):
        return Next.LEAVE
    return Next.MOVE


def transport_failure(error: RpcException) -> bool:
    """The call failed on its way (the core client's "server ... unreachable"), not with an answer."""
    return error.rc == ResultCode.ERROR_RPC and " unreachable " in error.message


def never_sent(error: RpcException) -> bool:
    """The call failed before reaching any server: its connection could not be made."""
    lowered = error.message.lower()
    return transport_failure(error) and any(marker in lowered for marker in _NOT_CONNECTED)


def outcome_unknown(error: RpcException, call: str) -> RpcException:
    """The error of a call that reached a server (maybe) and whose answer was lost: not re-sent elsewhere."""
    details = error.message.split(": ", 1)[-1]  # without the core's "server ... unreachable for 0s: "
    return RpcException(
        f"{call}: the connection to the grid server broke before its answer ({details}); not re-sent to "
        "another endpoint: its jobs may or may not have been accepted",
        error.rc,
    )


class JobError(RpcException):
    """A job completed with an error: its handler failed after the retries, its worker was lost too often, the
    grid shut down, the server does not know it (``ERROR_ITEM_UNKNOWN``: resubmit), or the client closed."""

    def __init__(self, job_id: int, message: str, rc: int, attempts: int) -> None:
        super().__init__(f"job {job_id} failed: {message}", rc or ResultCode.ERROR)
        self.job_id = job_id
        self.attempts = attempts


def settle(future: Future, result: pb.JobResult) -> None:
    if future.done():
        return  # already resolved (e.g. cancelled locally): a result is delivered once
    if result.state == pb.JOB_DONE:
        future.set_result(result.data)
    elif result.state == pb.JOB_CANCELLED:
        future.cancel()
    else:
        future.set_exception(JobError(result.job_id, result.error, result.rc, result.attempts))


class Backoff:
    """Jittered exponential delays between reconnections (0.1 s doubling up to ``maximum``)."""

    def __init__(self, first: float = 0.1, maximum: float = 2.0) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self.maximum, self._next * 2)
        return delay


class Outage:
    """How long the server has been unreachable; past ``limit`` the session gives its pending jobs up."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._since: float | None = None

    def ok(self) -> None:
        self._since = None

    def exceeded(self) -> bool:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        return now - self._since >= self.limit


class SessionCore:
    """Session id, submit requests, and the routing of streamed results to futures (thread-safe, no I/O)."""

    def __init__(self, session: str | None, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.session = session or uuid.uuid4().hex
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._futures: dict[int, Future] = {}
        self._early: dict[int, pb.JobResult] = {}  # results that overtook their submit's response
        self._submitting = 0

    def requests(self, service_id: str, version: str | int, payloads: Iterable[bytes]) -> Iterator[pb.SubmitRequest]:
        """Submit requests of at most ``max_batch`` jobs / ~2 MiB each."""
        batch: list[bytes] = []
        size = 0
        for payload in payloads:
            if not isinstance(payload, bytes):
                raise TypeError(f"job payloads are bytes, got {type(payload).__name__}")
            if batch and (len(batch) >= self.max_batch or size + len(payload) > _SUBMIT_BYTES):
                yield self._request(service_id, version, batch)
                batch, size = [], 0
            batch.append(payload)
            size += len(payload)
        if batch:
            yield self._request(service_id, version, batch)

    def _request(self, service_id: str, version: str | int, payloads: list[bytes]) -> pb.SubmitRequest:
        return pb.SubmitRequest(
            session=self.session, service_id=service_id, service_version=str(version), payloads=payloads
        )

    def submitting(self) -> None:
        """A submit call starts: results of unknown jobs may be its own (kept until ``submitted``)."""
        with self._lock:
            self._submitting += 1

    def submitted(self, job_ids: Sequence[int], futures: Sequence[Future]) -> None:
        """The submit call ended (``job_ids`` empty if it failed): track its futures."""
        with self._lock:
            self._submitting -= 1
            early = [(f, self._early.pop(i)) for i, f in zip(job_ids, futures, strict=True) if i in self._early]
            # After a failover to a server with a backend of its own, a new job may get the id of a job still
            # waiting from the previous server: that one is lost with its server (as if reported unknown).
            reused = [(i, self._futures.pop(i)) for i in job_ids if i in self._futures]
            self._futures.update((i, f) for i, f in zip(job_ids, futures, strict=True) if not f.done())
            if not self._submitting:
                self._early.clear()  # whatever is left arrived twice
        for job_id, old in reused:
            settle(old, pb.JobResult(job_id=job_id, state=pb.JOB_FAILED, rc=ResultCode.ERROR_ITEM_UNKNOWN,
                                     error="unknown to the server (its id now names another job): resubmit"))
        for future, result in early:
            self.untrack(result.job_id)
            settle(future, result)

    def untrack(self, job_id: int) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def receive(self, results: Iterable[pb.JobResult]) -> list[int]:
        """Settle the futures of streamed results (each once); returns the job ids to acknowledge."""
        out = []
        ids = []
        with self._lock:
            for result in results:
                ids.append(result.job_id)
                future = self._futures.pop(result.job_id, None)
                if future is not None:
                    out.append((future, result))
                elif self._submitting:
                    self._early[result.job_id] = result
        for future, result in out:
            settle(future, result)
        return ids

    def resolve(self, result: pb.JobResult) -> None:
        """A completed job's result fetched by ``get_result``/``cancel``."""
        if result.state in (pb.JOB_DONE, pb.JOB_FAILED, pb.JOB_CANCELLED):
            self.receive([result])

    def waiting(self) -> list[int]:
        """Jobs whose result has not arrived: sent when a results stream opens."""
        with self._lock:
            return list(self._futures)

    def fail_all(self, error: BaseException) -> int:
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
        for future in futures:
            if not future.done():
                future.set_exception(error)
        return len(futures)

    def pending(self) -> int:
        with self._lock:
            return len(self._futures)


def unreachable(target: str, seconds: float, error: RpcException) -> RpcException:
    what = f"grid servers {target}" if "," in target else f"grid server {target}"
    return RpcException(
        f"{what} unreachable for {seconds:g}s ({error.message}): results of pending jobs are lost",
        ResultCode.ERROR_RPC,
    )


def all_unreachable(endpoints: Endpoints, seconds: float, error: RpcException) -> RpcException:
    """A call that went round every endpoint for ``seconds`` in vain."""
    return RpcException(
        f"grid servers {endpoints} unreachable for {seconds:g}s (last: {error.message})", ResultCode.ERROR_RPC
    )
