"""Which Kubernetes pod a container belongs to, read from the node itself and, when allowed, the API server.

Without the API: the pod uid is in the container's cgroup path, and the kubelet names each
container's log after its pod, namespace and container (``/var/log/containers`` and
``/var/log/pods``, mounted read-only into otelbpf's DaemonSet). With a service account token, one GET
per pod adds its labels and owner (the Deployment, StatefulSet, DaemonSet or Job), which name the
service better than a container does.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otelbpf.spans import AttributeValue

logger = logging.getLogger(__name__)

DEFAULT_LOG_DIR = "/var/log"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
APP_NAME_LABEL = "app.kubernetes.io/name"

# pod<uid> in a cgroup path: dashes with the cgroupfs driver, underscores with systemd's
# (kubepods-burstable-pod<uid_with_underscores>.slice); static pods have a 32-hex uid without either.
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})\b")
# /var/log/containers/<pod>_<namespace>_<container>-<container id>.log: pod, namespace and container
# names are DNS labels or subdomains, so none holds an underscore.
_CONTAINER_LOG = re.compile(r"^(?P<pod>[^_/]+)_(?P<ns>[^_/]+)_(?P<container>[^_/]+)-(?P<id>[0-9a-f]{64})\.log$")
# /var/log/pods/<namespace>_<pod>_<uid>/<container>/N.log
_POD_LOG_DIR = re.compile(r"^(?P<ns>[^_/]+)_(?P<pod>[^_/]+)_(?P<uid>[0-9a-f-]+)$")
# The characters Kubernetes draws generated name suffixes from (no vowels, no look-alikes).
_HASH = re.compile(r"^[bcdfghjklmnpqrstvwxz2456789]{5,10}$")
# Workload kinds that own pods directly, and the semconv attribute naming each.
_OWNER_ATTRIBUTES = {
    "Deployment": "k8s.deployment.name",
    "ReplicaSet": "k8s.replicaset.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}
# containerID in a pod's status is <runtime>://<id>; semconv's container.runtime.name values.
_RUNTIME_SCHEMES = {"containerd": "containerd", "docker": "docker", "cri-o": "cri-o"}


def pod_uid_in_cgroup(path: str) -> str:
    """The pod uid in a cgroup path (dashed, as the API writes it), or "" outside Kubernetes."""
    if "kubepods" not in path:
        return ""
    m = _POD_UID.search(path)
    return m.group(1).replace("_", "-") if m else ""


@dataclass(frozen=True)
class ContainerLog:
    """What the kubelet's name for a container's log says."""

    pod: str
    namespace: str
    container: str
    container_id: str


def parse_container_log(name: str) -> ContainerLog | None:
    """Parse a ``/var/log/containers`` entry name; None if it is not one."""
    m = _CONTAINER_LOG.match(name)
    return None if m is None else ContainerLog(m["pod"], m["ns"], m["container"], m["id"])


def parse_pod_log_dir(name: str) -> tuple[str, str, str] | None:
    """(namespace, pod, uid) of a ``/var/log/pods`` directory name; None if it is not one."""
    m = _POD_LOG_DIR.match(name)
    return None if m is None else (m["ns"], m["pod"], m["uid"])


def deployment_of(replicaset: str, labels: Mapping[str, str]) -> str:
    """The Deployment owning a ReplicaSet: its name less the pod-template-hash suffix; "" if it has none."""
    suffix = labels.get("pod-template-hash", "")
    if suffix and replicaset.endswith(f"-{suffix}"):
        return replicaset[: -len(suffix) - 1]
    head, _, tail = replicaset.rpartition("-")
    return head if head and _HASH.match(tail) else ""


@dataclass(frozen=True)
class Pod:
    """What the API says about a pod that the node cannot: labels, owner, and each container's image."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    workloads: Mapping[str, str] = field(default_factory=dict)  # semconv attribute -> name
    owner: str = ""  # the top workload's name: Deployment over ReplicaSet
    images: Mapping[str, str] = field(default_factory=dict)  # container name -> image reference
    containers: Mapping[str, str] = field(default_factory=dict)  # container id -> container name
    runtimes: Mapping[str, str] = field(default_factory=dict)  # container id -> runtime


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    """A Pod from the API's JSON for ``/api/v1/namespaces/NS/pods/NAME``."""
    meta = obj.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    refs = meta.get("ownerReferences") or []
    # The controller is the owner that manages the pod; other references are rare (garbage collection).
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    workloads: dict[str, str] = {}
    owner = ""
    if ref is not None:
        kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
        if kind in _OWNER_ATTRIBUTES and name:
            workloads[_OWNER_ATTRIBUTES[kind]] = name
            owner = name
            if kind == "ReplicaSet":
                deployment = deployment_of(name, labels)
                if deployment:
                    workloads["k8s.deployment.name"] = deployment
                    owner = deployment
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    images: dict[str, str] = {}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            if c.get("name") and c.get("image"):
                images[str(c["name"])] = str(c["image"])
    containers: dict[str, str] = {}
    runtimes: dict[str, str] = {}
    for kind in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for c in status.get(kind) or []:
            scheme, sep, cid = str(c.get("containerID") or "").partition("://")
            if sep and cid and c.get("name"):
                containers[cid] = str(c["name"])
                runtimes[cid] = _RUNTIME_SCHEMES.get(scheme, scheme)
    return Pod(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        labels=labels,
        workloads=workloads,
        owner=owner,
        images=images,
        containers=containers,
        runtimes=runtimes,
    )


class KubeletLogs:
    """Pod, namespace and container names from the kubelet's log layout under ``log_dir``."""

    def __init__(self, log_dir: str = DEFAULT_LOG_DIR) -> None:
        self.log_dir = Path(log_dir)

    def by_container(self, container_id: str) -> ContainerLog | None:
        """The log entry of a container, by its full id (one directory listing)."""
        try:
            entries = os.listdir(self.log_dir / "containers")
        except OSError:
            return None
        suffix = f"-{container_id}.log"
        for name in entries:
            if name.endswith(suffix):
                return parse_container_log(name)
        return None

    def by_pod(self, pod_uid: str) -> tuple[str, str, list[str]] | None:
        """(namespace, pod, container names) of a pod from its ``/var/log/pods`` directory."""
        base = self.log_dir / "pods"
        try:
            entries = os.listdir(base)
        except OSError:
            return None
        for name in entries:
            parsed = parse_pod_log_dir(name)
            if parsed is not None and parsed[2] == pod_uid:
                try:
                    containers = sorted(e for e in os.listdir(base / name) if (base / name / e).is_dir())
                except OSError:
                    containers = []
                return parsed[0], parsed[1], containers
        return None


class KubeApi:
    """GETs pods from the API server with the pod's service account; each pod once (failures too)."""

    def __init__(
        self,
        host: str,
        port: int,
        account_dir: str = SERVICE_ACCOUNT,
        timeout_s: float = 1.0,
        retry_s: float = 60.0,
        capacity: int = 512,
    ) -> None:
        self.host = host
        self.port = port
        self._account = Path(account_dir)
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._capacity = capacity
        self._cache: OrderedDict[str, tuple[Pod | None, float]] = OrderedDict()
        self._context: ssl.SSLContext | None = None
        self.requests = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], account_dir: str = SERVICE_ACCOUNT) -> KubeApi | None:
        """The in-cluster API, when this pod has a service account token and the service's address."""
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        if not host or not (Path(account_dir) / "token").is_file():
            return None
        try:
            port = int(env.get("KUBERNETES_SERVICE_PORT", "443"))
        except ValueError:
            port = 443
        return cls(host, port, account_dir)

    def pod(self, namespace: str, name: str, uid: str) -> Pod | None:
        """The pod, or None if the API cannot be asked or does not answer within the timeout."""
        now = time.monotonic()
        hit = self._cache.get(uid)
        if hit is not None and (hit[0] is not None or now < hit[1]):
            return hit[0]
        pod = self._get(namespace, name)
        if pod is not None and pod.uid and pod.uid != uid:
            pod = None  # the name now belongs to a newer pod
        self._cache[uid] = (pod, now + self._retry_s)
        self._cache.move_to_end(uid)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return pod

    def _get(self, namespace: str, name: str) -> Pod | None:
        self.requests += 1
        try:
            token = (self._account / "token").read_text().strip()  # re-read: bound tokens are rotated
            if self._context is None:
                ca = self._account / "ca.crt"
                self._context = ssl.create_default_context(cafile=str(ca) if ca.is_file() else None)
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self._timeout_s, context=self._context)
            try:
                conn.request(
                    "GET",
                    f"/api/v1/namespaces/{namespace}/pods/{name}",
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                )
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            logger.info("Kubernetes API: pod %s/%s: %s", namespace, name, exc)
            return None
        if resp.status != 200:
            logger.info("Kubernetes API: pod %s/%s: HTTP %d (RBAC: get pods?)", namespace, name, resp.status)
            return None
        try:
            return parse_pod(json.loads(body))
        except (ValueError, AttributeError, TypeError) as exc:
            logger.info("Kubernetes API: pod %s/%s: unreadable answer (%s)", namespace, name, exc)
            return None


@dataclass(frozen=True)
class PodFacts:
    """A container's pod as resource attributes, and the names service.name and --container may use."""

    attributes: dict[str, AttributeValue]
    complete: bool = False  # the pod's names were found (else looked up again later)
    container: str = ""
    workload: str = ""
    image: str = ""  # the image reference the pod's spec gives the container
    runtime: str = ""
    names: tuple[str, ...] = ()


class KubernetesMetadata:
    """k8s.* attributes for a container of a pod: from the node's log layout, then (optionally) the API."""

    def __init__(self, logs: KubeletLogs | None = None, api: KubeApi | None = None, node_name: str = "") -> None:
        self.logs = logs or KubeletLogs()
        self.api = api
        self.node_name = node_name

    def describe(self, container_id: str, pod_uid: str) -> PodFacts:
        """What is known of this container's pod; never raises, never blocks longer than the API timeout."""
        attrs: dict[str, AttributeValue] = {"k8s.pod.uid": pod_uid}
        if self.node_name:
            attrs["k8s.node.name"] = self.node_name
        namespace = pod = container = ""
        entry = self.logs.by_container(container_id)
        if entry is not None:
            namespace, pod, container = entry.namespace, entry.pod, entry.container
        else:
            found = self.logs.by_pod(pod_uid)
            if found is not None:
                namespace, pod, containers = found
                # One container: it is this one. Several: /var/log/pods does not say which.
                container = containers[0] if len(containers) == 1 else ""
        workload = image = runtime = ""
        if self.api is not None and namespace and pod:
            spec = self.api.pod(namespace, pod, pod_uid)
            if spec is not None:
                container = spec.containers.get(container_id, container)
                runtime = spec.runtimes.get(container_id, "")
                attrs.update(spec.workloads)
                workload = spec.labels.get(APP_NAME_LABEL, "") or spec.owner
                image = spec.images.get(container, "")
        if namespace:
            attrs["k8s.namespace.name"] = namespace
        if pod:
            attrs["k8s.pod.name"] = pod
        if container:
            attrs["k8s.container.name"] = container
        names = (f"{namespace}/{pod}/{container}",) if namespace and pod and container else ()
        return PodFacts(attrs, bool(pod), container, workload, image, runtime, names)


def node_name(env: Mapping[str, str], host_name: str) -> str:
    """The node's name: K8S_NODE_NAME (the DaemonSet sets it from spec.nodeName), else the host name."""
    return env.get("K8S_NODE_NAME", "").strip() or host_name
