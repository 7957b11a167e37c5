"""Packaging: dependency floors agree with the generated code, declared dependencies match imports, the .proto
files ship in the package, console script and pytest plugin are declared. (tools/check_floors.sh installs the
floors in a fresh virtualenv and imports everything.)"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import grpc_helper

ROOT = Path(__file__).parents[1]
PACKAGE = Path(grpc_helper.__file__).parent


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(text: str) -> dict[str, str]:
    """``{normalized name: floor}`` of a requirements block."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9.]*))?", line)
        if m and m.group(1):
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2) or ""
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_floors_are_what_the_generated_code_requires() -> None:
    floors = _requirements(_cfg()["options"]["install_requires"])
    grpc_versions = set()
    protobuf_versions = set()
    for module in PACKAGE.rglob("*_pb2_grpc.py"):
        grpc_versions.add(re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", module.read_text()).group(1))  # type: ignore[union-attr]
    for module in PACKAGE.rglob("*_pb2.py"):
        protobuf_versions.add(re.search(r"# Protobuf Python Version: ([0-9.]+)", module.read_text()).group(1))  # type: ignore[union-attr]
    assert len(grpc_versions) == 1 and len(protobuf_versions) == 1  # one generator for every module
    assert floors["grpcio"] == grpc_versions.pop()
    assert floors["protobuf"] == protobuf_versions.pop()
    # The generator is pinned where the code is generated (build and dev environments).
    pinned = re.search(r'"grpcio-tools==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and f"grpcio-tools=={pinned.group(1)}" in _cfg()["options.extras_require"]["dev"]
    assert _version(floors["grpcio"]) >= _version(pinned.group(1))


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0] if node.module.split(".")[0] != "google" else ".".join(node.module.split(".")[:2]))
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("grpc_helper", "__future__")}


def _distribution(module: str) -> str:
    top = module.split(".")[0]
    if top == "google":  # a namespace shared by several distributions
        return {"google.protobuf": "protobuf", "google.rpc": "googleapis-common-protos"}[module]
    dists = importlib.metadata.packages_distributions()[top]
    return re.sub(r"[-_.]+", "-", dists[0]).lower()


#: Extras that enable an optional feature, and the modules allowed to import them (only those, so that the rest
#: of the package imports without the extra installed: see tools/check_floors.sh).
OPTIONAL = {"redis": {"grpc_helper/grid/_redis.py", "grpc_helper/grid/_redis_consumer.py"}}


def _distribution_or_none(module: str) -> str | None:
    """The distribution of ``module``, None when it is not installed (an optional extra left out of this venv)."""
    try:
        return _distribution(module)
    except KeyError:
        return None


def test_declared_dependencies_match_imports() -> None:
    cfg = _cfg()
    extras = cfg["options.extras_require"]
    declared = set(_requirements(cfg["options"]["install_requires"]))
    testing = set(_requirements(extras["testing"]))
    optional = {extra: set(_requirements(extras[extra])) for extra in OPTIONAL}
    used: set[str] = set()
    used_by_plugin: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE.parent))
        imports = _third_party_imports(path)
        extra = next((e for e, modules in OPTIONAL.items() if relative in modules), None)
        if extra is not None:
            dists = {_distribution_or_none(m) or m for m in imports}
            assert dists - declared <= optional[extra], f"{relative} imports {dists - declared - optional[extra]}, not in [{extra}]"
            continue
        dists = {_distribution(m) for m in imports}
        (used_by_plugin if path.name == "testing.py" else used).update(dists)
    assert used == declared, f"imported but not declared: {used - declared}; declared but not imported: {declared - used}"
    assert used_by_plugin - declared <= testing and "pytest-asyncio" in testing
    for extra, dists in optional.items():
        # Each optional extra is also in `dev` (the suite runs its tests), and adds nothing `install_requires` has.
        assert dists <= set(_requirements(extras["dev"])) and not dists & declared, extra


def test_protos_ship_beside_their_modules() -> None:
    sources = sorted(p.relative_to(ROOT / "protos") for p in (ROOT / "protos").rglob("*.proto"))
    assert sources
    for source in sources:
        shipped = PACKAGE.parent / source
        assert shipped.read_bytes() == (ROOT / "protos" / source).read_bytes(), source
    assert "**/*.proto" in _cfg()["options.package_data"]["grpc_helper"]


def test_console_script_and_plugin_declared() -> None:
    entry_points = _cfg()["options.entry_points"]
    assert "grpc-helper = grpc_helper._cli.commands:main" in entry_points["console_scripts"]
    assert "grpc_helper = grpc_helper.testing" in entry_points["pytest11"]
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "grpc-helper" for ep in scripts)


def test_wheel_contents(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import zipfile

    # Built from a copy: the build regenerates modules in its source tree, which other tests are importing.
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", ".tox")
    shutil.copytree(ROOT, source, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("grpc_helper-*.whl")
    # It carries a compiled exec helper (the job runner's): tagged for this platform, any Python 3.
    assert wheel.name.startswith("grpc_helper-") and "-py3-none-linux_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    for source in (ROOT / "protos").rglob("*.proto"):
        assert str(source.relative_to(ROOT / "protos")) in names  # importable by downstream protos
    assert {"grpc_helper/py.typed", "grpc_helper/api/common_pb2.pyi", "grpc_helper/api/info_pb2_grpc.pyi"} <= names
    assert "grpc_helper/jobs/_sandbox_exec" in names
    assert "grpc-helper = grpc_helper._cli.commands:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("googleapis-common-protos" in r for r in requires) and not any("grpcio-status" in r for r in requires)
    assert "Provides-Extra: testing" in metadata and any("pytest-asyncio" in r and "testing" in r for r in requires)
    # Redis is optional: `pip install grpc-helper[redis]` (the grid's Redis Streams backend).
    assert "Provides-Extra: redis" in metadata and any(r.startswith("Requires-Dist: redis") and "extra ==" in r for r in requires)
