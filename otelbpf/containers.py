"""Which container a process runs in, and what its runtime says about it.

The container id comes from ``/proc/PID/cgroup``, whose layout depends on the cgroup version, the
cgroup driver (cgroupfs or systemd) and the runtime; the name, image and labels come from Docker's
Engine API on its unix socket or, failing that, from its state directory. Both are optional: a host
without Docker, or a runtime otelbpf cannot ask, still gets the id (and, under Kubernetes, the pod's
names from otelbpf.kubernetes).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otelbpf.kubernetes import KubernetesMetadata, pod_uid_in_cgroup
from otelbpf.spans import AttributeValue

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_DOCKER_DIR = "/var/lib/docker/containers"
# Docker Compose names its containers project-service-N; this label keeps the service alone.
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# One path segment naming a container: docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope,
# libpod-<id>.scope (systemd driver), a bare <id> (cgroupfs driver), or kubepods-...slice:cri-containerd:<id>.
_SEGMENT = re.compile(r"^(?:(?P<prefix>.*?)[-:])?(?P<id>[0-9a-f]{64})(?:\.scope)?$")
# Segment prefixes -> runtime (semconv container.runtime.name values: docker, containerd, ...).
_RUNTIMES = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
# Monitor processes the runtime runs beside a container, in a cgroup named after it: not the container.
_MONITORS = ("crio-conmon", "libpod-conmon")


@dataclass(frozen=True)
class CgroupContainer:
    """The container a cgroup path puts a process in."""

    id: str
    runtime: str = ""  # "" when the layout does not say (cgroupfs under /kubepods: docker or containerd)
    pod_uid: str = ""  # Kubernetes pod uid, "" outside Kubernetes


def _container_in_path(path: str) -> CgroupContainer | None:
    segments = [s for s in path.split("/") if s]
    # The innermost id wins: /docker/<id>/system.slice/x.service is systemd inside container <id>.
    for i in range(len(segments) - 1, -1, -1):
        m = _SEGMENT.match(segments[i])
        if m is None:
            continue
        prefix = (m.group("prefix") or "").rsplit(":", 1)[-1]
        if prefix.endswith(_MONITORS):
            return None
        runtime = _RUNTIMES.get(prefix, "")
        if not runtime and not prefix and i > 0 and segments[i - 1] == "docker":
            runtime = "docker"  # cgroupfs driver: /docker/<id>
        return CgroupContainer(m.group("id"), runtime, pod_uid_in_cgroup(path))
    return None


def parse_cgroup(text: str) -> CgroupContainer | None:
    """The container named by a ``/proc/PID/cgroup`` file (v1 or v2), or None for a host process."""
    for line in text.splitlines():
        # hierarchy-id:controllers:path; the path may itself hold colons (slice:cri-containerd:id).
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        found = _container_in_path(parts[2])
        if found is not None:
            return found
    return None


def container_of(pid: int | str, proc: str = "/proc") -> CgroupContainer | None:
    """The container process ``pid`` runs in, or None (a host process, or gone)."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return parse_cgroup(text)


def split_image(ref: str) -> tuple[str, str]:
    """(name, tag) of an image reference: ``reg:5000/org/app:1.2@sha256:..`` -> (``reg:5000/org/app``, ``1.2``)."""
    ref = ref.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:  # a colon before the last slash is a registry's port
        return ref[:colon], ref[colon + 1 :]
    return ref, ""


@dataclass(frozen=True)
class ContainerInfo:
    """What a container runtime reports about one container."""

    id: str
    name: str = ""
    image_name: str = ""
    image_tag: str = ""
    image_id: str = ""
    runtime: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_docker_container(obj: Mapping[str, Any], runtime: str = "docker") -> ContainerInfo:
    """A ContainerInfo from Docker's container JSON: the Engine API's ``/containers/ID/json`` or the
    state directory's ``config.v2.json`` (the same fields: Id/ID, Name, Image, Config.Image, Config.Labels)."""
    config = obj.get("Config") or {}
    image_ref = str(config.get("Image") or "")
    image_id = str(obj.get("Image") or "")
    name, tag = ("", "") if image_ref.startswith("sha256:") else split_image(image_ref)
    labels = config.get("Labels") or {}
    return ContainerInfo(
        id=str(obj.get("Id") or obj.get("ID") or ""),
        name=str(obj.get("Name") or "").lstrip("/"),
        image_name=name,
        # Docker stores the reference as typed: no tag there means the one it pulled, latest.
        image_tag=tag or ("latest" if name else ""),
        image_id=image_id,
        runtime=runtime,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def docker_socket(flag: str | None, env: Mapping[str, str]) -> str:
    """The Docker socket to ask: the flag, else OTELBPF_DOCKER_SOCKET, else DOCKER_HOST's unix:// path."""
    if flag:
        return flag
    if env.get("OTELBPF_DOCKER_SOCKET"):
        return env["OTELBPF_DOCKER_SOCKET"]
    host = env.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host:
        logger.info("DOCKER_HOST=%s is not a unix socket: asking %s instead", host, DEFAULT_DOCKER_SOCKET)
    return DEFAULT_DOCKER_SOCKET


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the Docker Engine API's)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerMetadata:
    """Docker's view of a container: the Engine API first, its state directory when the API cannot answer."""

    def __init__(
        self, socket_path: str = DEFAULT_DOCKER_SOCKET, state_dir: str = DEFAULT_DOCKER_DIR, timeout_s: float = 0.5
    ) -> None:
        self.socket_path = socket_path
        self.state_dir = state_dir
        self._timeout_s = timeout_s
        self._noted: set[str] = set()

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """What Docker knows of this container, or None (not Docker's, or Docker cannot be read)."""
        obj = self._from_api(container_id)
        if obj is None:
            obj = self._from_state_dir(container_id)
        return None if obj is None else parse_docker_container(obj)

    def _note_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._noted:
            self._noted.add(key)
            logger.info(message, *args)

    def _from_api(self, container_id: str) -> dict | None:
        if not os.path.exists(self.socket_path):
            self._note_once("socket", "container names: no Docker socket at %s", self.socket_path)
            return None
        conn = _UnixConnection(self.socket_path, self._timeout_s)
        try:
            conn.request("GET", f"/containers/{container_id}/json")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._note_once("api", "container names: the Docker API at %s did not answer (%s)", self.socket_path, exc)
            return None
        finally:
            conn.close()
        if resp.status != 200:  # 404: not one of Docker's (a containerd or cri-o container)
            logger.debug("Docker API: container %s: HTTP %d", container_id[:12], resp.status)
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def _from_state_dir(self, container_id: str) -> dict | None:
        path = Path(self.state_dir) / container_id / "config.v2.json"
        try:
            obj = json.loads(path.read_bytes())
        except FileNotFoundError:
            if not Path(self.state_dir).is_dir():
                self._note_once("dir", "container names: no Docker state directory at %s", self.state_dir)
            return None
        except (OSError, ValueError) as exc:
            self._note_once("dir-read", "container names: cannot read %s (%s)", path, exc)
            return None
        return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class ContainerFacts:
    """A process's container, as resource attributes, and the names service.name may be drawn from."""

    attributes: dict[str, AttributeValue]
    workload: str = ""  # compose service, app.kubernetes.io/name label or owning workload's name
    name: str = ""  # Kubernetes container name, else the runtime's container name
    names: tuple[str, ...] = ()  # every name --container may use for it


class ContainerMetadata:
    """Resource attributes for containerised processes, looked up once per container and kept (bounded).

    Runs on the drain thread: every lookup is bounded by a timeout and its result, even a failed
    one, is cached (failures for ``retry_s`` only, since a runtime's metadata can lag its cgroup).
    """

    def __init__(
        self,
        docker: DockerMetadata | None = None,
        kubernetes: KubernetesMetadata | None = None,
        capacity: int = 1024,
        retry_s: float = 10.0,
        proc: str = "/proc",
        clock: Any = time.monotonic,
    ) -> None:
        self.docker = docker or DockerMetadata()
        self.kubernetes = kubernetes or KubernetesMetadata()
        self._capacity = capacity
        self._retry_s = retry_s
        self._proc = proc
        self._clock = clock
        self._cache: OrderedDict[str, tuple[ContainerFacts, float]] = OrderedDict()
        self.lookups = 0

    def of_pid(self, pid: int) -> ContainerFacts | None:
        """The container facts of a process, or None for a host process (or one already gone)."""
        ref = container_of(pid, self._proc)
        return None if ref is None else self.of_container(ref)

    def of_container(self, ref: CgroupContainer) -> ContainerFacts:
        """The facts for one container, from the cache while they are fresh."""
        now = self._clock()
        hit = self._cache.get(ref.id)
        if hit is not None and now < hit[1]:
            self._cache.move_to_end(ref.id)
            return hit[0]
        facts, complete = self._look_up(ref)
        self._cache[ref.id] = (facts, float("inf") if complete else now + self._retry_s)
        self._cache.move_to_end(ref.id)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return facts

    def _look_up(self, ref: CgroupContainer) -> tuple[ContainerFacts, bool]:
        self.lookups += 1
        attrs: dict[str, AttributeValue] = {"container.id": ref.id}
        runtime = ref.runtime
        # Under Kubernetes on containerd or cri-o, Docker has nothing to say: do not ask it.
        info = self.docker.inspect(ref.id) if runtime in ("", "docker") else None
        workload = name = ""
        names: list[str] = []
        if info is not None:
            runtime = info.runtime or runtime
            if info.name:
                attrs["container.name"] = info.name
                name = info.name
                names.append(info.name)
            if info.image_name:
                attrs["container.image.name"] = info.image_name
            if info.image_tag:
                attrs["container.image.tags"] = (info.image_tag,)
            if info.image_id:
                attrs["container.image.id"] = info.image_id
            workload = info.labels.get(COMPOSE_SERVICE_LABEL, "")
        # Nothing to wait for when no source otelbpf reads could ever describe it (Podman, CRI-O outside Kubernetes).
        complete = info is not None or runtime not in ("", "docker")
        if ref.pod_uid:
            pod = self.kubernetes.describe(ref.id, ref.pod_uid)
            attrs.update(pod.attributes)
            runtime = runtime or pod.runtime
            if pod.image and "container.image.name" not in attrs:
                image, tag = split_image(pod.image)
                attrs["container.image.name"] = image
                if tag:
                    attrs["container.image.tags"] = (tag,)
            workload = pod.workload or workload
            name = pod.container or name
            names += pod.names
            complete = pod.complete
        if runtime:
            attrs["container.runtime.name"] = runtime
        return ContainerFacts(attrs, workload, name, tuple(names)), complete


def in_container(proc: str = "/proc") -> bool:
    """Whether otelbpf itself runs in a container: its mount namespace is not that of pid 1 (with pid: host)."""
    try:
        return os.readlink(f"{proc}/self/ns/mnt") != os.readlink(f"{proc}/1/ns/mnt")
    except OSError:
        return False
