"""The shared CLI layer: console script, --version everywhere, endpoint syntax, exit codes, TLS options,
certificate errors, ``certs init``'s layout, ``__main__`` modules that do nothing when imported."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from sample_service import sample_descriptor

import grpc_helper
from grpc_helper import ResultCode, RpcException, certs
from grpc_helper._cli.endpoint import Endpoint, parse_endpoint
from grpc_helper._cli.exits import ExitCode, exit_code

SCRIPT = Path(sysconfig.get_path("scripts")) / "grpc-helper"
COMMANDS = ["info", "serve", "jobs", "grid", "certs"]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:50051", Endpoint("localhost", 50051)),
        ("10.1.2.3:1", Endpoint("10.1.2.3", 1)),
        ("[::1]:50051", Endpoint("::1", 50051)),
        ("[fe80::1%eth0]:7", Endpoint("fe80::1%eth0", 7)),
        ("::1", Endpoint("::1", 50051)),
        ("[::]", Endpoint("::", 50051)),
        ("example.org", Endpoint("example.org", 50051)),
        (":6000", Endpoint("127.0.0.1", 6000)),
        ("host:0", Endpoint("host", 0)),
    ],
)
def test_endpoint_syntax(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["", "[::1", "[::1]x", "[nope]:1", "host:port", "host:70000", "host:-1", "a b:1", "h:1:2x"])
def test_bad_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_endpoint(text)


@pytest.mark.parametrize("text", ["host", "::1", "[::1]", "10.0.0.1"])
def test_port_can_be_required(text: str) -> None:
    parse_endpoint(text)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_endpoint(text, require_port=True)
    assert parse_endpoint("[::1]:7", require_port=True) == Endpoint("::1", 7)
    assert parse_endpoint("h:7", require_port=True) == Endpoint("h", 7)


def test_endpoint_prints_back() -> None:
    assert str(Endpoint("::1", 5)) == "[::1]:5" and str(Endpoint("h", 5)) == "h:5"


def test_exit_codes_are_distinct_and_usage_is_argparse() -> None:
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values))
    assert ExitCode.USAGE == 2 and ExitCode.OK == 0
    assert exit_code(RpcException("x", ResultCode.ERROR_RPC)) == ExitCode.UNREACHABLE
    assert exit_code(RpcException("x", ResultCode.ERROR_DEADLINE)) == ExitCode.UNREACHABLE
    assert exit_code(RpcException("x", ResultCode.ERROR_PERMISSION_DENIED)) == ExitCode.DENIED
    assert exit_code(RpcException("x", 1234)) == ExitCode.ERROR


def test_exit_code_table_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "doc" / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} " in doc and f"`{code.name}`" in doc, code


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_version_everywhere(command: list[str]) -> None:
    result = cli(*command, "--version")
    assert result.returncode == 0, result.stderr
    assert f"grpc-helper {grpc_helper.__version__}" in result.stdout


def test_python_m_forms_kept() -> None:
    for module in ("grpc_helper", "grpc_helper.info", "grpc_helper.certs", "grpc_helper.jobs", "grpc_helper.grid"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (module, result.stderr)
        assert result.stdout.startswith("usage:"), module


def test_unknown_command_is_a_usage_error() -> None:
    result = cli("nope")
    assert result.returncode == ExitCode.USAGE
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("module", ["grpc_helper.__main__", "grpc_helper.info.__main__", "grpc_helper.certs.__main__",
                                    "grpc_helper.jobs.__main__", "grpc_helper.grid.__main__"])
def test_main_modules_do_nothing_when_imported(module: str) -> None:
    importlib.import_module(module)  # would parse pytest's argv and exit if it ran


def test_unreachable_server_same_code_everywhere() -> None:
    info = cli("info", "-e", "[::1]:1", "--timeout", "0.5")
    assert info.returncode == ExitCode.UNREACHABLE, info.stderr
    assert info.stderr.count("\n") == 1 and "unreachable" in info.stderr


def test_ipv6_endpoint_reaches_a_server(rpc_server_factory: object) -> None:
    server = rpc_server_factory([sample_descriptor()], host="[::1]")  # type: ignore[operator]
    result = cli("info", "-e", f"[::1]:{server.port}", "--json")
    assert result.returncode == 0, result.stderr
    assert '"sample"' in result.stdout


# --- certificates ---------------------------------------------------------------------------------------


def test_certs_init_keeps_the_ca_key_out_of_the_tls_dir(tmp_path: Path) -> None:
    result = cli("certs", "init", str(tmp_path / "tls"), "--client", "alice", "--admin", "root")
    assert result.returncode == 0, result.stderr
    tls, ca = tmp_path / "tls", tmp_path / "tls-ca"
    assert sorted(p.name for p in tls.iterdir()) == ["admins", "alice.key", "alice.pem", "ca.pem", "root.key", "root.pem",
                                                     "server.key", "server.pem"]
    assert sorted(p.name for p in ca.iterdir()) == ["ca.key", "ca.pem"]
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tls / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    # Completing the directory later reads the CA again; without it, nothing new can be signed.
    certs.init(tls, clients=["bob"])
    assert (tls / "bob.pem").exists()
    shutil.move(ca, tmp_path / "elsewhere")
    certs.init(tls, clients=["bob"])  # nothing to sign: the CA is not needed
    with pytest.raises(certs.CertificateError, match="CA private key not found"):
        certs.init(tls, clients=["carol"])
    certs.init(tls, clients=["carol"], ca_dir=tmp_path / "elsewhere")
    assert (tls / "carol.pem").exists()


def test_certs_init_moves_a_legacy_ca_key_out(tmp_path: Path) -> None:
    tls = certs.init(tmp_path / "tls", clients=["alice"])
    ca = tmp_path / "tls-ca"
    shutil.move(ca / "ca.key", tls / "ca.key")  # the seed's layout: the key beside the server's credentials
    shutil.rmtree(ca)
    certs.init(tls)
    assert not (tls / "ca.key").exists() and (ca / "ca.key").exists()


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    return certs.init(tmp_path / "tls", clients=["alice", "bob"])


@pytest.mark.parametrize(
    ("args", "culprit", "problem"),
    [
        (["--name", "nobody"], "nobody.pem", "certificate not found"),
        (["--cert", "{tls}/alice.pem", "--key", "{tls}/bob.key"], "alice.pem", "does not match the private key"),
        (["--cert", "{tls}/alice.key", "--key", "{tls}/alice.key"], "alice.key", "not a PEM certificate"),
        (["--name", "alice", "--ca", "{tls}/admins"], "admins", "not a PEM CA certificate"),
        (["--name", "alice", "--ca", "{tls}"], "tls", "this is a directory"),
    ],
)
def test_certificate_errors_name_the_file(tls_dir: Path, args: list[str], culprit: str, problem: str) -> None:
    (tls_dir / "admins").write_text("root\n")
    result = cli("info", "--tls-dir", str(tls_dir), *(a.format(tls=tls_dir) for a in args))
    assert result.returncode == ExitCode.CERTIFICATE, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], lines
    assert lines[0].split(": ")[1].endswith(culprit)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_is_a_certificate_error(tls_dir: Path) -> None:
    (tls_dir / "alice.key").chmod(0)
    result = cli("info", "--tls-dir", str(tls_dir), "--name", "alice")
    assert result.returncode == ExitCode.CERTIFICATE and "alice.key: cannot read private key" in result.stderr


def test_tls_option_conflicts_are_usage_errors(tls_dir: Path) -> None:
    assert cli("info", "--insecure", "--tls-dir", str(tls_dir)).returncode == ExitCode.USAGE
    assert cli("info", "--cert", str(tls_dir / "alice.pem")).returncode == ExitCode.USAGE


def test_info_over_mtls_with_the_tls_dir(tls_dir: Path, rpc_server_factory: object) -> None:
    server = rpc_server_factory(  # type: ignore[operator]
        [],
        credentials=certs.server_credentials(tls_dir),
        client_credentials=certs.channel_credentials(tls_dir, "alice"),
    )
    ok = cli("info", "--port", str(server.port), "--tls-dir", str(tls_dir), "--name", "bob", "--json")
    assert ok.returncode == 0, ok.stderr
    plaintext = cli("info", "--port", str(server.port), "--timeout", "0.5")
    assert plaintext.returncode == ExitCode.UNREACHABLE


def test_serve_on_a_busy_port_exits_port_busy(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--insecure", "--port", str(port), "--state-dir", str(tmp_path / "state"), timeout=60)
    assert result.returncode == ExitCode.PORT_BUSY, result.stderr
    last = result.stderr.splitlines()[-1]  # (grpc core logs its own line before)
    assert last.startswith("error: cannot serve on") and "port busy" in last and "Traceback" not in result.stderr


def test_server_from_another_ca_is_a_certificate_error(tmp_path: Path, rpc_server_factory: object) -> None:
    ours = certs.init(tmp_path / "ours", clients=["alice"])
    theirs = certs.init(tmp_path / "theirs", clients=["alice"])  # another CA
    server = rpc_server_factory(  # type: ignore[operator]
        [], credentials=certs.server_credentials(theirs), client_credentials=certs.channel_credentials(theirs, "alice")
    )
    result = cli("info", "--port", str(server.port), "--tls-dir", str(ours), "--name", "alice", "--timeout", "1")
    assert result.returncode == ExitCode.CERTIFICATE, result.stderr
    last = result.stderr.splitlines()[-1]  # (grpc core logs the handshake failures before)
    assert last.startswith("error: TLS handshake with the server failed: CERTIFICATE_VERIFY_FAILED"), last


@pytest.mark.parametrize("command", [["jobs", "ps"], ["grid", "status"], ["info"]])
def test_bad_endpoint_is_a_usage_error_everywhere(command: list[str]) -> None:
    result = cli(*command, "--endpoint", "[::1")
    assert result.returncode == ExitCode.USAGE
    assert "invalid endpoint '[::1'" in result.stderr and "Traceback" not in result.stderr
