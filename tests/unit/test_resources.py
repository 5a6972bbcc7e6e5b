"""A traced process's resource: container and pod attributes, service.name's order, host.name."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from otelbpf.containers import ContainerMetadata, DockerMetadata
from otelbpf.events import ProcessEvent
from otelbpf.kubernetes import KubeletLogs, KubernetesMetadata
from otelbpf.resources import ResourceCache, host_name

ID = "4ecda13203d6d4b8204c92470cbfa8f72ebb68adde04b3d2f07637013a3a5bc9"
CONTAINER_KEYS = ("container.", "k8s.")

Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``python3 tmp/NAME.py`` (it sleeps) with an environment; wait until it has exec'd."""
    procs: list[subprocess.Popen] = []

    def start(name: str = "app", env: dict[str, str] | None = None) -> subprocess.Popen:
        script = tmp_path / f"{name}.py"
        script.write_text("import time\ntime.sleep(60)\n")
        proc = subprocess.Popen([sys.executable, str(script)], env={"PATH": os.environ["PATH"], **(env or {})})
        procs.append(proc)
        deadline = time.monotonic() + 10
        # Before exec, /proc shows the parent's command line and environment.
        while str(script) not in psutil.Process(proc.pid).cmdline():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _in_container(tmp_path: Path, pid: int, labels: dict[str, str] | None = None) -> ContainerMetadata:
    """Container metadata that puts ``pid`` in Docker container ID (a recorded cgroup file, a state dir)."""
    proc = tmp_path / "proc" / str(pid)
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(f"9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n")
    state = tmp_path / "containers" / ID
    state.mkdir(parents=True)
    config = {"ID": ID, "Name": "/shop-api-1", "Image": "sha256:" + "e" * 64}
    config["Config"] = {"Image": "acme/shop-api:1.4", "Labels": labels or {}}
    (state / "config.v2.json").write_text(json.dumps(config))
    return ContainerMetadata(
        DockerMetadata(str(tmp_path / "no.sock"), str(tmp_path / "containers")),
        KubernetesMetadata(KubeletLogs(str(tmp_path / "log"))),
        proc=str(tmp_path / "proc"),
    )


def _attrs(cache: ResourceCache, pid: int) -> dict:
    return dict(cache.get(pid).attributes)


def test_a_host_process_has_no_container_attributes(spawn: Spawn) -> None:
    proc = spawn("app")
    attrs = _attrs(ResourceCache(env={}), proc.pid)
    assert not [k for k in attrs if k.startswith(CONTAINER_KEYS)], attrs
    assert attrs["service.name"] == "app"  # python3 app.py
    assert attrs["host.name"] == socket.gethostname()


def test_a_containerised_process(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn("server")
    attrs = _attrs(ResourceCache(env={}, containers=_in_container(tmp_path, proc.pid)), proc.pid)
    assert attrs["container.id"] == ID
    assert attrs["container.name"] == "shop-api-1"
    assert attrs["container.image.name"] == "acme/shop-api"
    assert attrs["container.image.id"] == "sha256:" + "e" * 64
    assert attrs["container.runtime.name"] == "docker"
    assert not [k for k in attrs if k.startswith("k8s.")]
    assert attrs["service.name"] == "shop-api-1"  # the container's name beats the script's
    assert attrs["process.pid"] == proc.pid


def test_compose_service_beats_the_container_name(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn("server")
    meta = _in_container(tmp_path, proc.pid, {"com.docker.compose.service": "shop-api"})
    assert _attrs(ResourceCache(env={}, containers=meta), proc.pid)["service.name"] == "shop-api"


def test_the_process_own_settings_beat_its_container(spawn: Spawn, tmp_path: Path) -> None:
    labels = {"com.docker.compose.service": "compose-name"}
    proc = spawn("server", {"OTEL_RESOURCE_ATTRIBUTES": "service.name=declared,team=core"})
    attrs = _attrs(ResourceCache(env={}, containers=_in_container(tmp_path, proc.pid, labels)), proc.pid)
    assert (attrs["service.name"], attrs["team"]) == ("declared", "core")
    own = spawn("worker", {"OTEL_SERVICE_NAME": "own", "OTEL_RESOURCE_ATTRIBUTES": "service.name=declared"})
    meta = ContainerMetadata(proc=str(tmp_path / "nothing"))
    assert _attrs(ResourceCache(env={}, containers=meta), own.pid)["service.name"] == "own"


def test_otelbpf_own_settings_beat_everything(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn("server", {"OTEL_SERVICE_NAME": "own"})
    env = {"OTEL_SERVICE_NAME": "forced", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod"}
    attrs = _attrs(ResourceCache(env=env, containers=_in_container(tmp_path, proc.pid)), proc.pid)
    assert (attrs["service.name"], attrs["deployment.environment.name"]) == ("forced", "prod")
    assert attrs["container.name"] == "shop-api-1"


def test_container_metadata_is_looked_up_once_per_container(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn("server")
    meta = _in_container(tmp_path, proc.pid)
    cache = ResourceCache(env={}, containers=meta)
    for _ in range(5):
        cache.get(proc.pid)
    ResourceCache(env={}, containers=meta).get(proc.pid)  # a second process cache, same container
    assert meta.lookups == 1


def test_a_gone_process_is_named_from_its_exec_facts() -> None:
    cache = ResourceCache(env={})
    gone = 2**22 + 4321
    cache.remember_exec(ProcessEvent(gone, "python3", "/usr/bin/python3.11", ["python3", "-u", "-m", "shop.api"]))
    attrs = _attrs(cache, gone)
    assert attrs["service.name"] == "shop.api"
    assert attrs["process.executable.name"] == "python3.11"
    assert not [k for k in attrs if k.startswith(CONTAINER_KEYS)]
    assert ResourceCache(env={}).get(gone, "nginx").service_name == "nginx"


def test_host_name_order(tmp_path: Path) -> None:
    assert host_name({"OTELBPF_HOST_NAME": "h1", "K8S_NODE_NAME": "n1"}) == "h1"
    assert host_name({"K8S_NODE_NAME": "n1"}) == "n1"
    assert host_name({}) == socket.gethostname()
    # otelbpf in a container (another mount namespace than pid 1's): the host's /etc/hostname.
    for pid, ns in (("self", "mnt:[4026532999]"), ("1", "mnt:[4026531832]")):
        (tmp_path / pid / "ns").mkdir(parents=True)
        os.symlink(ns, tmp_path / pid / "ns" / "mnt")
    assert host_name({}, str(tmp_path)) == socket.gethostname()  # unreadable: this one's
    (tmp_path / "1" / "root" / "etc").mkdir(parents=True)
    (tmp_path / "1" / "root" / "etc" / "hostname").write_text("node-7\n")
    assert host_name({}, str(tmp_path)) == "node-7"
