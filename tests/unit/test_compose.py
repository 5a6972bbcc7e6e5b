"""docker-compose.yml and what it mounts: the compose specification, docker-compose v1, and the wiring.

The collector, Jaeger, Tempo, Prometheus and Grafana images cannot be pulled on the development
machines, so their configs are checked here instead: every pipeline's parts are defined, every address
names a compose service on a port it listens on, and the dashboard's PromQL asks for the metrics
otelbpf exports, under the names Prometheus gives them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from otelbpf import metrics, self_metrics
from otelbpf.collector import Health

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COLLECTOR_CONFIGS = REPO / "collector-config"
DEPLOY = REPO / "deploy" / "compose"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "otelbpf-red.json"
DEMO_SERVICES = ("prices", "stock", "orders", "shop", "postgres", "catalog", "load")
OTELBPF_MOUNTS = {
    "/sys/kernel/tracing:/sys/kernel/tracing",
    "/sys/kernel/debug:/sys/kernel/debug",
    "/lib/modules:/lib/modules:ro",
    "/usr/src:/usr/src:ro",
    "/var/run/docker.sock:/var/run/docker.sock:ro",
    "/var/lib/docker/containers:/var/lib/docker/containers:ro",
}
# Ports of the images whose listening addresses are their own defaults, not set by a file in this repo.
IMAGE_PORTS = {"jaegertracing/all-in-one": {4317, 4318, 16686}, "prom/prometheus": {9090}, "grafana/grafana": {3000}}
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve(value: str) -> str:
    """A compose value with every ``${VAR:-default}`` replaced by its default (the user's shell sets none)."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or a URL."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname and parts.port, f"no host and port in {address!r}"
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def collector_configs() -> list[Path]:
    return sorted(COLLECTOR_CONFIGS.glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def mounted(service: dict, container_path: str) -> Path:
    """The repository path a service mounts at ``container_path``."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == container_path and source.startswith("."):
            return (REPO / source).resolve()
    raise AssertionError(f"nothing from the repository is mounted at {container_path}")


def listening_ports(name: str, service: dict) -> set[int]:
    """The ports a compose service listens on, from its config in this repository or its image's defaults."""
    image = service.get("image", "").split(":")[0]
    if name == "collector":
        return set().union(*(collector_ports(load_yaml(p)) for p in collector_configs()))
    if name == "tempo":
        tempo = load_yaml(mounted(service, "/etc/tempo.yaml"))
        protocols = tempo["distributor"]["receivers"]["otlp"]["protocols"]
        return {tempo["server"]["http_listen_port"]} | {host_port(p["endpoint"])[1] for p in protocols.values()}
    if name in DEMO_SERVICES:
        return demo_ports(service)
    return IMAGE_PORTS[image]


def collector_ports(config: dict) -> set[int]:
    protocols = config["receivers"]["otlp"]["protocols"]
    return {host_port(p["endpoint"])[1] for p in protocols.values()}


def demo_ports(service: dict) -> set[int]:
    """What a demo service listens on, read from its command the way serve.py, catalog.py and listen.js do."""
    cmd = service["command"]
    if "serve.py" in cmd:
        i = cmd.index("serve.py")
        ports = {int(cmd[i + 1])} - {0}
        if cmd[i + 2] == "demo_app.py":  # its own PORT and TLS_PORT arguments
            ports |= {int(cmd[i + 3]), int(cmd[i + 4])}
        return ports
    if "catalog.py" in cmd:
        return {int(cmd[cmd.index("catalog.py") + 1])}
    if cmd[0] == "node":
        return {int(service["environment"]["PORT"])}
    if "postgres.sh" in cmd:
        return {5432}
    return set()


# --------------------------------------------------------------------------------------------------
# The file as a whole
# --------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    assert checker.exists(), "check-jsonschema is missing from the venv (make setup installs it)"
    res = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("config", [None, *[p.name for p in collector_configs()]])
def test_docker_compose_v1_reads_it(config: str | None, tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (v1) is not installed (make setup installs Debian's)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if config:
        env["OTELCOL_CONFIG"] = config
    res = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)["services"]
    assert resolved["collector"]["command"] == [f"--config=/etc/otelbpf-collector/{config or 'both.yaml'}"]
    assert resolved["otelbpf"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"


def test_images_are_pinned(services: dict) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue  # built here
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: pin {image} to a release"


# --------------------------------------------------------------------------------------------------
# otelbpf
# --------------------------------------------------------------------------------------------------


def test_otelbpf_runs_privileged_in_the_host_pid_namespace_with_its_mounts(services: dict) -> None:
    otelbpf = services["otelbpf"]
    assert otelbpf["image"] == "otelbpf:latest" and otelbpf["build"] == "."
    assert otelbpf["privileged"] is True
    assert otelbpf["pid"] == "host"
    assert OTELBPF_MOUNTS <= set(otelbpf["volumes"])
    grace = re.fullmatch(r"(\d+)s", otelbpf["stop_grace_period"])
    assert grace and int(grace.group(1)) >= 10, "otelbpf needs time to flush on stop"
    env = otelbpf["environment"]
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        assert env[var].startswith(f"${{{var}:-"), f"{var} should be overridable from the shell"
    assert resolve(otelbpf["command"]).split()[:2] == ["otelbpf", "run"]


def test_otelbpf_traces_the_demo_containers_by_default(services: dict) -> None:
    args = resolve(services["otelbpf"]["command"]).split()
    selected = {args[i + 1] for i, arg in enumerate(args) if arg == "--container"}
    # Not postgres (the catalog's calls to it are traced) nor the load generator's short-lived curl runs.
    servers = {services[name]["container_name"] for name in DEMO_SERVICES if name not in ("postgres", "load")}
    assert selected == servers


def test_otelbpf_exports_to_a_port_the_collector_listens_on(services: dict) -> None:
    otelbpf, collector = services["otelbpf"], services["collector"]
    env = {k: resolve(v) for k, v in otelbpf["environment"].items()}
    host, port = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    protocol = {"grpc": "grpc", "http/protobuf": "http"}[env["OTEL_EXPORTER_OTLP_PROTOCOL"]]
    if otelbpf.get("network_mode") == "host":
        # It reaches the collector through a port published on the host.
        assert host in ("localhost", "127.0.0.1")
        published = {}
        for spec in collector["ports"]:
            fields = spec.split(":")
            assert fields[0] in ("127.0.0.1", "0.0.0.0") or len(fields) == 2, spec
            published[int(fields[-2])] = int(fields[-1].split("/")[0])
        assert port in published, f"the collector publishes no host port {port}"
        port = published[port]
    else:
        assert host == "collector"
    config_name = re.search(r"\$\{OTELCOL_CONFIG:-([^}]+)\}", collector["command"][0]).group(1)
    config = load_yaml(COLLECTOR_CONFIGS / config_name)
    endpoint = config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
    assert host_port(endpoint)[1] == port
    assert host_port(endpoint)[0] == "0.0.0.0", "a receiver on localhost is unreachable from outside its container"


# --------------------------------------------------------------------------------------------------
# The collector configs
# --------------------------------------------------------------------------------------------------


def test_collector_configs_are_the_documented_three() -> None:
    assert [p.name for p in collector_configs()] == ["both.yaml", "jaeger.yaml", "tempo.yaml"]


def test_the_collector_mounts_its_configs(services: dict) -> None:
    collector = services["collector"]
    directory = re.match(r"--config=(.*)/\$\{OTELCOL_CONFIG", collector["command"][0]).group(1)
    assert mounted(collector, directory) == COLLECTOR_CONFIGS


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: p.name)
def test_collector_pipelines_use_only_defined_components(path: Path) -> None:
    config = load_yaml(path)
    service = config["service"]
    for ext in service.get("extensions", []):
        assert ext in config.get("extensions", {}), f"extension {ext} is not defined"
    assert {"traces", "metrics"} <= set(service["pipelines"]), "otelbpf sends both signals"
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"] and pipeline["exporters"], name
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), f"{name}: {section[:-1]} {component} is not defined"
        processors = pipeline.get("processors", [])
        assert processors[:1] == ["memory_limiter"], f"{name}: memory_limiter goes first"


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: p.name)
def test_collector_exporters_name_compose_services_and_their_ports(path: Path, services: dict) -> None:
    config = load_yaml(path)
    used = {e for p in config["service"]["pipelines"].values() for e in p["exporters"]}
    for name in used:
        settings = config["exporters"][name] or {}
        if "endpoint" not in settings:
            continue  # debug
        host, port = host_port(settings["endpoint"])
        assert host in services, f"{path.name}: {name} points at {host}, not a compose service"
        assert port in listening_ports(host, services[host]), f"{path.name}: {host} does not listen on {port}"
        if host == "prometheus":
            assert urlsplit(settings["endpoint"]).path == "/api/v1/otlp"
            assert "--web.enable-otlp-receiver" in services["prometheus"]["command"]


def test_the_default_config_sends_traces_to_both_back_ends_and_metrics_to_prometheus() -> None:
    pipelines = load_yaml(COLLECTOR_CONFIGS / "both.yaml")["service"]["pipelines"]
    assert {"otlp/jaeger", "otlp/tempo"} <= set(pipelines["traces"]["exporters"])
    assert "otlphttp/prometheus" in pipelines["metrics"]["exporters"]


# --------------------------------------------------------------------------------------------------
# Tempo, Prometheus, Grafana
# --------------------------------------------------------------------------------------------------


def test_tempo_and_prometheus_configs_parse(services: dict) -> None:
    tempo = load_yaml(mounted(services["tempo"], "/etc/tempo.yaml"))
    for protocol in tempo["distributor"]["receivers"]["otlp"]["protocols"].values():
        assert host_port(protocol["endpoint"])[0] == "0.0.0.0"
    prometheus = load_yaml(mounted(services["prometheus"], "/etc/prometheus/prometheus.yml"))
    assert "service.name" in prometheus["otlp"]["promote_resource_attributes"]


def datasources(services: dict) -> list[dict]:
    provisioning = mounted(services["grafana"], "/etc/grafana/provisioning")
    out = []
    for path in sorted((provisioning / "datasources").glob("*.yaml")):
        out += load_yaml(path)["datasources"]
    return out


def test_grafana_datasources_name_compose_services(services: dict) -> None:
    sources = datasources(services)
    assert {d["type"] for d in sources} >= {"prometheus", "tempo"}
    for source in sources:
        host, port = host_port(source["url"])
        assert host in services, f"data source {source['name']} points at {host}, not a compose service"
        assert port in listening_ports(host, services[host])


def test_grafana_loads_the_dashboard(services: dict) -> None:
    grafana = services["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    providers = [p for f in (provisioning / "dashboards").glob("*.yaml") for p in load_yaml(f)["providers"]]
    assert len(providers) == 1
    directory = providers[0]["options"]["path"]
    assert mounted(grafana, directory) == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{directory}/{DASHBOARD.name}"


# --------------------------------------------------------------------------------------------------
# The dashboard against otelbpf's metrics
# --------------------------------------------------------------------------------------------------

_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "%": "percent"}


def prometheus_name(instrument: metrics.Instrument) -> str:
    """The name Prometheus's OTLP receiver gives a metric by default (underscore escaping, with suffixes)."""
    name = re.sub(r"[^a-zA-Z0-9_:]+", "_", instrument.name).strip("_")
    unit = re.sub(r"\{[^}]*\}", "", instrument.unit)  # annotations such as {span} are dropped
    main, _, per = unit.partition("/")
    words = []
    if main == "1":
        if instrument.kind == metrics.GAUGE:
            words.append("ratio")
    elif main:
        words.append(_UNITS.get(main, main))
    if per:
        words += ["per", {"s": "second", "m": "minute", "h": "hour"}.get(per, per)]
    for word in words:
        if word not in name.split("_"):
            name += f"_{word}"
    if instrument.kind == metrics.COUNTER and not name.endswith("_total"):
        name += "_total"
    return name


def exported_instruments() -> list[metrics.Instrument]:
    """Every Instrument otelbpf defines, in any of its modules (request metrics and its own)."""
    import importlib

    found: dict[str, metrics.Instrument] = {}
    for path in sorted((REPO / "otelbpf").glob("*.py")):
        if "Instrument(" not in path.read_text():
            continue
        module = importlib.import_module(f"otelbpf.{path.stem}")
        for value in vars(module).values():
            if isinstance(value, metrics.Instrument):
                found[value.name] = value
    return list(found.values())


def prometheus_series() -> set[str]:
    """The series names Prometheus stores for otelbpf's metrics."""
    out = set()
    for instrument in exported_instruments():
        name = prometheus_name(instrument)
        if instrument.kind == metrics.HISTOGRAM:
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def self_metric_keys() -> set[str]:
    """Attribute keys on otelbpf's own metrics, with every loss reason counted once."""
    lost = dict.fromkeys(self_metrics.LOSS_REASON_VALUES, 1)
    health = Health({}, 1, 1, 1, 0, lost, 0, 1, 1)
    points = self_metrics.counter_points(self_metrics.Reading(health, 0, 0))
    return {key for series in points.values() for attrs in series for key, _ in attrs}


def prometheus_labels() -> set[str]:
    """Label names otelbpf's metrics can carry in Prometheus, plus the ones Prometheus adds."""
    keys = {*metrics.HTTP_SERVER_KEYS, "http.route", *metrics.HTTP_CLIENT_KEYS, *metrics.DB_KEYS}
    keys |= {key for key, _ in metrics.OVERFLOW} | self_metric_keys()
    promoted = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["otlp"]["promote_resource_attributes"]
    return {k.replace(".", "_") for k in keys | set(promoted)} | {"job", "instance", "le", "__name__"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: `name{...}`, `name[...]`, and the alternatives of `__name__=~"a|b"`."""
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{[]", expr)) - _PROMQL_WORDS
    # A bare name as a function's whole argument: sum(name); grouping clauses list labels, not metrics.
    ungrouped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names |= set(re.findall(r"\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\)", ungrouped))
    for alternatives in re.findall(r'__name__=~"([^"]+)"', expr):
        names |= set(alternatives.split("|"))
    return names


def label_names(expr: str) -> set[str]:
    """Label names in `by (...)` clauses and in selectors."""
    labels = set()
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector))
    labels |= set(re.findall(r"label_values\([^)]*,\s*(\w+)\)", expr))
    return labels


def test_prometheus_names_follow_its_otlp_translation() -> None:
    assert prometheus_name(metrics.HTTP_SERVER_DURATION) == "http_server_request_duration_seconds"
    assert prometheus_name(metrics.DB_CLIENT_DURATION) == "db_client_operation_duration_seconds"
    counter = metrics.Instrument("otelbpf.spans.exported", "{span}", "", metrics.COUNTER)
    assert prometheus_name(counter) == "otelbpf_spans_exported_total"
    gauge = metrics.Instrument("otelbpf.ring_buffer.usage", "1", "", metrics.GAUGE)
    assert prometheus_name(gauge) == "otelbpf_ring_buffer_usage_ratio"


def test_dashboard_asks_only_for_metrics_and_labels_otelbpf_exports() -> None:
    series, labels = prometheus_series(), prometheus_labels()
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        unknown = metric_names(expr) - series
        assert not unknown, f"{sorted(unknown)} are not metrics otelbpf exports ({expr})"
        assert metric_names(expr), f"no metric in {expr}"
        assert label_names(expr) <= labels, f"{sorted(label_names(expr) - labels)}: not labels otelbpf's metrics carry"


def test_dashboard_covers_the_red_metrics() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for instrument in (metrics.HTTP_SERVER_DURATION, metrics.HTTP_CLIENT_DURATION, metrics.DB_CLIENT_DURATION):
        name = prometheus_name(instrument)
        assert {f"{name}_count", f"{name}_bucket"} <= used, f"no rate or quantile panel for {instrument.name}"
    exprs = "\n".join(dashboard_exprs())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_dashboard_shows_otelbpfs_loss_and_rate_limit() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for instrument in (self_metrics.SPANS_LOST, self_metrics.SPANS_EXPORTED, self_metrics.RATE_LIMIT):
        assert prometheus_name(instrument) in used, f"no panel for {instrument.name}"
    assert "by (otelbpf_loss_reason)" in "\n".join(dashboard_exprs())


def test_dashboard_panels_use_a_provisioned_datasource(services: dict) -> None:
    uids = {d["uid"] for d in datasources(services)}
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]


# --------------------------------------------------------------------------------------------------
# The demo services
# --------------------------------------------------------------------------------------------------


def test_demo_services_run_the_repositorys_scripts(services: dict) -> None:
    dockerfile = DEPLOY / "demo" / "Dockerfile"
    copied = re.search(r"^COPY (.+) \./$", dockerfile.read_text(), re.M).group(1).split()
    for name in copied:
        assert (dockerfile.parent / name).exists(), name
    for name in DEMO_SERVICES:
        service = services[name]
        assert service["build"] == "./deploy/compose/demo", name
        mounts = {v.split(":")[1]: (REPO / v.split(":")[0]).resolve() for v in service["volumes"]}
        for arg in service["command"]:
            if arg.endswith((".py", ".js", ".sh")):
                path = Path("/demo", arg) if not arg.startswith("/") else Path(arg)
                source = next((src / path.relative_to(dst) for dst, src in mounts.items()
                               if path.is_relative_to(dst)), None)  # fmt: skip
                assert (source and source.exists()) or arg in copied or path.name in copied, f"{name}: {arg}"


def test_demo_services_keep_their_compose_names(services: dict) -> None:
    for name in DEMO_SERVICES:
        env = services[name].get("environment", {})
        assert "OTEL_SERVICE_NAME" not in env, f"{name}: the compose service name should name its spans"


def test_demo_calls_go_to_services_and_ports_that_exist(services: dict) -> None:
    urls = re.findall(r"https?://[a-z]+:\d+", (DEPLOY / "demo" / "load.sh").read_text())
    for name in DEMO_SERVICES:
        urls += [a for a in services[name]["command"] if re.match(r"https?://", a)]
        urls += [f"//{h}:5432" for h in re.findall(r"host=(\w+)", " ".join(services[name]["command"]))]
    assert len(urls) >= 5
    for url in urls:
        host, port = host_port(url)
        assert host in DEMO_SERVICES, url
        assert port in demo_ports(services[host]), f"{host} does not listen on {port}"
