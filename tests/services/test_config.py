"""Config: items and kinds, layered defaults in their order, remote get/set/reset, persistence, events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_helper import BuiltinServices, ResultCode, RpcException
from grpc_helper.api.config_pb2 import ConfigFilter, ConfigValue, ConfigValues
from grpc_helper.config import Config, ConfigError, ConfigItem, CoreConfig, Folders, Kind
from grpc_helper.events import Events
from services.test_events import subscribed, take


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("expected a port number (1-65535)")
    return value


class Sample:
    NAME = ConfigItem("sample-name", "A name", "world")
    COUNT = ConfigItem("sample-count", "How many", "3", Kind.POSITIVE_INT, user=True)
    RATIO = ConfigItem("sample-ratio", "A ratio", "0.5", Kind.FLOAT, user=True)
    MODE = ConfigItem("sample-mode", "A mode", "fast", Kind.enum("fast", "safe"), user=True)
    DEBUG = ConfigItem("sample-debug", "Debug", "no", Kind.BOOL)
    NOTE = ConfigItem("sample-note", "A note", "", can_be_empty=True, user=True)
    PORT = ConfigItem("sample-port", "A port", "8080", _port, user=True)


def test_items_parse_their_values() -> None:
    config = Config([Sample])
    assert (config[Sample.NAME], config[Sample.COUNT], config[Sample.RATIO]) == ("world", 3, 0.5)
    assert (config[Sample.MODE], config[Sample.DEBUG], config[Sample.NOTE], config[Sample.PORT]) == ("fast", False, "", 8080)
    assert config[CoreConfig.WORKERS] == 64
    assert Sample.PORT.kind.name == "_port" and Sample.MODE.kind.choices == ("fast", "safe")
    with pytest.raises(ValueError, match="invalid config item name"):
        ConfigItem("Bad_Name", "x", "1")


@pytest.mark.parametrize(
    ("item", "text", "reason"),
    [
        (Sample.COUNT, "0", "above 0"),
        (Sample.COUNT, "x", "an integer"),
        (Sample.RATIO, "nan", "finite"),
        (Sample.MODE, "slow", "one of fast, safe"),
        (Sample.DEBUG, "maybe", "true/false"),
        (Sample.NAME, "", "empty"),
        (Sample.PORT, "70000", "port number"),
        (CoreConfig.SEND_TIMEOUT, "0", "above 0"),
        (CoreConfig.SHUTDOWN_GRACE, "-1", "0 or more"),
        (CoreConfig.MAX_CALLS, "-1", "above 0"),
    ],
)
def test_bad_default_stops_with_the_item_layer_and_reason(item: ConfigItem[Any], text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config([Sample], overrides=[f"{item.name}={text}"])
    assert item.name in str(info.value) and reason in str(info.value) and "command line" in str(info.value)


def test_layers_apply_in_order(tmp_path: Path) -> None:
    system, user = tmp_path / "system", tmp_path / "user"
    system.mkdir()
    user.mkdir()
    folders = Folders(system=system, user=user, workspace=tmp_path / "ws")

    def value() -> tuple[int, str]:
        config = Config([Sample], folders=folders, environ=environ, overrides=overrides)
        return config[Sample.COUNT], config.origin("sample-count")

    environ: dict[str, str] = {}
    overrides: list[str] = []
    assert value() == (3, "code")
    (system / "config.json").write_text(json.dumps({"sample-count": 4}))
    assert value() == (4, "system")
    (user / "config.json").write_text(json.dumps({"sample-count": "5"}))
    assert value() == (5, "user")
    environ["SAMPLE_COUNT"] = "6"
    assert value() == (6, "env")
    overrides.append("sample-count=7")
    assert value() == (7, "command line")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "invalid JSON"),
        ("[1]", "JSON object"),
        ('{"nope": 1}', "unknown config item 'nope'"),
        ('{"sample-count": [1]}', "expected a string"),
    ],
)
def test_bad_config_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        Config([Sample], folders=Folders(user=tmp_path))


def test_get_set_reset_remotely_and_persist(svc: Any, tmp_path: Path) -> None:
    folders = Folders(workspace=tmp_path / "ws")
    events = Events()
    server = svc.server(services=BuiltinServices(Config([Sample], folders=folders, overrides=["sample-mode=safe"]), events))
    client = svc.client(server.port)
    (mode,) = client.config.get(ConfigFilter(names=["sample-mode"])).items
    assert (mode.value, mode.default_value, mode.origin, mode.kind, list(mode.choices), mode.user) == (
        "safe", "safe", "command line", "enum", ["fast", "safe"], True
    )
    assert len(client.config.get(ConfigFilter()).items) == len(Config([Sample]).items())
    changes = subscribed(svc.listen(client, ["config-changed"]))
    (changed,) = client.config.set(ConfigValues(items=[ConfigValue(name="sample-mode", value="fast")])).items
    assert (changed.value, changed.origin) == ("fast", "remote")
    event = take(changes, 1)[0]
    assert dict(event.properties) == {"name": "sample-mode", "value": "fast", "origin": "remote"}
    client.config.set(ConfigValues(items=[ConfigValue(name="sample-count", value="9"), ConfigValue(name="sample-note", value="")]))
    assert json.loads((tmp_path / "ws" / "config.json").read_text()) == {"sample-count": "9", "sample-mode": "fast", "sample-note": ""}
    server.shutdown()

    # A new server with the same workspace starts with the values changed remotely.
    config = Config([Sample], folders=folders, overrides=["sample-mode=safe"])
    assert (config[Sample.MODE], config[Sample.COUNT], config.origin("sample-count")) == ("fast", 9, "remote")
    server = svc.server(services=BuiltinServices(config))
    client = svc.client(server.port)
    (reset,) = client.config.reset(ConfigFilter(names=["sample-mode"])).items
    assert (reset.value, reset.origin) == ("safe", "command line")
    assert [i.name for i in client.config.reset(ConfigFilter()).items] == ["sample-count", "sample-note"]
    assert json.loads((tmp_path / "ws" / "config.json").read_text()) == {}


def test_bad_changes_are_refused_with_name_and_reason(svc: Any) -> None:
    config = Config([Sample])
    server = svc.server(services=BuiltinServices(config))
    client = svc.client(server.port)
    cases = [
        ("sample-count", "-1", grpc.StatusCode.INVALID_ARGUMENT, "sample-count: invalid value '-1': expected an integer above 0"),
        ("sample-name", "x", grpc.StatusCode.INVALID_ARGUMENT, "sample-name: static config item"),
        ("rpc-workers", "1", grpc.StatusCode.INVALID_ARGUMENT, "rpc-workers: static config item"),
        ("nope", "1", grpc.StatusCode.NOT_FOUND, "unknown config item: 'nope'"),
        ("sample-note", "x" * 5000, grpc.StatusCode.INVALID_ARGUMENT, "value too long"),
    ]
    for name, value, status, message in cases:
        with pytest.raises(RpcException) as info:
            # all or none: the valid first value is not applied either
            client.config.set(ConfigValues(items=[ConfigValue(name="sample-ratio", value="2"), ConfigValue(name=name, value=value)]))
        assert info.value.status == status and message in info.value.message
    assert config[Sample.RATIO] == 0.5
    with pytest.raises(RpcException) as info:
        client.config.get(ConfigFilter(names=["nope"]))
    assert info.value.rc == ResultCode.ERROR_ITEM_UNKNOWN


def test_unusable_persisted_values_are_ignored(tmp_path: Path) -> None:
    persisted = {"sample-count": "-3", "sample-name": "static", "gone": "1", "sample-ratio": "2"}
    (tmp_path / "config.json").write_text(json.dumps(persisted))
    config = Config([Sample], folders=Folders(workspace=tmp_path))
    assert (config[Sample.COUNT], config[Sample.NAME], config[Sample.RATIO]) == (3, "world", 2.0)


def test_a_value_that_cannot_be_saved_is_not_applied(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # the workspace is under a file: it cannot be created
    config = Config([Sample], folders=Folders(workspace=blocker / "ws"))
    with pytest.raises(RpcException) as info:
        config.set({"sample-count": "8"})
    assert info.value.rc == ResultCode.ERROR_STATE_UNEXPECTED and "cannot save the configuration" in info.value.message
    assert (config[Sample.COUNT], config.origin("sample-count")) == (3, "code")
