"""Calls of a grid client or controller given several endpoints: one core client per endpoint (made on first
use), and the loop that moves a failed call to the next endpoint (sync and asyncio drivers of the decisions
in ``_session``).

With one endpoint, calls are the core client's (its retries, for the client's ``timeout``), as always. With
several, each endpoint's core client makes one attempt per call, and a transport failure moves the call to
the next endpoint (with the session's back-off) until the client's ``timeout`` has passed; a call that must
reach a server at most once moves only when it provably never left (see ``_session.failover``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from grpc_helper import AsyncRpcClient, ResultCode, RpcClient, RpcException
from grpc_helper.grid._session import Backoff, Endpoints, Next, all_unreachable, failover, outcome_unknown, transport_failure

Client = TypeVar("Client", RpcClient, AsyncRpcClient)


class _Clients(Generic[Client]):
    """One core client per endpoint, made on first use with ``make(host, port, retry_budget)``."""

    def __init__(self, endpoints: Endpoints, make: Callable[[str, int, float], Client], timeout: float) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._make: Callable[[str, int, float], Client] = make
        self._lock = threading.Lock()
        self._clients: dict[int, Client] = {}
        self._closed = threading.Event()

    def client(self, index: int | None = None) -> Client:
        """The core client of endpoint ``index`` (default: the one in use); ``ERROR_CANCELLED`` once closed."""
        if index is None:
            index = self.endpoints.current()[1]
        with self._lock:
            if self._closed.is_set():
                raise RpcException(f"grid client of {self.endpoints} is closed", ResultCode.ERROR_CANCELLED)
            client = self._clients.get(index)
            if client is None:
                host, port = self.endpoints.endpoints[index]
                # One endpoint: the core retries for the whole timeout. Several: one attempt, this loop moves on.
                budget = 0.0 if self.endpoints.several else self.timeout
                client = self._clients[index] = self._make(host, port, budget)
            return client

    def _all(self) -> list[Client]:
        """Close: no more clients; the ones made so far (to close)."""
        with self._lock:
            self._closed.set()
            clients = list(self._clients.values())
            self._clients.clear()
        return clients

    def _left(self, start: float, timeout: float) -> float:
        return start + timeout - time.monotonic()

    def _next(self, error: RpcException, generation: int, once: bool, method: str, start: float, timeout: float) -> float:
        """After a failed attempt on one of several endpoints: move on and return the delay, or raise."""
        decision = failover(error, once=once)
        if decision is Next.RAISE:
            raise error
        self.endpoints.failed(generation)
        if decision is Next.LEAVE:
            raise outcome_unknown(error, method) if transport_failure(error) else error
        left = self._left(start, timeout)
        if left <= 0:
            raise all_unreachable(self.endpoints, timeout, error) from None
        return left


class SyncClients(_Clients[RpcClient]):
    """``RpcClient``s of a sync grid client or controller."""

    def call(self, service: str, method: str, request: Any, *, once: bool = False, timeout: float | None = None) -> Any:
        """``client.<service>.<method>(request)`` on the endpoint in use, moving on as ``failover`` says."""
        timeout = self.timeout if timeout is None else timeout
        if not self.endpoints.several:
            return getattr(getattr(self.client(0), service), method)(request, timeout=timeout)
        start = time.monotonic()
        backoff = Backoff()
        last: RpcException | None = None
        while True:
            generation, index = self.endpoints.current()
            if last is not None and self._left(start, timeout) <= 0:
                raise all_unreachable(self.endpoints, timeout, last)  # the back-off used up what was left
            try:
                return getattr(getattr(self.client(index), service), method)(
                    request, timeout=max(0.0, self._left(start, timeout))
                )
            except RpcException as error:
                if self._closed.is_set():
                    raise
                left = self._next(error, generation, once, method, start, timeout)
                last = error
                self._closed.wait(min(left, backoff.next()))

    def close(self) -> None:
        for client in self._all():
            client.close()


class AsyncClients(_Clients[AsyncRpcClient]):
    """``AsyncRpcClient``s of an asyncio grid client."""

    async def call(
        self, service: str, method: str, request: Any, *, once: bool = False, timeout: float | None = None
    ) -> Any:
        timeout = self.timeout if timeout is None else timeout
        if not self.endpoints.several:
            return await getattr(getattr(self.client(0), service), method)(request, timeout=timeout)
        start = time.monotonic()
        backoff = Backoff()
        last: RpcException | None = None
        while True:
            generation, index = self.endpoints.current()
            if last is not None and self._left(start, timeout) <= 0:
                raise all_unreachable(self.endpoints, timeout, last)  # the back-off used up what was left
            try:
                return await getattr(getattr(self.client(index), service), method)(
                    request, timeout=max(0.0, self._left(start, timeout))
                )
            except RpcException as error:
                if self._closed.is_set():
                    raise
                left = self._next(error, generation, once, method, start, timeout)
                last = error
                await asyncio.sleep(min(left, backoff.next()))

    async def close(self) -> None:
        for client in self._all():
            await client.close()
