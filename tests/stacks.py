"""Fixtures running the core scenarios against each server/client stack.

``stack_server(manager=None, api_version=None, **kwargs)`` hosts the sample service and returns a server
exposing ``port``, ``manager``, ``shutdown(grace)`` and ``dump()``; ``stack_client(server, version=V3,
**kwargs)`` returns a client whose ``sample.<method>`` calls are synchronous whatever the stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sample_service import V3, SampleManager, sample_descriptor, stubs

from grpc_helper import RpcServer

STACKS = ["sync"]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stack_server(stack: str, rpc_server_factory: Callable[..., RpcServer]) -> Callable[..., Any]:
    def make(manager: SampleManager | None = None, api_version: Any = None, **kwargs: Any) -> Any:
        manager = manager or SampleManager()
        server = rpc_server_factory([sample_descriptor(manager, api_version)], **kwargs)
        server.manager = manager  # type: ignore[attr-defined]
        return server

    return make


@pytest.fixture
def stack_client(stack: str, rpc_client_factory: Callable[..., Any]) -> Callable[..., Any]:
    def make(server: Any = None, version: int = V3, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 5)
        return rpc_client_factory(server, stubs(version), **kwargs)

    return make
