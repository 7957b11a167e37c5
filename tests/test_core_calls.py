"""Calls of every shape, errors on the wire and API-version checks, on each stack."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import sample_pb2_grpc  # type: ignore[import-not-found]
from sample_service import V1, V2, V3, Request

from grpc_helper import ResultCode, RpcException
from grpc_helper.errors import STATUS_BY_RESULT


def test_four_call_shapes(stack_server: Any, stack_client: Any) -> None:
    client = stack_client(stack_server())
    assert client.sample.echo(Request(text="hi")).text == "hi"
    assert [(r.text, r.index) for r in client.sample.count(Request(text="x", count=3))] == [("x", 0), ("x", 1), ("x", 2)]
    reply = client.sample.concat(iter([Request(text="a"), Request(text="b"), Request(text="c")]))
    assert (reply.text, reply.index) == ("abc", 3)
    assert [r.text for r in client.sample.mirror(iter([Request(text="ab"), Request(text="cd")]))] == ["ba", "dc"]


@pytest.mark.parametrize(
    "rc",
    [
        ResultCode.ERROR,
        ResultCode.ERROR_PARAM_MISSING,
        ResultCode.ERROR_PARAM_INVALID,
        ResultCode.ERROR_ITEM_UNKNOWN,
        ResultCode.ERROR_STATE_UNEXPECTED,
        ResultCode.ERROR_PERMISSION_DENIED,
        ResultCode.ERROR_RESOURCE_EXHAUSTED,
        ResultCode.ERROR_RPC,
        ResultCode.ERROR_CUSTOM + 7,
    ],
)
def test_rpc_exception_reaches_client_with_rc_and_status(stack_server: Any, stack_client: Any, rc: int) -> None:
    client = stack_client(stack_server())
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(rc=rc))
    assert caught.value.rc == rc
    assert caught.value.message == f"asked to fail with {rc}"
    assert caught.value.status == STATUS_BY_RESULT.get(rc, grpc.StatusCode.UNKNOWN)


def test_errors_in_every_shape(stack_server: Any, stack_client: Any) -> None:
    client = stack_client(stack_server())
    bad = Request(text="x", count=3, rc=ResultCode.ERROR_PARAM_INVALID)
    with pytest.raises(RpcException) as caught:
        list(client.sample.count(bad))
    assert caught.value.rc == ResultCode.ERROR_PARAM_INVALID
    with pytest.raises(RpcException) as caught:
        client.sample.concat(iter([Request(text="a"), bad]))
    assert caught.value.rc == ResultCode.ERROR_PARAM_INVALID
    with pytest.raises(RpcException) as caught:
        list(client.sample.mirror(iter([bad])))
    assert caught.value.rc == ResultCode.ERROR_PARAM_INVALID


def test_unexpected_exception_is_internal_and_server_keeps_serving(stack_server: Any, stack_client: Any) -> None:
    client = stack_client(stack_server())
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(crash=True))
    assert caught.value.status == grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError: sample crash" in caught.value.message
    assert client.sample.echo(Request(text="still here")).text == "still here"


def test_plain_grpc_stub_sees_code_and_text(stack_server: Any) -> None:
    server = stack_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        assert stub.echo(Request(text="no version metadata"), timeout=5).text == "no version metadata"
        with pytest.raises(grpc.RpcError) as caught:
            stub.echo(Request(rc=ResultCode.ERROR_ITEM_UNKNOWN), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f"asked to fail with {ResultCode.ERROR_ITEM_UNKNOWN}"
    # Code using raw stubs gets the same RpcException as RpcClient raises.
    rebuilt = RpcException.from_grpc_error(caught.value)
    assert (rebuilt.rc, rebuilt.status) == (ResultCode.ERROR_ITEM_UNKNOWN, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("client_version", "expected"),
    [(V1, ResultCode.ERROR_API_CLIENT_TOO_OLD), (V3 + 1, ResultCode.ERROR_API_SERVER_TOO_OLD), (V2, None), (V3, None)],
)
def test_api_version_checks_every_shape(stack_server: Any, stack_client: Any, client_version: int, expected: Any) -> None:
    # This server accepts clients from V2 to V3 (V1 is gone from its enum).
    api = type("Api", (), {"values": staticmethod(lambda: [0, V2, V3]), "DESCRIPTOR": None})
    client = stack_client(stack_server(api_version=api), version=client_version)
    calls = [
        lambda: client.sample.echo(Request(text="v")),
        lambda: list(client.sample.count(Request(text="v", count=2))),
        lambda: client.sample.concat(iter([Request(text="v")])),
        lambda: list(client.sample.mirror(iter([Request(text="v")]))),
    ]
    for call in calls:
        if expected is None:
            call()
            continue
        with pytest.raises(RpcException) as caught:
            call()
        assert caught.value.rc == expected
        assert caught.value.status == grpc.StatusCode.FAILED_PRECONDITION
        assert "upgrade the" in caught.value.message


def test_per_call_deadline(stack_server: Any, stack_client: Any) -> None:
    server = stack_server()
    client = stack_client(server)
    with pytest.raises(RpcException) as caught:
        client.sample.echo(Request(delay=10), timeout=0.2)
    server.manager.release.set()
    assert caught.value.rc == ResultCode.ERROR_DEADLINE
    assert caught.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
