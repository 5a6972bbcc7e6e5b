"""deploy/kubernetes/ checked offline (no cluster, no root): Kubernetes schemas, the kustomization, the
DaemonSet's host access, and the collector gateway's config and wiring."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "otelbpf"
# The oldest Kubernetes these manifests claim to fit (no field newer than it is used), and the newest schema
# the pinned kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.28", "1.37")
# Host paths otelbpf reads: tracefs, kernel headers, and the kubelet's log layout. Each is mounted at the same
# path, read-only.
REQUIRED_HOST_MOUNTS = {"/sys/kernel/tracing", "/lib/modules", "/usr/src", "/var/log/pods", "/var/log/containers"}
# Standard OpenTelemetry variables the manifests set that otelbpf does not read (yet): allowed by name.
OTEL_ENV_NOT_READ = {"OTEL_METRIC_EXPORT_INTERVAL"}

Doc = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _docs() -> list[tuple[str, Doc]]:
    return [(p.name, d) for p in _manifest_files() for d in _load(p)]


def _one(kind: str, name: str) -> Doc:
    found = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: cores for CPU, bytes for memory."""
    text = str(value)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G)?", text)
    assert m, f"unexpected quantity {text!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * scale[m.group(2)]


def _check_resources(container: Doc) -> None:
    resources = container["resources"]
    for key in ("cpu", "memory"):
        request, limit = resources["requests"][key], resources["limits"][key]
        assert 0 < _quantity(request) <= _quantity(limit), f"{container['name']}: {key} {request} > {limit}"


def test_kustomization_lists_exactly_the_manifests() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a file is listed twice"
    assert sorted(resources) == [p.name for p in _manifest_files()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_strictly(version: str) -> None:
    docs = _docs()
    assert len(docs) >= 9
    errors = []
    for filename, doc in docs:
        what = f"{filename}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validated = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}")
        else:
            assert validated == version, f"validated against {validated}, not {version}"
    assert not errors, "\n".join(errors)


def test_everything_is_in_the_namespace() -> None:
    assert _one("Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for filename, doc in _docs():
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: {doc['kind']} outside {NAMESPACE}"


def test_daemonset_runs_privileged_in_the_host_pid_namespace() -> None:
    ds = _one("DaemonSet", "otelbpf")
    pod = ds["spec"]["template"]["spec"]
    container = _container(ds)
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostPID"] is True
    assert container["securityContext"]["privileged"] is True
    # Cluster DNS must still resolve the gateway's Service name from the host network namespace.
    if pod.get("hostNetwork"):
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # Every node, whatever its taints.
    assert {"operator": "Exists"} in pod["tolerations"]
    # otelbpf flushes within 10 s of SIGTERM.
    assert pod["terminationGracePeriodSeconds"] > 10
    # The image's entrypoint (tracefs, kernel headers) must stay: flags go in args.
    assert "command" not in container
    assert container["args"][:2] == ["otelbpf", "run"]
    _check_resources(container)


def test_daemonset_mounts_what_otelbpf_reads_read_only() -> None:
    ds = _one("DaemonSet", "otelbpf")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    mounts = _container(ds)["volumeMounts"]
    mounted = {m["name"] for m in mounts}
    assert mounted <= volumes.keys(), f"mounts without a volume: {mounted - volumes.keys()}"
    assert volumes.keys() <= mounted, f"volumes never mounted: {volumes.keys() - mounted}"
    host_paths = set()
    for m in mounts:
        host_path = volumes[m["name"]]["hostPath"]
        # The same path inside: headers and log links are absolute links into the other mounts.
        assert host_path["path"] == m["mountPath"]
        assert m.get("readOnly") is True, f"{m['mountPath']} is mounted writable"
        # otelbpf never creates anything on the host.
        assert host_path.get("type", "") in ("", "Directory", "File", "Socket"), host_path
        host_paths.add(m["mountPath"])
    assert REQUIRED_HOST_MOUNTS <= host_paths, f"missing: {REQUIRED_HOST_MOUNTS - host_paths}"


def test_daemonset_environment() -> None:
    ds = _one("DaemonSet", "otelbpf")
    container = _container(ds)
    env = _env(container)
    assert env["K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OTEL_METRIC_EXPORT_INTERVAL"]["value"].isdigit()
    config_maps = [s["configMapRef"]["name"] for s in container["envFrom"]]
    assert config_maps == ["otelbpf-config"]
    data = _one("ConfigMap", "otelbpf-config")["data"]
    # It would name every service on every node the same.
    assert "OTEL_SERVICE_NAME" not in env
    assert "OTEL_SERVICE_NAME" not in data
    assert all(isinstance(v, str) for v in data.values())
    # Every variable set is one otelbpf names (a misspelt one would be ignored silently). Some are read through
    # a prefix (OTEL_EXPORTER_OTLP_{suffix}), so the name is looked for anywhere, help text included.
    source = "\n".join(p.read_text() for p in (ROOT / "otelbpf").rglob("*.py"))
    for name in [*env, *data]:
        if name.startswith(("OTELBPF_", "OTEL_")) and name not in OTEL_ENV_NOT_READ:
            assert re.search(rf"\b{name}\b", source), f"otelbpf does not read {name}"


def test_otlp_endpoint_is_the_gateway_service() -> None:
    env = _env(_container(_one("DaemonSet", "otelbpf")))
    service = _one("Service", "otel-collector")
    url = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"])
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert url.scheme == "http"
    assert url.hostname in (f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local")
    protocol = env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"]
    assert protocol == "grpc"
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert url.port in ports, f"the Service has no port {url.port}"
    assert ports[url.port]["appProtocol"] == protocol


def test_service_account_may_get_what_otelbpf_asks_for_and_no_more() -> None:
    ds = _one("DaemonSet", "otelbpf")
    account = _one("ServiceAccount", ds["spec"]["template"]["spec"]["serviceAccountName"])
    binding = _one("ClusterRoleBinding", "otelbpf")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    assert subject in binding["subjects"]
    role = _one(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    granted = set()
    for rule in role["rules"]:
        assert rule["verbs"] == ["get"], rule
        granted.update((group, resource) for group in rule["apiGroups"] for resource in rule["resources"])
    # The API paths otelbpf requests, as (group, resource): /api/v1/namespaces/{ns}/RESOURCE/{name} (core)
    # and /apis/GROUP/VERSION/namespaces/{ns}/RESOURCE/{name}. A new one must be granted here too.
    source = "\n".join(p.read_text() for p in (ROOT / "otelbpf").rglob("*.py"))
    paths = re.findall(r'"/api(?:/v1|s/([a-z0-9.-]+)/v\w+)/namespaces/\{\w+\}/([a-z]+)/\{\w+\}"', source)
    asked = {(group, resource) for group, resource in paths}
    assert asked, "no Kubernetes API path found in otelbpf: is the pattern out of date?"
    assert asked == granted


def _collector_config() -> dict[str, Any]:
    deployment = _one("Deployment", "otel-collector")
    container = _container(deployment)
    (config_arg,) = [a for a in container["args"] if a.startswith("--config=")]
    config_path = Path(config_arg.removeprefix("--config="))
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    config_map = _one("ConfigMap", volume["configMap"]["name"])
    return yaml.safe_load(config_map["data"][config_path.name])


def test_collector_pipelines_use_only_defined_components() -> None:
    config = _collector_config()
    service = config["service"]
    assert set(service.get("extensions", [])) <= set(config.get("extensions", {}))
    assert {"traces", "metrics"} <= service["pipelines"].keys()
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in service["pipelines"].items():
        for section in used:
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), f"pipeline {name}: {section} {component} is not defined"
                used[section].add(component)
        assert pipeline["receivers"] and pipeline["exporters"], name
        # Refuse data before the pod runs out of memory, ahead of any processor that holds it.
        assert pipeline["processors"][0] == "memory_limiter", name
    for section, names in used.items():
        assert set(config[section]) == names, f"{section} defined but in no pipeline: {set(config[section]) - names}"


def test_collector_ports_line_up() -> None:
    deployment = _one("Deployment", "otel-collector")
    service = _one("Service", "otel-collector")
    container = _container(deployment)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    protocols = _collector_config()["receivers"]["otlp"]["protocols"]
    receiver_ports = {name: int(p["endpoint"].rsplit(":", 1)[1]) for name, p in protocols.items()}
    assert receiver_ports == {"grpc": container_ports["otlp-grpc"], "http": container_ports["otlp-http"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports, port
        assert port["port"] == container_ports[port["targetPort"]], port
    # Receivers bind the pod IP, which only the downward API provides.
    if any("MY_POD_IP" in p["endpoint"] for p in protocols.values()):
        assert _env(container)["MY_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_collector_image_is_pinned_and_bounded() -> None:
    container = _container(_one("Deployment", "otel-collector"))
    image, _, tag = container["image"].rpartition(":")
    assert image == "otel/opentelemetry-collector-contrib"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"not a pinned release: {tag}"
    _check_resources(container)
