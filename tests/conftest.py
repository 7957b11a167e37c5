"""Shared test set-up: generates the sample service used by the core tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GENERATED = HERE / "generated"


def _generate() -> None:
    from grpc_tools import protoc

    GENERATED.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{HERE / 'protos'}", f"-I{include}", f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}"]
    if protoc.main([*args, *map(str, (HERE / "protos").glob("*.proto"))]) != 0:
        raise RuntimeError("cannot generate the sample service")


def pytest_configure(config: pytest.Config) -> None:
    # Generate once, in the controller, before xdist workers start and import it.
    if not hasattr(config, "workerinput"):
        _generate()
    sys.path.insert(0, str(GENERATED))
