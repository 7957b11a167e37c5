"""Client deadlines (a call's ``timeout=`` bounds it, retries included), closed clients, typed stub access,
stream cancellation, and the retry flow's decisions — on both stacks where a server is involved."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import pytest
import sample_pb2_grpc  # type: ignore[import-not-found]
from sample_service import Request, SampleManager, sample_descriptor, stubs
from test_core_client import free_port

from grpc_helper import AsyncRpcClient, BuiltinServices, ResultCode, RpcClient, RpcException
from grpc_helper._client.retry import CallPlan, RetryPolicy
from grpc_helper.api import info_pb2, info_pb2_grpc


def test_call_timeout_is_the_deadline_retries_included(stack_client: Any) -> None:
    client = stack_client(port=free_port(), timeout=60)  # a 60 s retry budget...
    start = time.monotonic()
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(text="nobody"), timeout=0.5)  # ...but a 0.5 s deadline for this call
    elapsed = time.monotonic() - start
    assert caught.value.rc == ResultCode.ERROR_RPC
    assert "unreachable within the call's 0.5s deadline" in caught.value.message
    assert elapsed < 10  # not the 60 s budget


def test_stream_timeout_is_the_deadline_too(stack_client: Any) -> None:
    client = stack_client(port=free_port(), timeout=60)
    start = time.monotonic()
    with pytest.raises(RpcException) as caught:
        list(client.sample.count(Request(count=2), timeout=0.5))
    assert caught.value.rc == ResultCode.ERROR_RPC
    assert time.monotonic() - start < 10


def test_slow_answer_past_the_deadline(stack_server: Any, stack_client: Any) -> None:
    manager = SampleManager()
    client = stack_client(stack_server(manager), timeout=60)
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(text="slow", delay=30), timeout=0.5)
    manager.release.set()
    assert caught.value.rc == ResultCode.ERROR_DEADLINE


def test_closed_client_raises_rpc_exception(stack_server: Any, stack_client: Any) -> None:
    client = stack_client(stack_server())
    assert client.sample.echo(Request(text="open")).text == "open"
    client.close()
    for call in (lambda: client.sample.echo(Request(text="closed")), lambda: list(client.sample.count(Request(count=1)))):
        with pytest.raises(RpcException, match="is closed") as caught:
            call()
        assert caught.value.rc == ResultCode.ERROR_CANCELLED


def test_close_wakes_a_retrying_call(stack_client: Any) -> None:
    client = stack_client(port=free_port(), timeout=60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.sample.echo(Request(text="nobody"))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    client.close()
    thread.join(15)
    assert not thread.is_alive()
    assert isinstance(errors[0], RpcException) and errors[0].rc in (ResultCode.ERROR_CANCELLED, ResultCode.ERROR_RPC)


def test_typed_stub_is_the_attribute_service(rpc_server_factory: Any) -> None:
    server = rpc_server_factory([sample_descriptor()])
    with RpcClient("127.0.0.1", server.port, stubs(), timeout=5) as client:
        typed = client.stub(sample_pb2_grpc.SampleServiceStub)
        assert typed is client.sample
        assert typed.echo(Request(text="typed")).text == "typed"
        assert [r.index for r in typed.count(Request(count=3))] == [0, 1, 2]
        with pytest.raises(ValueError, match="not among this client's stubs"):
            client.stub(info_pb2_grpc.InfoServiceStub)
        info = client.stub(info_pb2_grpc.InfoServiceStub, info_pb2.INFO_API_CURRENT)
        assert [i.name for i in info.get(info_pb2.InfoFilter()).items] == ["info", "sample", *BuiltinServices.STUBS]


def test_typed_stub_async(rpc_server_factory: Any) -> None:
    server = rpc_server_factory([sample_descriptor()])

    async def main() -> None:
        async with AsyncRpcClient("127.0.0.1", server.port, stubs(), timeout=5) as client:
            typed = client.stub(sample_pb2_grpc.SampleServiceStub)
            assert (await typed.echo(Request(text="typed"))).text == "typed"
            assert [r.index async for r in typed.count(Request(count=3))] == [0, 1, 2]
            info = client.stub(info_pb2_grpc.InfoServiceStub, info_pb2.INFO_API_CURRENT)
            assert len((await info.get(info_pb2.InfoFilter())).items) == 2 + len(BuiltinServices.STUBS)

    asyncio.run(main())


def test_stream_cancel_from_another_thread(rpc_server_factory: Any) -> None:
    manager = SampleManager()
    server = rpc_server_factory([sample_descriptor(manager)])
    with RpcClient("127.0.0.1", server.port, stubs(), timeout=5) as client:
        stream = client.sample.count(Request(count=5, delay=30))
        assert next(stream).index == 0
        manager.entered.wait(5)
        threading.Thread(target=stream.cancel).start()
        with pytest.raises(RpcException) as caught:
            next(stream)
        manager.release.set()
        assert caught.value.rc == ResultCode.ERROR_CANCELLED
        assert stream.code() == grpc.StatusCode.CANCELLED  # the grpc call's own view


def test_reserved_service_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid service attribute 'close'"):
        RpcClient("127.0.0.1", 1, {"close": (sample_pb2_grpc.SampleServiceStub, 3)})


# --- the retry flow's decisions, without I/O --------------------------------------------------------------


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plan_attempts_get_what_is_left_of_the_deadline() -> None:
    clock = _Clock()
    plan = CallPlan(RetryPolicy(60), "h:1", 2.0, clock)
    assert plan.attempt_timeout(False) == 2.0
    delay = plan.after_failure(_Unavailable(), True, False)
    assert 0 < delay <= 0.05
    clock.now += 1.5
    assert plan.attempt_timeout(False) == pytest.approx(0.5)
    clock.now += 0.4
    assert plan.after_failure(_Unavailable(), True, False) <= 0.1 + 1e-9  # never sleeps past the deadline
    clock.now += 0.1
    with pytest.raises(RpcException, match="unreachable within the call's 2s deadline"):
        plan.attempt_timeout(False)


def test_plan_without_deadline_uses_the_retry_budget_and_backs_off() -> None:
    clock = _Clock()
    plan = CallPlan(RetryPolicy(3, first_delay=0.4, max_delay=1.0), "h:1", None, clock)
    assert plan.attempt_timeout(False) is None
    delays = []
    for _ in range(4):
        delays.append(plan.after_failure(_Unavailable(), True, False))
        clock.now += delays[-1]
    assert all(0.2 <= d <= 1.0 for d in delays) and max(delays) > 0.4
    clock.now = 103.0
    with pytest.raises(RpcException, match="unreachable for 3s") as caught:
        plan.after_failure(_Unavailable(), True, False)
    assert caught.value.rc == ResultCode.ERROR_RPC


def test_plan_never_replays_and_stops_when_closed() -> None:
    plan = CallPlan(RetryPolicy(60), "h:1", None, _Clock())
    with pytest.raises(RpcException) as caught:
        plan.after_failure(_Unavailable(), False, False)  # part of a stream went through
    assert caught.value.rc == ResultCode.ERROR_RPC and "connection refused" in caught.value.message
    with pytest.raises(RpcException, match="is closed"):
        plan.after_failure(_Unavailable(), True, True)
    with pytest.raises(RpcException, match="is closed"):
        plan.attempt_timeout(True)
