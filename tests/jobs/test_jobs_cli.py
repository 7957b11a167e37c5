"""The CLI end to end: certs init, serve, run, logs -f, ps, kill, errors and exit codes (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpc_helper.jobs import cli

PY = sys.executable  # runs the CLI (jobs_helpers.PY is the interpreter for jobs)


def _cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-m", "grpc_helper.jobs", *args], env=env, capture_output=True, timeout=timeout)


def _keep_ca_key_away(tls_dir: Path) -> None:
    """Where `certs init` keeps the CA key (out of the server's TLS directory), whatever its version."""
    key = tls_dir / "ca.key"
    if key.exists():
        away = tls_dir.with_name(tls_dir.name + "-ca")
        away.mkdir(mode=0o700, exist_ok=True)
        key.rename(away / "ca.key")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """``certs init`` then ``serve`` on 127.0.0.1:0 with defaults from the environment, like a newcomer."""
    env = {**os.environ, "GRPC_HELPER_TLS_DIR": str(tmp_path / "tls"), "GRPC_HELPER_CLIENT": "alice"}
    init = subprocess.run([PY, "-m", "grpc_helper.certs", "init", "--client", "alice", "--admin", "root"],
                          env=env, capture_output=True, timeout=30)
    assert init.returncode == 0, init.stderr
    _keep_ca_key_away(tmp_path / "tls")
    server = subprocess.Popen(
        [PY, "-m", "grpc_helper.jobs", "serve", "--endpoint", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        port = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        assert port, line
        env["GRPC_HELPER_JOBS_ENDPOINT"] = f"127.0.0.1:{port.group(1)}"
        yield env, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def test_cli_end_to_end(served):
    env, server = served
    r = _cli("run", "--", "sh", "-c", "echo out; printf 'e\\377' >&2; read x < /dev/null; sleep 0.2; echo end", env=env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.decode().strip()
    logs = _cli("logs", "-f", job_id, env=env)  # ends when the job ends
    assert logs.returncode == 0 and logs.stdout == b"out\nend\n" and logs.stderr == b"e\xff"
    ps = _cli("ps", job_id, env=env)
    assert ps.returncode == 0 and ps.stdout.decode().strip() == "EXITED code=0"
    table = _cli("ps", env=env).stdout.decode()
    assert job_id in table and "alice" in table
    listed = json.loads(_cli("ps", "--json", env=env).stdout)
    assert [j["job_id"] for j in listed] == [job_id] and listed[0]["state"] == "JOB_EXITED"
    r = _cli("run", "--json", "--", "sleep", "60", env=env)
    sleeper = json.loads(r.stdout)["job_id"]
    kill = _cli("kill", "--grace", "1", sleeper, env=env)
    assert kill.returncode == 0 and "KILLED signal=SIGTERM by user" in kill.stdout.decode()
    again = _cli("kill", sleeper, env=env)
    assert again.returncode == 0 and "already ended" in again.stdout.decode()
    admin = json.loads(_cli("ps", "--json", "--name", "root", env=env).stdout)
    assert len(admin) == 2
    # Errors: one line, distinct exit codes.
    missing = _cli("run", "--", "no-such-binary", env=env)
    assert missing.returncode == cli.EXIT_FAILED_TO_START and b"No such file" in missing.stderr
    unknown = _cli("ps", "01a21033-8cba-714e-9532-9b3644660c61", env=env)
    assert unknown.returncode == cli.EXIT_NOT_FOUND and unknown.stderr.count(b"\n") == 1
    assert _cli("ps", "bad-id", env=env).returncode == cli.EXIT_INVALID
    refused = _cli("run", "--memory", "1k", "--", "true", env=env)
    assert refused.returncode == cli.EXIT_INVALID
    nocert = _cli("ps", "--name", "nobody", env=env)
    assert nocert.returncode == cli.EXIT_DENIED and b"certs init" in nocert.stderr
    down = _cli("ps", "--endpoint", "127.0.0.1:1", "--timeout", "0.5", env=env)
    assert down.returncode == cli.EXIT_UNAVAILABLE
    # SIGTERM: clean shutdown, running jobs stopped.
    r = _cli("run", "--", "sleep", "60", env=env)
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_cli_helpers():
    assert cli.parse_size("64M") == 64 << 20 and cli.parse_size("1.5k") == 1536 and cli.parse_size("10") == 10
    assert cli.parse_endpoint("[::1]:50051") == ("::1", 50051)
    with pytest.raises(cli.CliError):
        cli.parse_endpoint("nope")
