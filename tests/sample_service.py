"""The sample service used by the core tests: every call shape, errors on demand, blocking on demand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import sample_pb2  # type: ignore[import-not-found]
import sample_pb2_grpc  # type: ignore[import-not-found]
from grpc_health.v1 import health_pb2, health_pb2_grpc

import grpc_helper
from grpc_helper import RpcException, RpcManager, RpcServiceDescriptor

V1, V2, V3 = 1, 2, 3


class LoopEvent(threading.Event):
    """A ``threading.Event`` that coroutines can await too (``wait_async``): the test thread drives the sync
    and the asyncio twins of the sample manager alike."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()

    def set(self) -> None:
        with self._waiters_lock:
            super().set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))

    async def wait_async(self, timeout: float | None = None) -> bool:
        with self._waiters_lock:
            if self.is_set():
                return True
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((asyncio.get_running_loop(), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True


class SampleManager(sample_pb2_grpc.SampleServiceServicer, RpcManager):
    def __init__(self, fail_load: bool = False, probe_load: bool = True) -> None:
        super().__init__()
        self.fail_load = fail_load
        self.probe_load = probe_load  # False on TLS servers: the probes use plaintext channels
        self.loaded = LoopEvent()
        self.stopped = LoopEvent()
        self.entered = LoopEvent()  # set when a call with a delay starts
        self.release = LoopEvent()  # set to end delays early
        self.info_in_load: Any = None
        self.health_in_load: Any = None

    def load(self) -> None:
        if self.fail_load:
            raise RuntimeError("sample load failure")
        if not self.probe_load:
            self.loaded.set()
            return
        # The auto-client works inside load().
        self.info_in_load = self.client.info.get(grpc_helper.api.info_pb2.InfoFilter(names=["sample"]))
        with grpc.insecure_channel(self.client.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            self.health_in_load = check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        self.loaded.set()

    def shutdown(self) -> None:
        self.stopped.set()

    @staticmethod
    def fail_if_asked(request: Any) -> None:
        if request.rc:
            raise RpcException(f"asked to fail with {request.rc}", request.rc)
        if request.crash:
            raise ZeroDivisionError("sample crash")

    def _check(self, request: Any) -> None:
        self.fail_if_asked(request)
        if request.delay:
            self.entered.set()
            self.release.wait(request.delay)

    # Single-parameter form (the server adapts it).
    def echo(self, request: Any) -> Any:
        self._check(request)
        if request.text == "whoami":
            return sample_pb2.Reply(text=repr(grpc_helper.current_identity()))
        return sample_pb2.Reply(text=request.text)

    def count(self, request: Any, context: Any) -> Iterator[Any]:
        for i in range(request.count):
            if i == 1:
                self._check(request)
            yield sample_pb2.Reply(text=request.text, index=i)

    def concat(self, requests: Iterator[Any], context: Any) -> Any:
        texts = []
        for r in requests:
            self._check(r)
            texts.append(r.text)
        return sample_pb2.Reply(text="".join(texts), index=len(texts))

    def mirror(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for i, r in enumerate(requests):
            self._check(r)
            yield sample_pb2.Reply(text=r.text[::-1], index=i)


def sample_descriptor(
    manager: SampleManager | None = None, api_version: Any = None, access: Any = grpc_helper.Access.ANYONE
) -> RpcServiceDescriptor:
    return RpcServiceDescriptor(
        grpc_helper,
        "sample",
        api_version or sample_pb2.SampleApiVersion,
        manager or SampleManager(),
        sample_pb2_grpc.add_SampleServiceServicer_to_server,
        sample_pb2_grpc.SampleServiceStub,
        access=access,
    )


def stubs(version: int = V3) -> dict[str, tuple[type, int]]:
    return {"sample": (sample_pb2_grpc.SampleServiceStub, version)}


Request = sample_pb2.Request


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    """Bounded wait for a state that another thread or process reaches (checked every 10 ms)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
