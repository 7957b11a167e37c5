"""The public names of the client-side packages are pinned; their internals live in private modules."""

from __future__ import annotations

import importlib

import pytest

PINNED = {
    "grpc_helper.client": {"RpcClient"},
    "grpc_helper.aio.client": {"AsyncRpcClient"},
    "grpc_helper.certs": {
        "DEFAULT_DIR", "CertificateError", "TlsFiles", "admins_of", "channel_credentials", "default_ca_dir", "default_client",
        "default_dir", "init", "server_credentials",
    },
    "grpc_helper.info": {"InfoManager", "info_descriptor", "service_info"},
    "grpc_helper.testing": {
        "AsyncClientFactory", "AsyncServerFactory", "ClientFactory", "ServerFactory", "default_stubs", "rpc_client_factory",
        "rpc_dump_folder", "rpc_server_factory",
    },
}


@pytest.mark.parametrize("module", sorted(PINNED))
def test_all_is_pinned(module: str) -> None:
    loaded = importlib.import_module(module)
    assert set(loaded.__all__) == PINNED[module] and len(loaded.__all__) == len(set(loaded.__all__))
    for name in loaded.__all__:
        assert getattr(loaded, name) is not None


def test_client_internals_are_private() -> None:
    from grpc_helper._client import core, retry

    for owner, names in ((core, ("ClientCore", "stub_methods", "Service", "target")), (retry, ("RetryPolicy", "CallPlan"))):
        for name in names:
            assert getattr(owner, name).__module__ == owner.__name__, name  # defined there, nowhere public
