"""Build hooks: generate protobuf/gRPC modules and mypy stubs from ``protos/`` before packaging.

``pip install .``, ``pip install -e .`` and wheel builds all run ``build_py``; ``python setup.py gen_protos``
regenerates in place for development.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import Command, Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

ROOT = Path(__file__).parent.resolve()
PROTOS = ROOT / "protos"


def _plugin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    return f"--plugin={name}={found}"


def generate_protos() -> None:
    from grpc_tools import protoc  # build-time dependency only

    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        _plugin("protoc-gen-mypy"),
        _plugin("protoc-gen-mypy_grpc"),
        *sources,
    ]
    cwd = os.getcwd()
    os.chdir(PROTOS)
    try:
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + ", ".join(sources))
    finally:
        os.chdir(cwd)
    # Ship each .proto beside its generated modules (package data): other languages and downstream protos
    # `import "grpc_helper/api/common.proto"` from the installed package.
    for source in sources:
        target = ROOT / source
        if not target.exists() or target.read_bytes() != (PROTOS / source).read_bytes():
            shutil.copyfile(PROTOS / source, target)


def build_job_exec_helper() -> None:
    """Compile the job runner's exec helper (grpc_helper/jobs/_exec.py, loaded by path: stdlib only) with cc."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_grpc_helper_exec", ROOT / "grpc_helper" / "jobs" / "_exec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.build()
    except module.HelperError as e:
        print(f"WARNING: the job runner cannot start jobs until its exec helper is built: {e}", file=sys.stderr)


class GenProtos(Command):
    description = "generate *_pb2 modules and stubs from protos/"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_protos()


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        build_job_exec_helper()
        super().run()


class WithBinary(Distribution):
    """The package carries the job runner's compiled exec helper: not pure Python."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tag the wheel for the platform it was built on, any Python 3 and no ABI: the exec helper does not link
    against Python."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=WithBinary, cmdclass={"build_py": BuildPy, "gen_protos": GenProtos, "bdist_wheel": PlatformWheel})
