"""Identity, access rules, per-caller quotas, undecodable requests and bounded errors, on both stacks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mini_ca import MiniCa
from sample_service import Request, SampleManager, wait_until

from grpc_helper import Access, CallLimits, ResultCode, RpcException, RpcServiceDescriptor

pytest_plugins = ["stacks"]

SAMPLE = "/tests.sample.SampleService/"


@pytest.fixture(scope="module")
def ca() -> MiniCa:
    return MiniCa()


@pytest.fixture
def tls_server(stack_server: Callable[..., Any], ca: MiniCa) -> Callable[..., Any]:
    """A sample server over mTLS (admins: root) whose manager does not probe over plaintext."""

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("admins", ["root"])
        return stack_server(SampleManager(probe_load=False), credentials=ca.server_credentials(),
                            client_credentials=ca.client_credentials("server-self"), **kwargs)

    return make


@pytest.fixture
def tls_client(stack_client: Callable[..., Any], ca: MiniCa) -> Callable[..., Any]:
    def make(server: Any, *names: str, **kwargs: Any) -> Any:
        return stack_client(server, host="localhost", credentials=ca.client_credentials(*names), **kwargs)

    return make


def whoami(client: Any) -> str:
    return str(client.sample.echo(Request(text="whoami")).text)


def test_identity_reaches_managers(tls_server: Any, tls_client: Any) -> None:
    server = tls_server()
    assert whoami(tls_client(server, "alice")) == "Identity(name='alice', admin=False)"
    assert whoami(tls_client(server, "root")) == "Identity(name='root', admin=True)"


def test_plaintext_callers_have_no_identity(stack_server: Any, stack_client: Any) -> None:
    assert whoami(stack_client(stack_server())) == "None"


@pytest.mark.parametrize("names", [("alice", "root"), ()], ids=["two-common-names", "no-common-name"])
def test_ambiguous_certificate_subject_is_refused(tls_server: Any, tls_client: Any, names: tuple[str, ...]) -> None:
    server = tls_server()
    with pytest.raises(RpcException) as caught:
        whoami(tls_client(server, *names))
    assert caught.value.rc == ResultCode.ERROR_UNAUTHENTICATED
    assert "common name" in caught.value.message


def test_access_rules_per_method(tls_server: Any, tls_client: Any) -> None:
    only_ops = Access.rule(lambda who: who.name.startswith("ops-"), "operators")
    server = tls_server(access={"echo": Access.ADMIN, "count": only_ops, "*": Access.AUTHENTICATED})
    alice, root, ops = tls_client(server, "alice"), tls_client(server, "root"), tls_client(server, "ops-1")
    with pytest.raises(RpcException) as caught:
        alice.sample.echo(Request(text="x"))
    assert caught.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert "echo is reserved to administrators; alice may not call it" in caught.value.message
    assert root.sample.echo(Request(text="x")).text == "x"
    # Streaming methods are checked before the manager yields anything.
    with pytest.raises(RpcException) as caught:
        list(root.sample.count(Request(text="x", count=2)))
    assert caught.value.rc == ResultCode.ERROR_PERMISSION_DENIED
    assert [r.index for r in ops.sample.count(Request(text="x", count=2))] == [0, 1]
    assert alice.sample.concat(iter([Request(text="a"), Request(text="b")])).text == "ab"


def test_authenticated_rule_refuses_plaintext(stack_server: Any, stack_client: Any) -> None:
    client = stack_client(stack_server(access=Access.AUTHENTICATED))
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(text="x"))
    assert caught.value.status == grpc.StatusCode.UNAUTHENTICATED
    assert "requires a client certificate" in caught.value.message
    with pytest.raises(RpcException) as caught:
        list(client.sample.mirror(iter([Request(text="x")])))
    assert caught.value.status == grpc.StatusCode.UNAUTHENTICATED


def test_access_must_name_real_methods() -> None:
    from sample_service import sample_descriptor

    with pytest.raises(ValueError, match="does not have: ech0"):
        sample_descriptor(access={"ech0": Access.ADMIN})
    assert isinstance(sample_descriptor(access={"echo": Access.ADMIN}), RpcServiceDescriptor)


def _blocked_streams(client: Any, n: int) -> list[Iterator[Any]]:
    """``n`` count streams, each admitted (first reply read) and blocked in the manager."""
    streams = []
    for _ in range(n):
        stream = iter(client.sample.count(Request(text="s", count=3, delay=30)))
        assert next(stream).index == 0
        streams.append(stream)
    return streams


def test_stream_quota_per_identity(tls_server: Any, tls_client: Any) -> None:
    server = tls_server(limits=CallLimits(max_calls=8, max_streams=2))
    alice, bob = tls_client(server, "alice"), tls_client(server, "bob")
    held = _blocked_streams(alice, 2)
    with pytest.raises(RpcException) as caught:
        next(iter(alice.sample.count(Request(text="s", count=1))))
    assert caught.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many open streams for alice (limit 2)" in caught.value.message
    # Another identity is not affected, for streams and unary calls.
    assert [r.index for r in bob.sample.count(Request(text="s", count=2))] == [0, 1]
    assert bob.sample.echo(Request(text="b")).text == "b"
    server.manager.release.set()
    for stream in held:
        assert [r.index for r in stream] == [1, 2]
    assert [r.index for r in alice.sample.count(Request(text="s", count=1))] == [0]


def test_call_quota_per_caller(stack_server: Any, stack_client: Any) -> None:
    server = stack_server(limits=CallLimits(max_calls=2, max_streams=2))
    client = stack_client(server)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(client.sample.echo(Request(text="w", delay=30))))
               for _ in range(2)]
    for t in threads:
        t.start()
    assert server.manager.entered.wait(10)

    def refused() -> bool:
        try:
            client.sample.echo(Request(text="x"))
        except RpcException as exc:
            return exc.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False

    assert wait_until(refused)
    server.manager.release.set()
    for t in threads:
        t.join(10)
    assert [r.text for r in results] == ["w", "w"]
    assert client.sample.echo(Request(text="x")).text == "x"


def test_stalled_reader_is_cut(stack_server: Any, stack: str) -> None:
    server = stack_server(limits=CallLimits(max_calls=4, max_streams=1, send_timeout=1.0))
    big = Request(text="x" * 1_000_000, count=1000)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        count = channel.unary_stream(SAMPLE + "count", request_serializer=Request.SerializeToString,
                                     response_deserializer=lambda b: b)
        stalled = count(big, timeout=60)  # never read
        stalled.initial_metadata()  # the server has started replying

        def second_stream_refused() -> bool:
            try:
                next(iter(count(Request(text="y", count=1), timeout=5)))
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

        assert wait_until(second_stream_refused, 10)
        # Past the send timeout the stalled stream is cut and its quota released.
        assert wait_until(lambda: not second_stream_refused(), 15)
        # The stalled reader, reading at last, gets what was in flight, then the end of its stream.
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stalled:
                pass
        if stack == "aio":
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "stream cut: a reply waited more than 1s for the reader" in caught.value.details()
        else:  # the sync server can only cancel the call from the watchdog's thread
            assert caught.value.code() == grpc.StatusCode.CANCELLED


def _raw_echo(port: int) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    echo = channel.unary_unary(SAMPLE + "echo", request_serializer=None, response_deserializer=None)
    concat = channel.stream_unary(SAMPLE + "concat", request_serializer=None, response_deserializer=None)
    return channel, echo, concat


GARBAGE = b"\xff\xff\xff\xff"


def test_undecodable_request_is_invalid_argument(stack_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = stack_server()
    channel, echo, concat = _raw_echo(server.port)
    with channel, caplog.at_level(logging.WARNING):
        for call in (lambda: echo(GARBAGE, timeout=5), lambda: concat(iter([b"", GARBAGE]), timeout=5)):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request is not a valid tests.sample.Request (4 bytes)" in caught.value.details()
        assert echo(Request(text="ok").SerializeToString(), timeout=5) == b"\n\x02ok"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_shutdown_after_garbage_on_client_streams_completes(stack_server: Any) -> None:
    server = stack_server()
    channel, _echo, concat = _raw_echo(server.port)
    with channel:
        futures = [concat.future(iter([GARBAGE] * 3), timeout=5) for _ in range(20)]
        for f in futures:
            assert f.exception() is not None
    done = threading.Thread(target=server.shutdown, args=(1.0,))
    done.start()
    done.join(15)
    assert not done.is_alive()


def test_undecodable_requests_do_not_leak(stack_server: Any) -> None:
    server = stack_server()
    channel, echo, _concat = _raw_echo(server.port)
    process = psutil.Process()

    def hammer(n: int) -> None:
        for _ in range(n):
            with pytest.raises(grpc.RpcError):
                echo(GARBAGE, timeout=5)

    with channel:
        hammer(300)  # warm up allocators and caches
        before = process.memory_info().rss
        hammer(2000)
        grown = process.memory_info().rss - before
    # grpcio's own path leaked ~20 KB per call (40 MB here); allow allocator noise.
    assert grown < 8_000_000, grown


def test_error_messages_quote_bounded_input(stack_server: Any) -> None:
    server = stack_server()
    channel, echo, _concat = _raw_echo(server.port)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            echo(Request(text="x").SerializeToString(), metadata=[("api-version", "9" * 7000)], timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION or len(caught.value.details()) < 400
        with pytest.raises(grpc.RpcError) as caught:
            echo(Request(text="x").SerializeToString(), metadata=[("api-version", "v" * 7000)], timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(caught.value.details()) < 300
    from grpc_helper.api.info_pb2 import InfoFilter
    from grpc_helper.api.info_pb2_grpc import InfoServiceStub

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as exc:
        InfoServiceStub(channel).get(InfoFilter(names=[f"missing-{i}" * 50 for i in range(1000)]), timeout=5)
    error = RpcException.from_grpc_error(exc.value)
    assert error.rc == ResultCode.ERROR_ITEM_UNKNOWN
    assert "and 995 more" in error.message and len(error.message) < 500


def test_health_list(stack_server: Any) -> None:
    server = stack_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        listing = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: s.status for name, s in listing.statuses.items()}
    assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
    assert statuses["tests.sample.SampleService"] == health_pb2.HealthCheckResponse.SERVING
    assert "grpc_helper.api.InfoService" in statuses


@pytest.mark.parametrize("case", ["no-client-certificate", "foreign-ca"])
def test_certificate_problems_are_reported_at_once(tls_server: Any, ca: MiniCa, case: str) -> None:
    """A client whose certificates don't fit the server's is told so within a second, not after its whole
    retry budget as if the server were down."""
    import time

    from sample_service import stubs

    from grpc_helper import RpcClient

    server = tls_server()
    if case == "no-client-certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.pem)
    else:
        credentials = MiniCa().client_credentials("alice")  # another CA: the server's certificate is not trusted
    with RpcClient("localhost", server.port, stubs(), credentials=credentials, timeout=60) as client:
        start = time.monotonic()
        with pytest.raises(RpcException) as caught:
            client.sample.echo(Request(text="x"))
        elapsed = time.monotonic() - start
    assert caught.value.rc == ResultCode.ERROR_RPC
    assert "TLS with" in caught.value.message and "handshake failed" in caught.value.message
    assert elapsed < 30  # far less than the 60 s retry budget
