# Fresh Debian/Ubuntu machine, as root:  make demo   |   make test
# Every target is idempotent: setup installs only what is missing.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
KREL := $(shell uname -r)

.PHONY: setup demo test unit integration bench bench-https bench-connections bench-redis bench-pipeline lint clean

setup: .setup-stamp

.setup-stamp: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	bash scripts/mount-tracefs.sh
	$(VENV)/bin/pytest -q -ra tests

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	bash scripts/mount-tracefs.sh
	$(VENV)/bin/pytest -q -ra tests/integration

bench: setup
	$(PY) bench/nginx_http.py

bench-https: setup
	$(PY) bench/nginx_http.py --tls

bench-connections: setup
	$(PY) bench/connection_churn.py

bench-redis: setup
	$(PY) bench/redis_bench.py

bench-pipeline: setup
	$(PY) bench/pipeline_stages.py

lint: setup
	$(VENV)/bin/ruff check otelbpf tests bench scripts

clean:
	rm -rf $(VENV) .setup-stamp
