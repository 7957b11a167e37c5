"""The public API is pinned: each name exported once, importable, typed; the pytest plugin is registered."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest

import grpc_helper

PUBLIC = {
    "Access", "BuiltinServices", "CallLimits", "Identity", "ResultCode", "RpcClient", "RpcException", "RpcManager", "RpcServer",
    "RpcServiceDescriptor", "RpcCliParser", "__version__", "current_identity",
}
PUBLIC_AIO = {"AsyncRpcClient", "AsyncRpcManager", "AsyncRpcServer"}


def test_all_is_pinned() -> None:
    assert set(grpc_helper.__all__) == PUBLIC | PUBLIC_AIO
    assert len(grpc_helper.__all__) == len(set(grpc_helper.__all__))
    for name in grpc_helper.__all__:
        assert getattr(grpc_helper, name) is not None


def test_aio_all_is_pinned() -> None:
    import grpc_helper.aio

    assert sorted(grpc_helper.aio.__all__) == sorted(PUBLIC_AIO)


SERVICE_PACKAGES = {
    "grid": {
        "AsyncGridClient", "AsyncJobHandle", "Grid", "GridClient", "GridController", "GridLimits", "GridWorker",
        "JobError", "JobHandle", "__version__", "descriptors",
    },
    "jobs": {"JobsLimits", "__title__", "__version__", "default_state_dir", "descriptor"},
    "certs": {
        "CertificateError", "DEFAULT_DIR", "TlsFiles", "admins_of", "channel_credentials", "default_ca_dir",
        "default_client", "default_dir", "init", "server_credentials",
    },
    "info": {"InfoManager", "info_descriptor", "service_info"},
    "statedir": {"StateDirBusy", "StateDirLock"},
    "testing": {
        "AsyncClientFactory", "AsyncServerFactory", "ClientFactory", "ServerFactory", "default_stubs",
        "rpc_client_factory", "rpc_dump_folder", "rpc_server_factory",
    },
    "config": {"Config", "ConfigError", "ConfigItem", "ConfigManager", "CoreConfig", "Folders", "Kind"},
    "events": {"AsyncEventListener", "AsyncEventsManager", "EventListener", "Events", "EventsManager"},
    "logger": {"LogFiles", "LoggerManager", "service_logger"},
    "server_service": {"MAX_DELAY", "ServerManager"},
}


@pytest.mark.parametrize("package", sorted(SERVICE_PACKAGES))
def test_service_packages_all_is_pinned(package: str) -> None:
    module = importlib.import_module(f"grpc_helper.{package}")
    assert set(module.__all__) == SERVICE_PACKAGES[package] and len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_internals_are_private() -> None:
    """Internals live in ``_private`` modules: the public-looking module names are the documented ones."""
    root = Path(grpc_helper.__file__).parent
    public = sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))
    assert public == ["client", "descriptor", "errors", "manager", "metadata", "server", "statedir", "testing"]


def test_package_is_typed_and_has_stubs() -> None:
    root = Path(grpc_helper.__file__).parent
    assert (root / "py.typed").exists()
    assert (root / "api" / "common_pb2.pyi").exists() and (root / "api" / "info_pb2_grpc.pyi").exists()


def test_pytest_plugin_registered(pytestconfig: pytest.Config) -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.value == "grpc_helper.testing" for ep in entry_points)
    assert pytestconfig.pluginmanager.hasplugin("grpc_helper")


def test_plugin_has_async_fixtures(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.getplugin("grpc_helper")
    assert plugin is not None
    assert {"async_rpc_server_factory", "async_rpc_client_factory"} <= set(vars(plugin))
