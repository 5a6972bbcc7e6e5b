"""Container ids from /proc/PID/cgroup (every common layout), Docker's metadata, and the --container watch."""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbpf.containers import (
    CgroupContainer,
    ContainerMetadata,
    DockerMetadata,
    container_of,
    docker_socket,
    in_container,
    parse_cgroup,
    parse_docker_container,
    split_image,
)
from otelbpf.kubernetes import KubeletLogs, KubernetesMetadata
from otelbpf.targets import ContainerWatch

ID = "4ecda13203d6d4b8204c92470cbfa8f72ebb68adde04b3d2f07637013a3a5bc9"
ID2 = "d248a736c6dd77f0d3bc269e227e7c82f177964686c1742f5d458dd27f7507f3"
UID = "9a4c2f2e-4b1e-4c8a-9f3d-2c1e8b7a6d5f"
UID_ = UID.replace("-", "_")

# Recorded on this machine (cgroup v1, Docker 20.10, cgroupfs driver): a container's process.
DOCKER_V1_CGROUPFS = f"""9:name=systemd:/docker/{ID}
8:pids:/docker/{ID}
7:blkio:/docker/{ID}
6:freezer:/docker/{ID}
5:devices:/docker/{ID}
4:memory:/docker/{ID}
3:cpuset:/docker/{ID}
2:cpuacct:/docker/{ID}
1:cpu:/docker/{ID}
0::/docker/{ID}
"""
# Recorded on this machine: a host process (the 32-hex memory cgroup is the VM's own, not a container).
HOST_V1 = """9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/338478bad705975e73a0d39e4d74b3d9
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
DOCKER_V1_SYSTEMD = f"""12:pids:/system.slice/docker-{ID}.scope
11:hugetlb:/system.slice/docker-{ID}.scope
10:net_cls,net_prio:/system.slice/docker-{ID}.scope
9:perf_event:/system.slice/docker-{ID}.scope
8:memory:/system.slice/docker-{ID}.scope
7:cpu,cpuacct:/system.slice/docker-{ID}.scope
6:blkio:/system.slice/docker-{ID}.scope
5:devices:/system.slice/docker-{ID}.scope
4:freezer:/system.slice/docker-{ID}.scope
3:cpuset:/system.slice/docker-{ID}.scope
2:rdma:/
1:name=systemd:/system.slice/docker-{ID}.scope
0::/system.slice/docker-{ID}.scope
"""
DOCKER_V2_SYSTEMD = f"0::/system.slice/docker-{ID}.scope\n"
DOCKER_V2_CGROUPFS = f"0::/docker/{ID}\n"
K8S_V1_CGROUPFS = f"""12:hugetlb:/kubepods/burstable/pod{UID}/{ID}
11:memory:/kubepods/burstable/pod{UID}/{ID}
10:devices:/kubepods/burstable/pod{UID}/{ID}
9:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}
1:name=systemd:/kubepods/burstable/pod{UID}/{ID}
"""
K8S_V2_CONTAINERD = (
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
)
K8S_V2_GUARANTEED = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
# containerd 1.x with the systemd driver on cgroup v1 writes slice:runtime:id under containerd.service.
_COLON_PATH = f"/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"
K8S_V1_CONTAINERD_COLON = f"11:memory:{_COLON_PATH}\n1:name=systemd:{_COLON_PATH}\n0::/\n"
K8S_V2_CRIO = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope\n"
CRIO_CONMON = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
# otelbpf in a pod of its own, with a private cgroup namespace: paths are relative to its own cgroup.
K8S_V2_FROM_A_CGROUP_NAMESPACE = f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
PODMAN_V2 = f"0::/machine.slice/libpod-{ID}.scope/container\n"
PODMAN_ROOTLESS = f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
PODMAN_CONMON = f"0::/machine.slice/libpod-conmon-{ID}.scope\n"
SYSTEMD_IN_DOCKER = f"0::/system.slice/docker-{ID}.scope/system.slice/nginx.service\n"
DOCKER_IN_DOCKER = f"0::/docker/{ID2}/docker/{ID}\n"
HOST_V2_SERVICE = "0::/system.slice/sshd.service\n"
HOST_V2_SESSION = "0::/user.slice/user-1000.slice/session-3.scope\n"
DOCKERD_ITSELF = "0::/system.slice/docker.service\n"


@pytest.mark.parametrize(
    ("text", "runtime", "pod_uid"),
    [
        (DOCKER_V1_CGROUPFS, "docker", ""),
        (DOCKER_V1_SYSTEMD, "docker", ""),
        (DOCKER_V2_SYSTEMD, "docker", ""),
        (DOCKER_V2_CGROUPFS, "docker", ""),
        (K8S_V1_CGROUPFS, "", UID),  # docker or containerd: the layout does not say
        (K8S_V2_CONTAINERD, "containerd", UID),
        (K8S_V2_GUARANTEED, "containerd", UID),
        (K8S_V1_CONTAINERD_COLON, "containerd", UID),
        (K8S_V2_CRIO, "cri-o", UID),
        (K8S_V2_FROM_A_CGROUP_NAMESPACE, "containerd", UID),
        (PODMAN_V2, "podman", ""),
        (PODMAN_ROOTLESS, "podman", ""),
        (SYSTEMD_IN_DOCKER, "docker", ""),
        (DOCKER_IN_DOCKER, "docker", ""),  # the innermost container is the process's own
    ],
)
def test_container_layouts(text: str, runtime: str, pod_uid: str) -> None:
    assert parse_cgroup(text) == CgroupContainer(ID, runtime, pod_uid)


@pytest.mark.parametrize(
    "text", [HOST_V1, HOST_V2_SERVICE, HOST_V2_SESSION, DOCKERD_ITSELF, CRIO_CONMON, PODMAN_CONMON, "", "garbage\n"]
)
def test_host_processes_and_runtime_monitors_are_in_no_container(text: str) -> None:
    assert parse_cgroup(text) is None


def test_container_of_reads_the_proc_file(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(DOCKER_V1_CGROUPFS)
    assert container_of(42, str(tmp_path)) == CgroupContainer(ID, "docker", "")
    assert container_of(43, str(tmp_path)) is None  # gone
    assert container_of(os.getpid()) is None  # this test runs on the host


@pytest.mark.parametrize(
    ("ref", "name", "tag"),
    [
        ("otelbpf-test-python:latest", "otelbpf-test-python", "latest"),
        ("nginx", "nginx", ""),
        ("registry.example.com:5000/org/app:1.2.3", "registry.example.com:5000/org/app", "1.2.3"),
        ("registry.example.com:5000/org/app", "registry.example.com:5000/org/app", ""),
        ("ghcr.io/acme/api:v2@sha256:" + "a" * 64, "ghcr.io/acme/api", "v2"),
        ("ghcr.io/acme/api@sha256:" + "a" * 64, "ghcr.io/acme/api", ""),
    ],
)
def test_image_references(ref: str, name: str, tag: str) -> None:
    assert split_image(ref) == (name, tag)


# The fields otelbpf reads, as the Docker Engine API (20.10) answered GET /containers/ID/json here.
API_RESPONSE = {
    "Id": ID,
    "Created": "2025-12-05T21:36:08.123456789Z",
    "Path": "python3",
    "Args": ["-m", "http.server", "18999"],
    "State": {"Status": "running", "Running": True, "Pid": 11219},
    "Image": "sha256:e1941da3d4bea1547214a4cecb9594292a88f8126592a0fe5972beb6ad064d03",
    "Name": "/otelbpf-probe-x",
    "Config": {
        "Hostname": "vm",
        "Env": ["FOO=1", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["python3", "-m", "http.server", "18999"],
        "Image": "otelbpf-test-python:latest",
        "Labels": {"com.docker.compose.service": "web", "otelbpf.test-recipe": "2"},
    },
}
# The same container's /var/lib/docker/containers/ID/config.v2.json (trimmed): ID, not Id.
CONFIG_V2 = {
    "ID": ID,
    "Name": "/otelbpf-probe-x",
    "Image": "sha256:e1941da3d4bea1547214a4cecb9594292a88f8126592a0fe5972beb6ad064d03",
    "Driver": "overlay2",
    "State": {"Running": True, "Pid": 11219},
    "Config": {
        "Image": "otelbpf-test-python:latest",
        "Labels": {"com.docker.compose.service": "web", "otelbpf.test-recipe": "2"},
    },
}


@pytest.mark.parametrize("obj", [API_RESPONSE, CONFIG_V2])
def test_docker_container_json(obj: dict) -> None:
    info = parse_docker_container(obj)
    assert info.id == ID
    assert info.name == "otelbpf-probe-x"
    assert (info.image_name, info.image_tag) == ("otelbpf-test-python", "latest")
    assert info.image_id.startswith("sha256:e1941da3")
    assert info.runtime == "docker"
    assert info.labels["com.docker.compose.service"] == "web"


def test_docker_container_json_odd_cases() -> None:
    by_id = parse_docker_container({"Id": ID, "Image": "sha256:" + "b" * 64, "Config": {"Image": "sha256:" + "b" * 64}})
    assert (by_id.image_name, by_id.image_tag) == ("", "")  # started by image id: no name to give
    untagged = parse_docker_container({"Id": ID, "Config": {"Image": "nginx", "Labels": None}})
    assert (untagged.image_name, untagged.image_tag, untagged.labels) == ("nginx", "latest", {})
    assert parse_docker_container({}).name == ""


def test_docker_socket_choice() -> None:
    assert docker_socket("/flag.sock", {"OTELBPF_DOCKER_SOCKET": "/env.sock"}) == "/flag.sock"
    assert docker_socket(None, {"OTELBPF_DOCKER_SOCKET": "/env.sock", "DOCKER_HOST": "unix:///d.sock"}) == "/env.sock"
    assert docker_socket(None, {"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}) == "/run/user/1000/docker.sock"
    assert docker_socket(None, {"DOCKER_HOST": "tcp://10.0.0.1:2375"}) == "/var/run/docker.sock"
    assert docker_socket(None, {}) == "/var/run/docker.sock"


def _state_dir(tmp_path: Path, obj: dict = CONFIG_V2) -> Path:
    d = tmp_path / "containers"
    (d / obj["ID"]).mkdir(parents=True)
    (d / obj["ID"] / "config.v2.json").write_text(json.dumps(obj))
    return d


def test_state_directory_when_there_is_no_socket(tmp_path: Path) -> None:
    docker = DockerMetadata(str(tmp_path / "no.sock"), str(_state_dir(tmp_path)))
    info = docker.inspect(ID)
    assert info is not None and info.name == "otelbpf-probe-x"
    assert docker.inspect(ID2) is None
    assert DockerMetadata(str(tmp_path / "no.sock"), str(tmp_path / "none")).inspect(ID) is None


def test_unreadable_state_file_is_not_an_error(tmp_path: Path) -> None:
    d = tmp_path / "containers" / ID
    d.mkdir(parents=True)
    (d / "config.v2.json").write_text("{truncated")
    assert DockerMetadata(str(tmp_path / "no.sock"), str(tmp_path / "containers")).inspect(ID) is None


class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[Path]:
    """A unix-socket HTTP server answering like the Engine API for ID (404 otherwise)."""
    path = tmp_path / "docker.sock"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            found = self.path == f"/containers/{ID}/json"
            body = json.dumps(API_RESPONSE if found else {"message": "No such container"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: object) -> None:
            pass

    server = _UnixHttpServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def test_engine_api_over_a_unix_socket(engine_socket: Path, tmp_path: Path) -> None:
    docker = DockerMetadata(str(engine_socket), str(tmp_path / "none"))
    info = docker.inspect(ID)
    assert info is not None
    assert (info.name, info.image_name, info.labels["com.docker.compose.service"]) == (
        "otelbpf-probe-x",
        "otelbpf-test-python",
        "web",
    )
    assert docker.inspect(ID2) is None  # 404: not Docker's


def test_a_silent_socket_costs_at_most_the_timeout(tmp_path: Path) -> None:
    """A socket that accepts but never answers: the lookup gives up after its timeout and reads the state dir."""
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)
    try:
        docker = DockerMetadata(str(path), str(_state_dir(tmp_path)), timeout_s=0.2)
        t0 = time.monotonic()
        info = docker.inspect(ID)
        assert time.monotonic() - t0 < 1.0
        assert info is not None and info.name == "otelbpf-probe-x"
    finally:
        listener.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _metadata(tmp_path: Path, clock: FakeClock) -> ContainerMetadata:
    return ContainerMetadata(
        DockerMetadata(str(tmp_path / "no.sock"), str(tmp_path / "containers")),
        KubernetesMetadata(KubeletLogs(str(tmp_path / "log")), node_name="node-1"),
        capacity=2,
        retry_s=10.0,
        proc=str(tmp_path / "proc"),
        clock=clock,
    )


def test_docker_container_facts(tmp_path: Path) -> None:
    _state_dir(tmp_path)
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cgroup").write_text(DOCKER_V1_CGROUPFS)
    facts = _metadata(tmp_path, FakeClock()).of_pid(7)
    assert facts is not None
    assert facts.attributes == {
        "container.id": ID,
        "container.name": "otelbpf-probe-x",
        "container.image.name": "otelbpf-test-python",
        "container.image.tags": ("latest",),
        "container.image.id": "sha256:e1941da3d4bea1547214a4cecb9594292a88f8126592a0fe5972beb6ad064d03",
        "container.runtime.name": "docker",
    }
    assert (facts.workload, facts.name, facts.names) == ("web", "otelbpf-probe-x", ("otelbpf-probe-x",))
    assert _metadata(tmp_path, FakeClock()).of_pid(8) is None  # no such process


def test_a_container_without_metadata_still_has_its_id(tmp_path: Path) -> None:
    meta = _metadata(tmp_path, FakeClock())
    facts = meta.of_container(CgroupContainer(ID, "podman"))
    assert facts.attributes == {"container.id": ID, "container.runtime.name": "podman"}
    assert (facts.workload, facts.name) == ("", "")
    meta.of_container(CgroupContainer(ID, "podman"))
    assert meta.lookups == 1  # nothing otelbpf reads could say more: not asked again


def test_lookups_are_cached_failures_briefly_and_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    meta = _metadata(tmp_path, clock)
    ref = CgroupContainer(ID, "docker")
    assert "container.name" not in meta.of_container(ref).attributes  # nothing known yet
    _state_dir(tmp_path)  # the runtime writes its state
    assert "container.name" not in meta.of_container(ref).attributes  # the failure is cached...
    clock.now += 10.5
    assert meta.of_container(ref).attributes["container.name"] == "otelbpf-probe-x"  # ...briefly
    lookups = meta.lookups
    clock.now += 1e6
    meta.of_container(ref)
    assert meta.lookups == lookups  # a success is kept
    for other in ("1" * 64, "2" * 64):  # capacity 2: the oldest falls out
        meta.of_container(CgroupContainer(other, "docker"))
    meta.of_container(ref)
    assert meta.lookups == lookups + 3


def test_kubernetes_containers_are_not_asked_of_docker_when_the_runtime_is_known(tmp_path: Path) -> None:
    _state_dir(tmp_path)  # would answer, but a cri-containerd container is not Docker's
    facts = _metadata(tmp_path, FakeClock()).of_container(CgroupContainer(ID, "containerd", UID))
    assert facts.attributes == {
        "container.id": ID,
        "container.runtime.name": "containerd",
        "k8s.pod.uid": UID,
        "k8s.node.name": "node-1",
    }


def test_in_container_compares_mount_namespaces(tmp_path: Path) -> None:
    for pid, ns in (("self", "mnt:[4026532999]"), ("1", "mnt:[4026531832]")):
        (tmp_path / pid / "ns").mkdir(parents=True)
        os.symlink(ns, tmp_path / pid / "ns" / "mnt")
    assert in_container(str(tmp_path)) is True
    os.remove(tmp_path / "self" / "ns" / "mnt")
    os.symlink("mnt:[4026531832]", tmp_path / "self" / "ns" / "mnt")
    assert in_container(str(tmp_path)) is False
    assert in_container(str(tmp_path / "nothing")) is False


# ------------------------------------------------------------------------------------------- --container


def _proc(tmp_path: Path, pid: int, cgroup: str) -> None:
    (tmp_path / str(pid)).mkdir(exist_ok=True)
    (tmp_path / str(pid) / "cgroup").write_text(cgroup)


NAMES = {ID: ("shop-api",), ID2: ("billing",)}


def _watch(tmp_path: Path, *selectors: str) -> tuple[ContainerWatch, list[str]]:
    asked: list[str] = []

    def names(ref: CgroupContainer) -> tuple[str, ...]:
        asked.append(ref.id)
        return NAMES.get(ref.id, ())

    return ContainerWatch(list(selectors), names, proc=str(tmp_path)), asked


def test_watch_by_name_now_and_later(tmp_path: Path) -> None:
    _proc(tmp_path, 10, HOST_V1)
    _proc(tmp_path, 11, DOCKER_V1_CGROUPFS)
    _proc(tmp_path, 12, DOCKER_IN_DOCKER.replace(ID, "f" * 64))  # another container
    watch, asked = _watch(tmp_path, "shop-api", "billing")
    assert set(watch.scan()) == {11}
    assert watch.not_running() == ["billing"]
    _proc(tmp_path, 13, DOCKER_V2_CGROUPFS)  # a new process in the same container
    _proc(tmp_path, 14, f"0::/docker/{ID2}\n")  # the billing container starts
    assert watch.scan() == {13: CgroupContainer(ID, "docker"), 14: CgroupContainer(ID2, "docker")}
    assert watch.scan() == {}
    assert watch.not_running() == []
    assert sorted(asked) == sorted([ID, "f" * 64, ID2])  # names asked once per container


def test_watch_catches_a_process_moved_into_a_container_after_the_first_look(tmp_path: Path) -> None:
    """runc init starts in the runtime's cgroup and joins the container's just after."""
    _proc(tmp_path, 20, DOCKERD_ITSELF)
    watch, _ = _watch(tmp_path, ID)
    assert watch.scan() == {}
    _proc(tmp_path, 20, DOCKER_V2_SYSTEMD)
    assert set(watch.scan()) == {20}
    _proc(tmp_path, 21, HOST_V2_SERVICE)
    watch.scan()
    watch.scan()
    _proc(tmp_path, 21, DOCKER_V2_SYSTEMD)  # settled as a host process after two looks
    assert watch.scan() == {}


def test_watch_forgets_ended_processes(tmp_path: Path) -> None:
    _proc(tmp_path, 30, DOCKER_V2_SYSTEMD)
    watch, _ = _watch(tmp_path, "shop-api")
    assert set(watch.scan()) == {30}
    (tmp_path / "30" / "cgroup").unlink()
    (tmp_path / "30").rmdir()
    watch.scan()
    _proc(tmp_path, 30, DOCKER_V2_SYSTEMD)  # the pid reused by a new process of the container
    assert set(watch.scan()) == {30}


def test_watch_by_id_and_prefix_without_asking_names(tmp_path: Path) -> None:
    _proc(tmp_path, 40, DOCKER_V2_SYSTEMD)
    _proc(tmp_path, 41, f"0::/docker/{ID2}\n")
    watch, asked = _watch(tmp_path, ID, ID2[:4])
    assert set(watch.scan()) == {40, 41}
    assert asked == []
    assert watch.ambiguous() == {}


def test_short_or_non_hex_prefixes_are_names(tmp_path: Path) -> None:
    _proc(tmp_path, 50, DOCKER_V2_SYSTEMD)
    watch, asked = _watch(tmp_path, ID[:3], "4ecdz")
    assert watch.scan() == {}
    assert asked == [ID]


def test_an_ambiguous_prefix_is_reported(tmp_path: Path) -> None:
    other = ID[:6] + "0" * 58
    _proc(tmp_path, 60, DOCKER_V2_SYSTEMD)
    _proc(tmp_path, 61, f"0::/docker/{other}\n")
    watch, _ = _watch(tmp_path, ID[:6])
    assert set(watch.scan()) == {60, 61}
    assert watch.ambiguous() == {ID[:6]: {ID, other}}
