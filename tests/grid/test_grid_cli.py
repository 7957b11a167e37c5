"""Grid CLI errors: one clear line and a distinct exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys

from grpc_helper._cli.exits import ExitCode

from .conftest import ALICE, GridServer


def grid_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grpc_helper.grid", *args], capture_output=True, text=True, timeout=60)


def test_unknown_handler_is_one_line_error() -> None:
    result = grid_cli("worker", "--insecure", "--endpoint", "127.0.0.1:1", "--service", "s", "--version", "1", "no_such.module:f")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: cannot load handler 'no_such.module:f': No module named 'no_such'"


def test_submit_without_worker_reports_missing_results(grid_server: GridServer) -> None:
    result = grid_server.cli("submit", "--service", "nobody", "--version", "1", "--timeout", "0.5", "hello", "world",
                             name=ALICE)
    assert result.returncode == ExitCode.TASK_FAILED
    session, first, second = result.stdout.splitlines()
    assert session.startswith("session ")
    assert first.endswith(": no result within 0.5s (cancelled; is a worker serving nobody/1?)")
    assert second.endswith(": no result within 0.5s (cancelled; is a worker serving nobody/1?)")
    assert "Traceback" not in result.stderr
    # What the command gave up on is cancelled: nothing of it stays held by the server.
    grid_server.wait(lambda s: s["counters"]["cancelled"] == 2 and s["held"]["jobs"] == 0 and not s["queues"])
