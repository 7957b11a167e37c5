"""A downstream project (tests/downstream: kvstore) built against the installed grpc-helper: its proto imports
``grpc_helper/api/common.proto`` from the package, its typed client and the README's example pass ``mypy --strict`` (and
mypy catches a wrong request type), and its own tests run on the pytest plugin's fixtures (sync and asyncio)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from grpc_tools import protoc

import grpc_helper

SOURCE = Path(__file__).parent / "downstream"
BIN = Path(sys.executable).parent


def _installed_root() -> Path:
    """The directory holding the installed ``grpc_helper`` package (its .proto files and stubs)."""
    return Path(grpc_helper.__file__).parent.parent


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MYPY"))}
    env["PYTHONPATH"] = str(project)
    root = _installed_root()
    if root != Path(sysconfig.get_path("purelib")):  # an editable install: show mypy where the package is
        env["MYPYPATH"] = str(root)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("downstream") / "kvstore"
    shutil.copytree(SOURCE, project)
    args = [
        "protoc",
        f"-I{project / 'protos'}",
        f"-I{_installed_root()}",  # import "grpc_helper/api/common.proto" from the installed package
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={project}",
        f"--grpc_python_out={project}",
        f"--mypy_out={project}",
        f"--mypy_grpc_out={project}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        "kvstore/api/kv.proto",
        "my_package/api/my.proto",
    ]
    assert protoc.main(args) == 0
    # The README's example, verbatim, type-checked with the project (my_package is its service).
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## In your code", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (project / "readme_example.py").write_text(example)
    return project


def _mypy(project: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(project.parent / ".mypy_cache"), *targets],
        cwd=project, env=_env(project), capture_output=True, text=True, timeout=240,
    )


def test_typed_client_passes_mypy_strict(project: Path) -> None:
    result = _mypy(project, "kvstore", "my_package", "readme_example.py", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_catches_wrong_types_through_the_typed_stub(project: Path) -> None:
    (project / "kvstore" / "wrong.py").write_text(
        "from grpc_helper import AsyncRpcClient, RpcClient\n"
        "from kvstore.api.kv_pb2 import Item, Key\n"
        "from kvstore.api.kv_pb2_grpc import KvServiceStub\n"
        "def sync_wrong(client: RpcClient) -> int:\n"
        "    return client.stub(KvServiceStub).get(Item()).value\n"
        "async def async_wrong(client: AsyncRpcClient) -> Key:\n"
        "    return await client.stub(KvServiceStub).get(Key())\n"
    )
    try:
        result = _mypy(project, "kvstore/wrong.py")
    finally:
        (project / "kvstore" / "wrong.py").unlink()
    out = result.stdout
    assert result.returncode == 1, out
    assert 'has incompatible type "Item"; expected "Key"' in out
    assert 'Incompatible return value type (got "str", expected "int")' in out
    assert 'Incompatible return value type (got "Item", expected "Key")' in out


def test_downstream_tests_run_on_the_plugin(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, env=_env(project), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
