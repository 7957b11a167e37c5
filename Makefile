# Two entry points on a fresh machine with only python3 and make: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?= -n 2

.PHONY: venv demo test lint types pytest proto bench clean

$(STAMP): setup.cfg setup.py pyproject.toml $(PROTOS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Regenerate *_pb2 modules and stubs after editing protos/ (the install does it too).
proto: venv
	$(PY) setup.py -q gen_protos

demo: venv
	PYTHON=$(PY) bash tools/demo.sh

lint: venv
	$(VENV)/bin/ruff check .

types: venv
	$(VENV)/bin/mypy grpc_helper

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint types pytest

bench: venv
	$(PY) bench/core_overhead.py
	$(PY) bench/jobs_logs.py
	$(PY) bench/jobs_spawn.py
	$(PY) bench/jobs_list.py
	$(PY) bench/jobs_followers.py
	$(PY) bench/grid_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info tests/generated
	find . -name '*_pb2*.py*' -not -path './.venv/*' -delete
	find grpc_helper -name '*.proto' -delete
