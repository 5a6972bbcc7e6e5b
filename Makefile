# Fresh Debian/Ubuntu machine, as root:  make demo   |   make test
# Every target is idempotent: setup installs only what is missing.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
KREL := $(shell uname -r)

.PHONY: setup demo test unit integration bench bench-https bench-connections bench-redis bench-pipeline lint image clean

setup: .setup-stamp

.setup-stamp: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	bash scripts/mount-tracefs.sh
	$(VENV)/bin/pytest -q -ra --durations=15 tests

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

# The container image otelbpf:latest; needs Docker only (no venv). A host's extra CA certificates (a proxy
# in front of PyPI) reach the build's pip through .image-ca, removed again after the build.
IMAGE := otelbpf:latest
image:
	bash scripts/docker-engine.sh >/dev/null
	bash scripts/base-image.sh
	rm -rf .image-ca && mkdir .image-ca && { cp /usr/local/share/ca-certificates/*.crt .image-ca/ 2>/dev/null || true; }
	docker build --network host -t $(IMAGE) \
	  --build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
	  --build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) . ; \
	  rc=$$?; rm -rf .image-ca; exit $$rc

lint: setup
	$(VENV)/bin/ruff check otelbpf tests bench scripts

clean:
	rm -rf $(VENV) .setup-stamp
