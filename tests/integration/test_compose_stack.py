"""docker-compose.yml's demo services, run and traced by its otelbpf service (the back ends are not run here).

The collector, Jaeger, Tempo, Prometheus and Grafana images cannot be pulled on the development machines
(tests/unit/test_compose.py checks their configs), so otelbpf exports to the test's OTLP receiver on the
host's loopback instead of the collector. Everything else is the compose file's own: the demo image built
from deploy/compose/demo, the services' commands, the load generator, otelbpf's selection. Each service
must come out under its compose service name, the orders -> stock -> prices chain as one trace, and the
catalog's PostgreSQL calls as its children; metrics must flow too.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.integration.docker_env import docker, docker_engine
from tests.integration.helpers import REPO, clean_env
from tests.integration.test_image import image, missing_capabilities
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration
__all__ = ["docker_engine", "image"]  # fixtures, imported for pytest

PROJECT = "otelbpf-test-stack"
DEMO_IMAGE = "otelbpf-demo:latest"
DEMO = ("prices", "stock", "orders", "shop", "postgres", "catalog", "load")
SERVER, CLIENT = 2, 3  # SpanKind
READY_TIMEOUT_S = 120.0
TRACES_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def demo_image(docker_engine: None) -> str:
    """The demo services' image, built as compose would but with host networking (apt needs it here)."""
    docker("build", "--network", "host", "-t", DEMO_IMAGE, str(REPO / "deploy" / "compose" / "demo"), timeout=900)
    return DEMO_IMAGE


def override(tmp_path: Path, image: str) -> Path:
    """Export to the test's receiver, metrics every second; without `privileged` where the host can't grant it."""
    text = (
        "services:\n  otelbpf:\n    environment:\n      OTEL_METRIC_EXPORT_INTERVAL: '1000'\n"
        "  load:\n    environment:\n      LOAD_INTERVAL: '0.5'\n"
    )
    if docker("run", "--rm", "--privileged", "--entrypoint", "true", image, check=False).returncode != 0:
        text = text.replace(
            "  otelbpf:\n",
            "  otelbpf:\n    privileged: false\n    cap_add: [ALL]\n"
            f"    cap_drop: [{', '.join(missing_capabilities())}]\n"
            "    security_opt: [seccomp=unconfined, apparmor=unconfined]\n",
        )
    path = tmp_path / "compose.stack-test.yml"
    path.write_text(text)
    return path


def compose(files: list[str], env: dict[str, str], *args: str, timeout: float = 120.0) -> str:
    argv = ["docker-compose", *files, "-p", PROJECT, *args]
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        pytest.fail(f"docker-compose {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout + res.stderr


def otelbpf_logs(files: list[str], env: dict[str, str]) -> str:
    cid = compose(files, env, "ps", "-q", "otelbpf").strip()
    res = docker("logs", cid, check=False)
    return res.stdout + res.stderr


def demo_spans(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    """Spans of the demo's containers."""
    return [s for s in receiver.spans() if str(s.resource.get("container.name", "")).startswith("otelbpf-demo-")]


def missing(spans: list[ReceivedSpan]) -> list[str]:
    """What the demo should have produced by now and has not."""
    have = {(s.resource.get("service.name"), s.kind, s.name) for s in spans}
    wanted = [
        ("orders", SERVER, "GET /order/{id}"),
        ("orders", CLIENT, "GET /stock/{id}"),
        ("stock", SERVER, "GET /stock/{id}"),
        ("stock", CLIENT, "GET /price/{id}"),
        ("prices", SERVER, "GET /price/{id}"),
        ("shop", SERVER, "GET /checkout/{id}"),
        ("shop", CLIENT, "GET /payments/{id}"),
        ("shop", SERVER, "GET /payments/{id}"),
        ("catalog", SERVER, "GET /item/{id}"),
        ("catalog", SERVER, "GET /items"),
    ]
    out = [f"{w}" for w in wanted if w not in have]
    if not any(s.resource.get("service.name") == "catalog" and s.attributes.get("db.system.name") == "postgresql"
               for s in spans):  # fmt: skip
        out.append("catalog's PostgreSQL calls")
    return out


def test_demo_services_are_traced_under_their_compose_names(
    image: str, demo_image: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    t0 = time.monotonic()
    with OtlpReceiver() as receiver:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint)
        files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(override(tmp_path, image))]
        try:
            # All at once, as `docker compose up` does: the services start while otelbpf compiles its programs.
            compose(files, env, "up", "-d", "--no-build", "otelbpf", *DEMO, timeout=300.0)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while "otelbpf: ready: " not in (logs := otelbpf_logs(files, env)):
                assert time.monotonic() < deadline, f"otelbpf is not ready:\n{logs}"
                time.sleep(0.5)
            deadline = time.monotonic() + TRACES_TIMEOUT_S
            while (lacking := missing(demo_spans(receiver))) and time.monotonic() < deadline:
                time.sleep(0.5)
            seen = {(s.resource.get("service.name"), s.resource.get("container.name")) for s in receiver.spans()}
            assert not lacking, (
                f"no {lacking} after {TRACES_TIMEOUT_S:.0f} s; seen {seen}:\n{otelbpf_logs(files, env)[-3000:]}"
            )
            assert receiver.wait_for_metrics("http.server.request.duration", timeout_s=10)
            assert receiver.wait_for_metrics("otelbpf.spans.exported", timeout_s=10)
        finally:
            compose(files, env, "down", "-t", "20", "--remove-orphans", timeout=180.0)
    spans = receiver.spans()
    assert spans == demo_spans(receiver), "otelbpf traced beyond the demo's containers"

    # Named by compose service; nothing set OTEL_SERVICE_NAME. Only the selected containers are traced.
    for s in spans:
        service = s.resource["service.name"]
        assert service in DEMO, s.resource
        assert s.resource["container.name"] == f"otelbpf-demo-{service}", s.resource

    # orders -> stock -> prices (over HTTPS) as one trace, each hop the child of the one before.
    by_trace: dict[str, dict[str, ReceivedSpan]] = defaultdict(dict)
    for s in spans:
        by_trace[s.trace_id][f"{s.resource['service.name']} {s.kind} {s.name}"] = s
    chains = [t for t in by_trace.values() if "prices 2 GET /price/{id}" in t and "orders 2 GET /order/{id}" in t]
    assert chains, "no trace runs from orders to prices"
    chain = chains[0]
    hops = ["orders 2 GET /order/{id}", "orders 3 GET /stock/{id}", "stock 2 GET /stock/{id}",
            "stock 3 GET /price/{id}", "prices 2 GET /price/{id}"]  # fmt: skip
    for parent, child in zip(hops, hops[1:], strict=False):
        assert chain[child].parent_span_id == chain[parent].span_id, (parent, child)
    assert chain["prices 2 GET /price/{id}"].attributes.get("url.scheme") == "https"

    # The catalog's queries are children of the request that made them.
    servers = {s.span_id for s in spans if s.resource["service.name"] == "catalog" and s.kind == SERVER}
    queries = [s for s in spans if s.resource["service.name"] == "catalog" and "db.system.name" in s.attributes]
    assert any(q.parent_span_id in servers for q in queries)

    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"test_compose_stack: {len(spans)} demo spans in {time.monotonic() - t0:.0f} s")
