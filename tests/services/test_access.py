"""Authorization of the built-in services: reads for authenticated callers, changes and shutdown for admins."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from grpc_helper import BuiltinServices, RpcException
from grpc_helper.api.config_pb2 import ConfigFilter, ConfigValue, ConfigValues
from grpc_helper.api.events_pb2 import EventRequest
from grpc_helper.api.logger_pb2 import LoggerFilter, LoggerLevel, LoggerLevels
from grpc_helper.api.server_pb2 import ShutdownRequest
from grpc_helper.config import Config, ConfigItem
from grpc_helper.events import Events
from services.conftest import USER
from services.test_events import subscribed

ITEM = ConfigItem("color", "A color", "blue", user=True)

CHANGES: list[tuple[str, str, Any]] = [
    ("config", "set", ConfigValues(items=[ConfigValue(name="color", value="red")])),
    ("config", "reset", ConfigFilter()),
    ("logger", "set", LoggerLevels(items=[LoggerLevel(name="root", level="DEBUG")])),
    ("logger", "reset", LoggerFilter()),
    ("events", "send", EventRequest(name="x")),
    ("server", "shutdown", ShutdownRequest()),
]


def test_users_read_admins_change(svc: Any) -> None:
    config = Config([ITEM])
    server = svc.server(services=BuiltinServices(config, Events(remote_send=True)))
    user = svc.client(server.port, USER)
    assert user.config.get(ConfigFilter(names=["color"])).items[0].value == "blue"
    assert user.logger.get(LoggerFilter(names=["root"])).items
    subscribed(svc.listen(user))  # listening is a read
    for service, method, request in CHANGES:
        with pytest.raises(RpcException) as info:
            getattr(getattr(user, service), method)(request)
        assert info.value.status == grpc.StatusCode.PERMISSION_DENIED, (service, method)
        assert "administrators" in info.value.message
    assert config[ITEM] == "blue"
    admin = svc.client(server.port)
    admin.config.set(ConfigValues(items=[ConfigValue(name="color", value="red")]))
    assert config[ITEM] == "red"


def test_plaintext_callers_are_unauthenticated(svc: Any) -> None:
    server = svc.server(tls=False)
    anonymous = svc.client(server.port, None)
    for service, method, request in [("config", "get", ConfigFilter()), ("logger", "get", LoggerFilter()), *CHANGES]:
        with pytest.raises(RpcException) as info:
            getattr(getattr(anonymous, service), method)(request)
        assert info.value.status == grpc.StatusCode.UNAUTHENTICATED, (service, method)
    with pytest.raises(RpcException) as info:
        next(svc.listen(anonymous))
    assert info.value.status == grpc.StatusCode.UNAUTHENTICATED


def test_opt_out_hosts_none_of_them(svc: Any) -> None:
    server = svc.server(services=False)
    assert [d.name for d in server.descriptors] == ["info"]
    with pytest.raises(RpcException) as info:
        svc.client(server.port).config.get(ConfigFilter())
    assert info.value.status == grpc.StatusCode.UNIMPLEMENTED
