"""The CLI end to end: certs init, serve, run, logs -f, ps, kill, errors and exit codes (real processes)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpc_helper._cli.exits import ExitCode
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
    assert missing.returncode == ExitCode.TASK_FAILED and b"No such file" in missing.stderr
    unknown = _cli("ps", "01a21033-8cba-714e-9532-9b3644660c61", env=env)
    assert unknown.returncode == ExitCode.NOT_FOUND and unknown.stderr.count(b"\n") == 1
    assert _cli("ps", "bad-id", env=env).returncode == ExitCode.INVALID
    refused = _cli("run", "--memory", "1k", "--", "true", env=env)
    assert refused.returncode == ExitCode.INVALID
    nocert = _cli("ps", "--name", "nobody", env=env)
    assert nocert.returncode == ExitCode.CERTIFICATE and b"nobody" in nocert.stderr
    down = _cli("ps", "--endpoint", "127.0.0.1:1", "--timeout", "0.5", env=env)
    assert down.returncode == ExitCode.UNREACHABLE
    # SIGTERM: clean shutdown, running jobs stopped.
    r = _cli("run", "--", "sleep", "60", env=env)
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_cli_helpers():
    assert cli.parse_size("64M") == 64 << 20 and cli.parse_size("1.5k") == 1536 and cli.parse_size("10") == 10
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(f"{1 << 64}")


def _serve(env: dict[str, str], state: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-m", "grpc_helper.jobs", "serve", "--state-dir", str(state), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _banner_port(server: subprocess.Popen[bytes], host: str) -> int:
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    port = re.search(rf"serving on {re.escape(host)}:(\d+)", line)
    assert port, line
    return int(port.group(1))


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    server.wait(30)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--pids", "-1", "--", "true"], ["run", "--pids", "4294967296", "--", "true"],
        ["run", "--memory", "99999999T", "--", "true"], ["run", "--cpus", "nan", "--", "true"],
        ["run", "--cpus", "-1", "--", "true"], ["run", "--io-read", "lots", "--", "true"],
        ["run", "--timeout", "0", "--", "true"], ["kill", "--grace", "inf", "x"], ["ps", "--limit", "0"],
        ["ps", "--state", "nope"], ["ps", "--endpoint", "[::1:5"], ["serve", "--keep", "0d"],
        ["serve", "--max-log", "-1"], ["serve", "--max-running", "1.5"],
    ],
)
def test_cli_options_out_of_range_are_one_line_errors(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    err = capsys.readouterr().err
    assert info.value.code == ExitCode.USAGE and err.count("\n") == 1 and err.startswith("error:"), err


def test_cli_ps_pages_filters_and_shows_the_most_recent(served):
    env, _ = served
    ids = [_cli("run", "--", "true", env=env).stdout.decode().strip() for _ in range(5)]
    sleeper = _cli("run", "--", "sleep", "60", env=env).stdout.decode().strip()
    recent = _cli("ps", "--limit", "2", "--json", env=env)
    assert [j["job_id"] for j in json.loads(recent.stdout)] == [ids[-1], sleeper]
    assert b"--all" in recent.stderr  # says that there is more
    everything = json.loads(_cli("ps", "--all", "--json", env=env).stdout)
    assert [j["job_id"] for j in everything] == [*ids, sleeper]
    running = json.loads(_cli("ps", "--state", "running", "--json", env=env).stdout)
    assert [j["job_id"] for j in running] == [sleeper]
    denied = _cli("ps", "--owner", "root", env=env)
    assert denied.returncode == ExitCode.DENIED and denied.stderr.count(b"\n") == 1
    admin = json.loads(_cli("ps", "--owner", "alice", "--name", "root", "--json", env=env).stdout)
    assert len(admin) == 6


def test_second_serve_on_the_same_state_dir_is_refused_naming_the_first(served, tmp_path: Path):
    env, first = served
    second = _serve(env, tmp_path / "state", "--endpoint", "127.0.0.1:0")
    assert second.wait(30) == ExitCode.CONFLICT
    assert second.stderr is not None
    err = second.stderr.read().decode()
    assert f"in use by another jobs server (pid {first.pid})" in err and "Traceback" not in err
    assert first.poll() is None


def test_serve_refuses_a_readable_ca_key_beside_its_credentials(tmp_path: Path):
    env = {**os.environ, "GRPC_HELPER_TLS_DIR": str(tmp_path / "tls")}
    from grpc_helper import certs as tls

    tls.init(tmp_path / "tls", ["alice"])
    key = tmp_path / "tls" / "ca.key"
    if not key.exists():  # `certs init` keeps it elsewhere: put one where it must not be
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    refused = _serve(env, tmp_path / "state", "--endpoint", "127.0.0.1:0")
    assert refused.wait(30) == ExitCode.CERTIFICATE
    assert refused.stderr is not None
    err = refused.stderr.read().decode()
    assert str(key) in err and "mint" in err and err.count("\n") == 1
    forced = _serve(env, tmp_path / "state", "--endpoint", "127.0.0.1:0", "--allow-ca-key")
    try:
        _banner_port(forced, "127.0.0.1")
    finally:
        _stop(forced)
    assert forced.stderr is not None and b"WARNING" in forced.stderr.read()


def test_serve_binds_ipv6_literals(tmp_path: Path):
    env = {**os.environ, "GRPC_HELPER_TLS_DIR": str(tmp_path / "tls"), "GRPC_HELPER_CLIENT": "alice"}
    from grpc_helper import certs as tls

    tls.init(tmp_path / "tls", ["alice"])
    _keep_ca_key_away(tmp_path / "tls")
    for host in ("[::1]", "[::]"):
        server = _serve(env, tmp_path / f"state{len(host)}", "--endpoint", f"{host}:0")
        try:
            port = _banner_port(server, host)
            r = _cli("run", "--endpoint", f"[::1]:{port}", "--", "echo", "v6", env=env)
            assert r.returncode == 0, r.stderr
            logs = _cli("logs", "-f", "--endpoint", f"[::1]:{port}", r.stdout.decode().strip(), env=env)
            assert logs.stdout == b"v6\n"
        finally:
            _stop(server)
