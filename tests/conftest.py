"""Shared test set-up: generates the sample service used by the core tests, loads the stack fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
GENERATED = HERE / "generated"


def _generate() -> None:
    from grpc_tools import protoc

    GENERATED.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{HERE / 'protos'}", f"-I{include}", f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}"]
    if protoc.main([*args, *map(str, (HERE / "protos").glob("*.proto"))]) != 0:
        raise RuntimeError("cannot generate the sample service")


# Generate once, in the xdist controller (or a plain run), before workers start and import it.
if "PYTEST_XDIST_WORKER" not in os.environ:
    _generate()
sys.path.insert(0, str(GENERATED))

pytest_plugins = ["stacks"]

# A separate project, built and run by test_downstream.py against the installed package.
collect_ignore = ["downstream"]
