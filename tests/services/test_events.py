"""Events service, on both stacks over mTLS: publish, filter, resume after interruptions, lost windows, keepalives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from grpc_helper import BuiltinServices, CallLimits, ResultCode, RpcException, certs
from grpc_helper.api.events_pb2 import ERROR_EVENTS_LOST, EventFilter, EventRequest, ListenItem
from grpc_helper.events import Events
from services.relay import Relay


def subscribed(items: Iterator[Any]) -> Iterator[Any]:
    """The listener, once the server registered it (its first item is a keepalive)."""
    assert next(items) is None
    return items


def take(items: Iterator[Any], count: int) -> list[Any]:
    """The next ``count`` events (keepalives skipped; bounded: the listener fails if the server goes)."""
    events: list[Any] = []
    for item in items:
        if item is not None:
            events.append(item)
            if len(events) == count:
                break
    return events


def test_listen_filters_and_numbers_events(svc: Any) -> None:
    events = Events()
    server = svc.server(services=BuiltinServices(events=events))
    client = svc.client(server.port)
    items = subscribed(svc.listen(client, ["job-*", "exact"]))
    for name in ["job-started", "other", "exact", "exactly", "job-done"]:
        events.send(name, {"k": name})
    got = take(items, 3)
    assert [e.name for e in got] == ["job-started", "exact", "job-done"]
    assert [e.sequence for e in got] == [1, 3, 5]
    assert all(e.stream == events.stream for e in got)
    assert got[0].properties["k"] == "job-started"


def test_resume_across_a_network_interruption(svc: Any) -> None:
    events = Events()
    server = svc.server(services=BuiltinServices(events=events))
    relay = Relay(server.port)
    try:
        client = svc.client(relay.port)
        items = subscribed(svc.listen(client, ["t-*"]))
        for i in range(1, 4):
            events.send(f"t-{i}")
            events.send("noise")
        first = take(items, 3)
        relay.cut()  # both sides see the connection reset
        for i in range(4, 10):
            events.send(f"t-{i}")
        rest = take(items, 6)
    finally:
        relay.close()
    names = [e.name for e in first + rest]
    assert names == [f"t-{i}" for i in range(1, 10)]  # nothing lost, nothing twice


def test_resume_after_the_server_cut_a_slow_reader(svc: Any) -> None:
    events = Events()
    server = svc.server(services=BuiltinServices(events=events), limits=CallLimits(max_streams=1, send_timeout=0.5))
    client = svc.client(server.port)
    slow = subscribed(svc.listen(client, ["big"]))
    big = {f"p{i}": "x" * 4096 for i in range(64)}  # 256 KiB per event: flow control soon stops the sender
    for _ in range(40):
        events.send("big", big)
    # The cut frees the caller's only stream slot: a one-shot raw call (no retry, no resume) gets in.
    credentials = certs.channel_credentials(svc.tls, "root")
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        listen = channel.unary_stream(
            "/grpc_helper.api.EventsService/listen", request_serializer=EventFilter.SerializeToString,
            response_deserializer=ListenItem.FromString,
        )

        def admitted() -> bool:
            call = listen(EventFilter(names=["none"]), timeout=10)
            try:
                return next(iter(call)).HasField("keepalive")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            finally:
                call.cancel()

        deadline = time.monotonic() + 60
        while not admitted():
            assert time.monotonic() < deadline
    got = take(slow, 40)
    assert [e.sequence for e in got] == list(range(1, 41))


def test_resume_after_a_client_reconnect(svc: Any) -> None:
    events = Events()
    server = svc.server(services=BuiltinServices(events=events))
    first_client = svc.client(server.port)
    listener = subscribed(svc.listen(first_client, ["t-*"]))
    for i in range(1, 4):
        events.send(f"t-{i}")
    seen = take(listener, 2)  # t-3 sent, not read: the next client gets it
    listener.close()
    first_client.close()
    for i in range(4, 6):
        events.send(f"t-{i}")
    stream, after = seen[-1].stream, seen[-1].sequence
    again = take(svc.listen(svc.client(server.port), ["t-*"], stream=stream, after=after), 3)
    assert [e.name for e in seen + again] == [f"t-{i}" for i in range(1, 6)]


def test_resume_point_out_of_the_window_is_a_clear_error(svc: Any) -> None:
    events = Events(window=3)
    server = svc.server(services=BuiltinServices(events=events))
    for i in range(10):
        events.send(f"t-{i}")
    client = svc.client(server.port)
    with pytest.raises(RpcException) as info:
        next(svc.listen(client, stream=events.stream, after=2))
    assert info.value.rc == ERROR_EVENTS_LOST and info.value.status == grpc.StatusCode.OUT_OF_RANGE
    assert "no longer retained" in info.value.message
    replay = take(svc.listen(client, stream=events.stream, after=7), 2)  # still in the window
    assert [e.sequence for e in replay] == [8, 9]


def test_resume_on_a_restarted_server_is_a_clear_error(svc: Any) -> None:
    server = svc.server()
    client = svc.client(server.port)
    with pytest.raises(RpcException) as info:
        next(svc.listen(client, stream="0123456789abcdef", after=1))
    assert info.value.rc == ERROR_EVENTS_LOST and "server restarted" in info.value.message


def test_idle_listeners_get_keepalives(svc: Any) -> None:
    server = svc.server(services=BuiltinServices(events=Events(keepalive=0.05)))
    items = subscribed(svc.listen(svc.client(server.port)))
    assert next(items) is None and next(items) is None


def test_bad_filters_and_resume_points_are_refused(svc: Any) -> None:
    events = Events()
    server = svc.server(services=BuiltinServices(events=events))
    client = svc.client(server.port)
    for names, after in [(["bad name!"], 0), (["x"] * 65, 0), (["ok"], 5)]:
        with pytest.raises(RpcException) as info:
            next(svc.listen(client, names, stream=events.stream if after else "", after=after))
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


def test_remote_send_only_when_allowed(svc: Any) -> None:
    closed = svc.server(services=BuiltinServices(events=Events()))
    with pytest.raises(RpcException) as info:
        svc.client(closed.port).events.send(EventRequest(name="x"))
    assert info.value.rc == ResultCode.ERROR_PERMISSION_DENIED
    events = Events(remote_send=True)
    server = svc.server(services=BuiltinServices(events=events))
    client = svc.client(server.port)
    items = subscribed(svc.listen(client))
    sent = client.events.send(EventRequest(name="remote", properties={"a": "b"}))
    assert sent.sequence == 1 and take(items, 1)[0].properties["a"] == "b"
    for request in [EventRequest(name=""), EventRequest(name="x" * 200), EventRequest(name="x", properties={"k": "v" * 5000})]:
        with pytest.raises(RpcException) as info:
            client.events.send(request)
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


def test_listeners_end_at_server_shutdown(svc: Any) -> None:
    server = svc.server()
    items = subscribed(svc.listen(svc.client(server.port, timeout=1)))
    server.shutdown(30)  # begin_shutdown ends the streams: the shutdown does not wait for the grace
    with pytest.raises(RpcException) as info:
        take(items, 1)  # the listener tried to resume, for the client's timeout
    assert info.value.rc == ResultCode.ERROR_RPC


def test_asyncio_listeners_hold_no_thread(svc: Any) -> None:
    if svc.stack != "aio":
        pytest.skip("the sync server holds one thread per stream by design")
    events = Events()
    server = svc.server(services=BuiltinServices(events=events))
    client = svc.client(server.port)
    before = threading.active_count()
    listeners = [subscribed(svc.listen(client, [f"n-{i}"])) for i in range(20)]
    assert threading.active_count() <= before + 2
    events.send("n-7")
    assert take(listeners[7], 1)[0].name == "n-7"
