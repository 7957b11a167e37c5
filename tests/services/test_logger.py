"""Logger service: list, set and reset levels remotely; managers log under grpc_helper.<service>; log files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
import sample_pb2_grpc  # type: ignore[import-not-found]
from sample_service import sample_descriptor

from grpc_helper import BuiltinServices, RpcException, RpcManager
from grpc_helper.api.logger_pb2 import LoggerFilter, LoggerLevel, LoggerLevels
from grpc_helper.config import Config, Folders
from services.test_events import subscribed, take


class Quiet(sample_pb2_grpc.SampleServiceServicer, RpcManager):
    """A manager that does nothing (its service is not called here)."""


def quiet() -> Any:
    return sample_descriptor(Quiet())  # type: ignore[arg-type]


def test_managers_log_under_the_package(svc: Any) -> None:
    server = svc.server([quiet()])
    names = {d.name: d.manager.logger.name for d in server.descriptors if hasattr(d.manager, "logger")}
    assert names["sample"] == "grpc_helper.sample" and names["config"] == "grpc_helper.config"


def test_get_set_reset_levels(svc: Any) -> None:
    server = svc.server([quiet()])
    client = svc.client(server.port)
    changes = subscribed(svc.listen(client, ["logger-changed"]))
    logger = logging.getLogger("grpc_helper.sample")
    before = logger.level
    listed = {i.name for i in client.logger.get(LoggerFilter()).items}
    assert {"root", "grpc_helper.sample", "grpc_helper.events"} <= listed
    (item,) = client.logger.set(LoggerLevels(items=[LoggerLevel(name="grpc_helper.sample", level="debug")])).items
    assert (item.level, item.effective_level, item.changed) == ("DEBUG", "DEBUG", True)
    assert logger.level == logging.DEBUG
    (item,) = client.logger.get(LoggerFilter(names=["grpc_helper.sample"])).items
    assert item.changed
    (item,) = client.logger.reset(LoggerFilter()).items
    assert (item.name, item.changed) == ("grpc_helper.sample", False)
    assert logger.level == before
    told = [dict(e.properties) for e in take(changes, 2)]
    name = "grpc_helper.sample"
    assert told == [{"name": name, "level": "DEBUG"}, {"name": name, "level": logging.getLevelName(before)}]


def test_bad_requests_are_refused(svc: Any) -> None:
    server = svc.server()
    client = svc.client(server.port)
    with pytest.raises(RpcException) as info:
        client.logger.set(LoggerLevels(items=[LoggerLevel(name="root", level="LOUD")]))
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT and "LOUD" in info.value.message
    with pytest.raises(RpcException) as info:  # never creates loggers (they are never freed)
        client.logger.set(LoggerLevels(items=[LoggerLevel(name="no.such.logger", level="INFO")]))
    assert info.value.status == grpc.StatusCode.NOT_FOUND
    assert "no.such.logger" not in logging.root.manager.loggerDict


def test_rolling_files_per_service(svc: Any, tmp_path: Path) -> None:
    config = Config(folders=Folders(workspace=tmp_path), overrides=["rpc-log-files=true"])
    server = svc.server([quiet()], services=BuiltinServices(config))
    sample = next(d.manager for d in server.descriptors if d.name == "sample")
    sample.logger.warning("written to the sample file")
    server.shutdown()  # closes the files
    assert "written to the sample file" in (tmp_path / "logs" / "sample.log").read_text()
    assert (tmp_path / "logs" / "config.log").exists()
    assert not any(isinstance(h, logging.FileHandler) for h in sample.logger.handlers)
