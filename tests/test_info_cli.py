"""``python -m grpc_helper.info`` against a real server process, and its unreachable case."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from sample_service import sample_descriptor
from test_core_client import free_port

from grpc_helper import BuiltinServices


def info_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grpc_helper.info", *args], capture_output=True, text=True, timeout=timeout)


def test_table_and_json(rpc_server_factory: Any) -> None:
    server = rpc_server_factory([sample_descriptor()])
    table = info_cli("--port", str(server.port))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["SERVICE", "PACKAGE", "VERSION"]
    assert [r.split()[0] for r in rows] == ["info", "sample", *BuiltinServices.STUBS]
    assert rows[1].split()[3:] == ["1", "3", "tests.sample.SampleService"]
    as_json = info_cli("--endpoint", f"127.0.0.1:{server.port}", "--json", "--service", "sample")
    assert json.loads(as_json.stdout) == [
        {
            "name": "sample",
            "package": "grpc-helper",
            "version": server.descriptors[1].version,
            "supported_api_version": 1,
            "current_api_version": 3,
            "full_name": "tests.sample.SampleService",
        }
    ]


def test_unknown_name(rpc_server_factory: Any) -> None:
    server = rpc_server_factory([sample_descriptor()])
    result = info_cli("--port", str(server.port), "--service", "nope")
    assert result.returncode == 4  # NOT_FOUND
    assert result.stderr.startswith("error: unknown service(s): nope")


def test_unreachable_server_one_line_error_within_timeout() -> None:
    start = time.monotonic()
    result = info_cli("--port", str(free_port()), "--timeout", "1")
    assert time.monotonic() - start < 10
    assert result.returncode == 3  # UNREACHABLE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: server 127.0.0.1:") and "unreachable" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_tls_arguments_exit_2() -> None:
    result = info_cli("--cert", "only-a-cert.pem")
    assert result.returncode == 2
    assert "--cert and --key go together" in result.stderr
