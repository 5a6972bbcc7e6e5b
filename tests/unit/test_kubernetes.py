"""Pods from the node's own files (the kubelet's log layout) and from the API's pod JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from otelbpf.kubernetes import (
    ContainerLog,
    KubeApi,
    KubeletLogs,
    KubernetesMetadata,
    Pod,
    deployment_of,
    node_name,
    parse_container_log,
    parse_pod,
    parse_pod_log_dir,
    pod_uid_in_cgroup,
)

CID = "6c1d3c4f0b2e4b8fa0a3f1de2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"
SIDECAR = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
UID = "9a4c2f2e-4b1e-4c8a-9f3d-2c1e8b7a6d5f"
UID_ = UID.replace("-", "_")
POD = "shop-api-7d9f8b6c5d-x2x9k"


@pytest.mark.parametrize(
    ("path", "uid"),
    [
        (f"/kubepods/burstable/pod{UID}/{CID}", UID),
        (f"/kubepods/pod{UID}/{CID}", UID),  # Guaranteed QoS: no class directory
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
            UID,
        ),
        # A static pod's uid is the hash of its manifest.
        (f"/kubepods/burstable/pod6f1a2b3c4d5e6f708192a3b4c5d6e7f8/{CID}", "6f1a2b3c4d5e6f708192a3b4c5d6e7f8"),
        (f"/docker/{CID}", ""),
        (f"/system.slice/podman-pod{UID}.slice/{CID}", ""),  # not Kubernetes' pod
    ],
)
def test_pod_uid_in_cgroup(path: str, uid: str) -> None:
    assert pod_uid_in_cgroup(path) == uid


def test_container_log_names() -> None:
    assert parse_container_log(f"{POD}_shop_api-{CID}.log") == ContainerLog(POD, "shop", "api", CID)
    # Names with dashes everywhere: the last dash before the id ends the container name.
    name = f"coredns-5d78c9869d-8tqbs_kube-system_coredns-{CID}.log"
    assert parse_container_log(name) == ContainerLog("coredns-5d78c9869d-8tqbs", "kube-system", "coredns", CID)
    assert parse_container_log(f"{POD}_shop_api-{CID[:12]}.log") is None
    assert parse_container_log("kube-proxy.log") is None


def test_pod_log_directory_names() -> None:
    assert parse_pod_log_dir(f"shop_{POD}_{UID}") == ("shop", POD, UID)
    assert parse_pod_log_dir("not-a-pod") is None


def _kubelet_layout(root: Path) -> Path:
    """/var/log as the kubelet leaves it for one pod with an app container and a sidecar."""
    log = root / "log"
    pod_dir = log / "pods" / f"shop_{POD}_{UID}"
    for container in ("api", "envoy"):
        (pod_dir / container).mkdir(parents=True)
        (pod_dir / container / "0.log").write_text("")
    (log / "containers").mkdir()
    # Symlinks into /var/log/pods in real life; only their names are read.
    (log / "containers" / f"{POD}_shop_api-{CID}.log").symlink_to(pod_dir / "api" / "0.log")
    (log / "containers" / f"{POD}_shop_envoy-{SIDECAR}.log").symlink_to(pod_dir / "envoy" / "0.log")
    single = log / "pods" / f"jobs_report-28391234-abcde_{UID.replace('9a4c', '1111')}" / "report"
    single.mkdir(parents=True)
    return log


def test_kubelet_logs(tmp_path: Path) -> None:
    logs = KubeletLogs(str(_kubelet_layout(tmp_path)))
    assert logs.by_container(CID) == ContainerLog(POD, "shop", "api", CID)
    assert logs.by_container("f" * 64) is None
    assert logs.by_pod(UID) == ("shop", POD, ["api", "envoy"])
    assert logs.by_pod(UID.replace("9a4c", "1111")) == ("jobs", "report-28391234-abcde", ["report"])
    assert KubeletLogs(str(tmp_path / "nothing")).by_container(CID) is None


def _pod_json(owner_kind: str = "ReplicaSet", owner_name: str = "shop-api-7d9f8b6c5d", labels=None) -> dict:
    """The fields otelbpf reads from GET /api/v1/namespaces/shop/pods/NAME."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": POD,
            "namespace": "shop",
            "uid": UID,
            "labels": labels
            if labels is not None
            else {"app.kubernetes.io/name": "shop-api", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner_kind,
                    "name": owner_name,
                    "uid": "0c0ffee0-0000-4000-8000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {"name": "api", "image": "registry.example.com/shop/api:1.4.2"},
                {"name": "envoy", "image": "envoyproxy/envoy:v1.29.1"},
            ],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "api", "containerID": f"containerd://{CID}", "image": "registry.example.com/shop/api:1.4.2"},
                {
                    "name": "envoy",
                    "containerID": f"containerd://{SIDECAR}",
                    "image": "docker.io/envoyproxy/envoy:v1.29.1",
                },
            ],
        },
    }


def test_parse_pod_from_a_deployment() -> None:
    pod = parse_pod(_pod_json())
    assert (pod.name, pod.namespace, pod.uid) == (POD, "shop", UID)
    assert pod.workloads == {"k8s.replicaset.name": "shop-api-7d9f8b6c5d", "k8s.deployment.name": "shop-api"}
    assert pod.owner == "shop-api"
    assert pod.images["api"] == "registry.example.com/shop/api:1.4.2"
    assert pod.containers == {CID: "api", SIDECAR: "envoy"}
    assert pod.runtimes[CID] == "containerd"


@pytest.mark.parametrize(
    ("kind", "name", "workloads", "owner"),
    [
        ("StatefulSet", "postgres", {"k8s.statefulset.name": "postgres"}, "postgres"),
        ("DaemonSet", "otelbpf", {"k8s.daemonset.name": "otelbpf"}, "otelbpf"),
        ("Job", "report-28391234", {"k8s.job.name": "report-28391234"}, "report-28391234"),
        ("Node", "node-1", {}, ""),  # a static pod's mirror: owned by its node, no workload
    ],
)
def test_parse_pod_owners(kind: str, name: str, workloads: dict, owner: str) -> None:
    pod = parse_pod(_pod_json(kind, name, labels={}))
    assert (pod.workloads, pod.owner) == (workloads, owner)


def test_parse_pod_without_owner_or_status() -> None:
    pod = parse_pod({"metadata": {"name": "debug", "namespace": "default", "uid": UID}})
    assert pod == Pod("debug", "default", UID)


def test_deployment_of_replicaset() -> None:
    assert deployment_of("shop-api-7d9f8b6c5d", {"pod-template-hash": "7d9f8b6c5d"}) == "shop-api"
    assert deployment_of("shop-api-7d9f8b6c5d", {}) == "shop-api"  # the suffix looks generated
    assert deployment_of("shop-api-v2", {}) == ""  # a hand-made ReplicaSet: no Deployment to name
    assert deployment_of("standalone", {}) == ""


class FakeApi:
    """Stands in for KubeApi: the parsed pod JSON, counted."""

    def __init__(self, obj: dict | None) -> None:
        self.obj = obj
        self.asked: list[tuple[str, str, str]] = []

    def pod(self, namespace: str, name: str, uid: str) -> Pod | None:
        self.asked.append((namespace, name, uid))
        return None if self.obj is None else parse_pod(self.obj)


def test_describe_from_the_node_alone(tmp_path: Path) -> None:
    meta = KubernetesMetadata(KubeletLogs(str(_kubelet_layout(tmp_path))), node_name="node-1")
    facts = meta.describe(CID, UID)
    assert facts.attributes == {
        "k8s.pod.uid": UID,
        "k8s.node.name": "node-1",
        "k8s.namespace.name": "shop",
        "k8s.pod.name": POD,
        "k8s.container.name": "api",
    }
    assert (facts.complete, facts.container, facts.workload) == (True, "api", "")
    assert facts.names == (f"shop/{POD}/api",)


def test_describe_falls_back_to_the_pod_directory(tmp_path: Path) -> None:
    log = _kubelet_layout(tmp_path)
    for entry in (log / "containers").iterdir():
        entry.unlink()
    meta = KubernetesMetadata(KubeletLogs(str(log)))
    two = meta.describe(CID, UID)  # two containers: which one is not known
    assert two.attributes == {"k8s.pod.uid": UID, "k8s.namespace.name": "shop", "k8s.pod.name": POD}
    single_uid = UID.replace("9a4c", "1111")
    one = meta.describe(SIDECAR, single_uid)
    assert one.attributes["k8s.container.name"] == "report"


def test_describe_with_the_api(tmp_path: Path) -> None:
    api = FakeApi(_pod_json())
    meta = KubernetesMetadata(KubeletLogs(str(_kubelet_layout(tmp_path))), api, "node-1")  # type: ignore[arg-type]
    facts = meta.describe(CID, UID)
    assert api.asked == [("shop", POD, UID)]
    assert facts.attributes["k8s.deployment.name"] == "shop-api"
    assert facts.attributes["k8s.replicaset.name"] == "shop-api-7d9f8b6c5d"
    assert facts.workload == "shop-api"  # app.kubernetes.io/name
    assert (facts.image, facts.runtime) == ("registry.example.com/shop/api:1.4.2", "containerd")
    envoy = meta.describe(SIDECAR, UID)
    assert envoy.container == "envoy" and envoy.image == "envoyproxy/envoy:v1.29.1"


def test_describe_with_the_api_owner_when_no_app_label(tmp_path: Path) -> None:
    api = FakeApi(_pod_json(labels={"pod-template-hash": "7d9f8b6c5d"}))
    meta = KubernetesMetadata(KubeletLogs(str(_kubelet_layout(tmp_path))), api)  # type: ignore[arg-type]
    assert meta.describe(CID, UID).workload == "shop-api"


def test_describe_when_the_api_fails(tmp_path: Path) -> None:
    meta = KubernetesMetadata(KubeletLogs(str(_kubelet_layout(tmp_path))), FakeApi(None))  # type: ignore[arg-type]
    facts = meta.describe(CID, UID)
    assert facts.attributes["k8s.container.name"] == "api" and facts.workload == ""


def test_api_only_with_a_token_and_a_service_address(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert KubeApi.from_env(env, str(tmp_path)) is None  # no token
    (tmp_path / "token").write_text("eyJhbGciOi...")
    api = KubeApi.from_env(env, str(tmp_path))
    assert api is not None and (api.host, api.port) == ("10.96.0.1", 443)
    assert KubeApi.from_env({}, str(tmp_path)) is None


def test_api_failures_are_cached(tmp_path: Path) -> None:
    """An unreachable API server (a closed local port): asked once per pod, answered None within the timeout."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("t")
    api = KubeApi("127.0.0.1", port, str(tmp_path), timeout_s=0.5)
    assert api.pod("shop", POD, UID) is None
    assert api.pod("shop", POD, UID) is None
    assert api.requests == 1


def test_node_name() -> None:
    assert node_name({"K8S_NODE_NAME": "node-7"}, "vm") == "node-7"
    assert node_name({}, "vm") == "vm"
