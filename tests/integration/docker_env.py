"""A Docker engine and a tiny Python image for integration tests that run real containers.

Shared by the suites that need Docker (container metadata here, packaging elsewhere). Images cannot
be pulled on the development machines: the base, debian:bookworm-slim, comes from
scripts/base-image.sh, and the Python image is built on it once and kept (apt works with host
networking).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "debian:bookworm-slim"
PYTHON_IMAGE = "otelbpf-test-python"
PYTHON_IMAGE_TAG = f"{PYTHON_IMAGE}:latest"
# Bumped when the recipe changes, so that an image left by an older recipe is rebuilt.
_RECIPE = "2"
# python3-minimal alone lacks http.server (it is in libpython3.11-stdlib, which python3 pulls in).
_PYTHON_DOCKERFILE = f"""FROM {BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends python3 \\
    && rm -rf /var/lib/apt/lists/*
LABEL otelbpf.test-recipe={_RECIPE}
"""


def docker(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the docker CLI; fail the test with its stderr when ``check`` and it fails."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def inspect(name: str) -> dict:
    """``docker inspect`` of one container."""
    return json.loads(docker("inspect", name).stdout)[0]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers (scripts/docker-engine.sh starts Debian's dockerd when none runs)."""
    res = subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"no Docker engine: {res.stderr.strip()}")


@pytest.fixture(scope="session")
def python_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``otelbpf-test-python:latest``: debian:bookworm-slim with python3, built only if missing or outdated."""
    label = '{{index .Config.Labels "otelbpf.test-recipe"}}'
    have = docker("image", "inspect", "-f", label, PYTHON_IMAGE_TAG, check=False)
    if have.returncode == 0 and have.stdout.strip() == _RECIPE:
        return PYTHON_IMAGE_TAG
    res = subprocess.run(["bash", str(REPO / "scripts" / "base-image.sh")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"no {BASE_IMAGE} image: {res.stderr.strip()}")
    ctx = tmp_path_factory.mktemp("python-image")
    (ctx / "Dockerfile").write_text(_PYTHON_DOCKERFILE)
    docker("build", "--network", "host", "-q", "-t", PYTHON_IMAGE_TAG, str(ctx), timeout=900.0)
    return PYTHON_IMAGE_TAG


def container_name(prefix: str = "otelbpf-test") -> str:
    """A fresh container name, so that parallel or leftover runs never collide."""
    return f"{prefix}-{secrets.token_hex(4)}"


RunContainer = Callable[..., str]


@pytest.fixture
def run_container(docker_engine: None) -> Iterator[RunContainer]:
    """Factory: ``docker run -d --rm --network host --name NAME [options] IMAGE CMD...``; returns the full id.

    Every container started is removed at teardown (``docker rm -f``), whatever the test did.
    """
    names: list[str] = []

    def start(name: str, image: str, *cmd: str, options: tuple[str, ...] = ()) -> str:
        names.append(name)
        res = docker("run", "-d", "--rm", "--network", "host", "--name", name, *options, image, *cmd)
        return res.stdout.strip()

    try:
        yield start
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)


def wait_listening(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port} after {timeout}s")
