"""RpcServiceDescriptor: identity from the module, API range from the enum, service name from generated code."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import grpc
import pytest
import sample_pb2  # type: ignore[import-not-found]
import sample_pb2_grpc  # type: ignore[import-not-found]
from sample_service import SampleManager

from grpc_helper import RpcServiceDescriptor


def describe(module: Any = grpc, name: str = "sample", api: Any = None) -> RpcServiceDescriptor:
    return RpcServiceDescriptor(
        module,
        name,
        api or sample_pb2.SampleApiVersion,
        SampleManager(),
        sample_pb2_grpc.add_SampleServiceServicer_to_server,
        sample_pb2_grpc.SampleServiceStub,
    )


def test_identity_from_distribution_metadata() -> None:
    d = describe(grpc)  # grpc has no __title__: its distribution (grpcio) names it
    assert (d.package, d.version) == ("grpcio", importlib.metadata.version("grpcio"))


def test_api_range_service_and_methods() -> None:
    d = describe()
    assert (d.supported_api_version, d.current_api_version) == (1, 3)
    assert d.full_name == "tests.sample.SampleService"
    assert set(d.methods) == {f"/tests.sample.SampleService/{m}" for m in ("echo", "count", "concat", "mirror")}


def test_bad_descriptors() -> None:
    with pytest.raises(ValueError, match="identifier"):
        describe(name="not a name")
    only_zero = type("Api", (), {"values": staticmethod(lambda: [0]), "DESCRIPTOR": type("D", (), {"full_name": "Api"})})
    with pytest.raises(ValueError, match="no non-zero value"):
        describe(api=only_zero)
