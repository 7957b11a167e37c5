"""``python -m grpc_helper serve``: serves until SIGINT/SIGTERM, then stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sample_service import wait_until
from test_info_cli import info_cli


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_until_signal(tmp_path: Path, signum: int) -> None:
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper", "serve", "--insecure", "--port", "0", "--port-file", str(port_file),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: port_file.exists() and port_file.read_text().strip() != "", timeout=30)
        result = info_cli("--port", port_file.read_text().strip(), "--json")
        assert result.returncode == 0, result.stderr
        assert "info" in result.stdout and "jobs" in result.stdout
        server.send_signal(signum)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert server.returncode == 0, err
    assert out.splitlines()[-1] == "stopped"


def test_serve_over_mtls_enforces_roles(tmp_path: Path) -> None:
    """The combined server (asyncio) over mTLS: a client may use the services, only admins may control them."""
    from grpc_helper import BuiltinServices, ResultCode, RpcClient, RpcException, certs
    from grpc_helper.api import server_pb2
    from grpc_helper.grid.api import grid_pb2, grid_pb2_grpc

    tls = tmp_path / "tls"
    certs.init(tls, clients=["alice"], admins=["root"])
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper", "serve", "--port", "0", "--port-file", str(port_file), "--tls-dir",
         str(tls), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stubs = {**BuiltinServices.STUBS, "grid": (grid_pb2_grpc.GridControllerServiceStub, grid_pb2.GRID_API_CURRENT)}

    def client(name: str) -> RpcClient:
        port = int(port_file.read_text())
        return RpcClient("localhost", port, stubs, credentials=certs.channel_credentials(tls, name), timeout=10)

    try:
        assert wait_until(lambda: port_file.exists() and port_file.read_text().strip() != "", timeout=30)
        with client("alice") as alice, client("root") as root:
            assert alice.grid.status(grid_pb2.StatusRequest()) is not None  # reads: any authenticated caller
            for call in (lambda: alice.grid.shutdown_server(grid_pb2.ShutdownRequest()),
                         lambda: alice.server.shutdown(server_pb2.ShutdownRequest())):
                with pytest.raises(RpcException) as caught:
                    call()
                assert caught.value.rc == ResultCode.ERROR_PERMISSION_DENIED
            root.server.shutdown(server_pb2.ShutdownRequest())  # an admin may
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert server.returncode == 0, err
    assert out.splitlines()[-1] == "stopped"
