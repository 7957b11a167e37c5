#!/usr/bin/env bash
# Does grpc-helper work with the oldest versions its setup.cfg allows? Builds the wheel, installs it with
# exactly the declared floors (grpcio==1.85.1, protobuf==7.35.1, ...) in a fresh virtualenv, checks the
# dependency set is consistent and imports every module (generated code included: it refuses an older grpcio).
#     bash tools/check_floors.sh        (~1 min; needs the package registry)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d /tmp/grpc-helper-floors.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . >/dev/null
floors=$("$PY" - <<'PY'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].split("\n"):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line)
    if m:
        print(f"{m.group(1)}=={m.group(2)}")
PY
)
echo "floors: $(echo $floors)"
"$PY" - "$work"/dist/*.whl <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = {"grpc_helper/api/common.proto", "grpc_helper/api/info.proto", "grpc_helper/py.typed", "grpc_helper/api/common_pb2.pyi"}
missing = needed - names
assert not missing, f"the wheel lacks {sorted(missing)}"
print(f"wheel ships {sum(n.endswith('.proto') for n in names)} .proto files, the stubs and py.typed")
PY
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q $floors 2>&1 | grep -v "^WARNING: Location" || true
"$work/venv/bin/pip" install -q --no-deps "$work"/dist/*.whl 2>&1 | grep -v "^WARNING: Location" || true
"$work/venv/bin/pip" check
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib, pkgutil, grpc, google.protobuf
import grpc_helper
skip = {"grpc_helper.testing", "grpc_helper.grid._redis", "grpc_helper.grid._redis_consumer"}  # need the `testing` (pytest) and `redis` extras
names = [m.name for m in pkgutil.walk_packages(grpc_helper.__path__, "grpc_helper.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
print(f"ok: {len(names)} modules import with grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")
PY
