"""RpcClient reachability: retry until a late server starts, retry budget, streams never re-sent."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from sample_service import Request, SampleManager

from grpc_helper import ResultCode, RpcException


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_created_before_server_works_once_it_is_up(stack_server: Any, stack_client: Any) -> None:
    port = free_port()
    client = stack_client(port=port, timeout=20)
    started = threading.Event()

    def late_start() -> None:
        started.wait(5)
        time.sleep(0.5)  # let the client fail a few attempts first
        holder.append(stack_server(port=port))

    holder: list[Any] = []
    thread = threading.Thread(target=late_start)
    thread.start()
    started.set()
    try:
        assert client.sample.echo(Request(text="late")).text == "late"
    finally:
        thread.join(10)
    assert [r.index for r in client.sample.count(Request(count=2))] == [0, 1]


def test_unreachable_server_raises_after_timeout(stack_client: Any) -> None:
    client = stack_client(port=free_port(), timeout=1.0)
    start = time.monotonic()
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(text="nobody"))
    elapsed = time.monotonic() - start
    assert caught.value.rc == ResultCode.ERROR_RPC
    assert "unreachable" in caught.value.message
    assert 0.9 <= elapsed < 5


def test_stream_not_resent_after_first_item(stack_server: Any, stack_client: Any) -> None:
    manager = SampleManager()
    server = stack_server(manager)
    client = stack_client(server, timeout=2)
    # The second item blocks in the server; the server then goes away under the stream.
    stream = client.sample.count(Request(text="once", count=5, delay=30))
    first = next(stream)
    assert first.index == 0
    manager.entered.wait(5)
    threading.Thread(target=server.shutdown, args=(0,)).start()
    received = [first]
    with pytest.raises(RpcException) as caught:
        received.extend(stream)
    manager.release.set()
    assert [r.index for r in received] == [0]
    assert caught.value.rc in (ResultCode.ERROR_RPC, ResultCode.ERROR_CANCELLED)


def test_closing_a_stream_early_cancels_it(stack_server: Any, stack_client: Any) -> None:
    server = stack_server()
    client = stack_client(server)
    stream = client.sample.count(Request(count=1000))
    assert next(stream).index == 0
    stream.close()
    assert client.sample.echo(Request(text="after")).text == "after"
