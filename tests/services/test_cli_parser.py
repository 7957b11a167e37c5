"""RpcCliParser: a downstream server program's command line, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpc_helper import BuiltinServices, ResultCode, RpcClient, RpcCliParser, RpcException, certs
from grpc_helper.api.config_pb2 import ConfigFilter
from grpc_helper.api.server_pb2 import ShutdownRequest
from grpc_helper.events import EventListener
from services.conftest import ADMIN
from services.sample_program import ProgramConfig

PROGRAM = Path(__file__).parent / "sample_program.py"


def program(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLE_")}
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    process = program(*args, env=env)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def folders(tmp_path: Path) -> list[str]:
    return ["--system", str(tmp_path / "system"), "--user", str(tmp_path / "user"), "--workspace", str(tmp_path / "ws")]


def test_version() -> None:
    done = finished("--version")
    assert done.returncode == 0 and done.stdout.startswith("sample-program 4.5.6 (grpc-helper ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "sample-count=0"], "sample-count: invalid value '0': expected an integer above 0 (from command line)"),
        (["-c", "nope=1"], "unknown config item 'nope'"),
        (["-c", "sample-count"], "expected name=value"),
    ],
)
def test_bad_configuration_exits_2_with_the_reason(tmp_path: Path, args: list[str], message: str) -> None:
    done = finished(*folders(tmp_path), "--port", "0", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_bad_environment_default_exits_2(tmp_path: Path) -> None:
    done = finished(*folders(tmp_path), "--port", "0", env={"SAMPLE_MODE": "slow"})
    assert done.returncode == 2 and "sample-mode" in done.stderr and "env SAMPLE_MODE" in done.stderr


def test_serves_layered_config_over_mtls_until_shutdown(tmp_path: Path, tls: Path) -> None:
    (tmp_path / "system").mkdir()
    (tmp_path / "system" / "config.json").write_text(json.dumps({"sample-mode": "safe", "sample-count": 4}))
    port_file = tmp_path / "port"
    process = program(
        *folders(tmp_path), "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--tls-dir", str(tls),
        "-c", "sample-count=5", "-c", "rpc-shutdown-grace=1", "-c", "rpc-max-streams=1", env={"SAMPLE_COUNT": "9"},
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():  # the program writes it once serving
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(port_file.read_text())
        credentials = certs.channel_credentials(tls, ADMIN)
        with RpcClient("127.0.0.1", port, BuiltinServices.STUBS, credentials=credentials, timeout=10) as client:
            items = {i.name: (i.value, i.origin) for i in client.config.get(ConfigFilter()).items}
            assert items["sample-count"] == ("5", "command line")
            assert items["sample-mode"] == ("safe", "system")
            assert items["rpc-shutdown-grace"] == ("1", "command line")
            listener = EventListener(client).items()
            assert next(listener) is None  # one stream open: the quota from rpc-max-streams is full
            with pytest.raises(RpcException) as info:
                next(EventListener(client).items())
            assert info.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED
            listener.close()
            client.server.shutdown(ShutdownRequest(delay=0))
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_builds_an_asyncio_server(tmp_path: Path, tls: Path) -> None:
    cli = RpcCliParser("sample-async", "1.0", holders=[ProgramConfig])
    args = cli.parse([*folders(tmp_path), "--host", "127.0.0.1", "--port", "0", "--tls-dir", str(tls), "-c", "rpc-max-streams=3"], {})

    async def main() -> None:
        server = cli.async_server(args, lambda services: [])
        async with server:
            (item,) = (await server.auto_client.config.get(ConfigFilter(names=["rpc-max-streams"]))).items
            assert (item.value, item.origin) == ("3", "command line")
            await server.auto_client.server.shutdown(ShutdownRequest(delay=0))  # the auto-client is an admin
            assert await server.wait_shutdown(30)

    asyncio.run(main())
