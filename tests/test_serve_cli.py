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
