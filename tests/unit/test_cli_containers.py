"""The container flags of ``otelbpf run``: --container, its scan interval, and where metadata is read."""

from __future__ import annotations

import pytest

from otelbpf.cli import parse_args
from otelbpf.runner import RunError, check_containers, check_scan_intervals, container_metadata, tls_per_process
from otelbpf.targets import ContainerWatch, TargetSpec


def parse(argv: list[str], env: dict[str, str] | None = None):
    return parse_args(["run", *argv], env or {})


def test_defaults() -> None:
    args = parse([])
    assert args.container == []
    assert args.container_scan_interval == 1.0
    assert (args.docker_socket, args.docker_dir, args.kube_log_dir, args.kube_api) == (
        None,
        "/var/lib/docker/containers",
        "/var/log",
        True,
    )


def test_flags_replace_the_environment() -> None:
    env = {"OTELBPF_CONTAINERS": "a, b,,", "OTELBPF_CONTAINER_SCAN_INTERVAL": "0.25"}
    assert parse([], env).container == ["a", "b"]
    assert parse([], env).container_scan_interval == 0.25
    args = parse(["--container", "shop", "--container", "4ecda132", "--container-scan-interval", "2"], env)
    assert (args.container, args.container_scan_interval) == (["shop", "4ecda132"], 2.0)
    assert parse_args(["record", "f.rec", "--container", "x"], {}).container == ["x"]


def test_metadata_paths_from_flags_and_environment() -> None:
    env = {
        "OTELBPF_DOCKER_DIR": "/host/docker",
        "OTELBPF_KUBE_LOG_DIR": "/host/log",
        "DOCKER_HOST": "unix:///run/docker-alt.sock",
        "OTELBPF_KUBE_API": "false",
        "K8S_NODE_NAME": "node-3",
    }
    args = parse([], env)
    meta = container_metadata(args, env)
    assert meta.docker.socket_path == "/run/docker-alt.sock"
    assert meta.docker.state_dir == "/host/docker"
    assert str(meta.kubernetes.logs.log_dir) == "/host/log"
    assert meta.kubernetes.api is None and meta.kubernetes.node_name == "node-3"
    args = parse(["--docker-socket", "/s.sock", "--docker-dir", "/d", "--kube-log-dir", "/l"], env)
    meta = container_metadata(args, env)
    assert (meta.docker.socket_path, meta.docker.state_dir, str(meta.kubernetes.logs.log_dir)) == (
        "/s.sock",
        "/d",
        "/l",
    )


def test_negative_container_scan_interval_is_refused() -> None:
    with pytest.raises(RunError, match=r"^--container-scan-interval must be 0 \(scan only at start\) or more, got -1$"):
        check_scan_intervals(parse(["--container-scan-interval", "-1"]))


def test_a_container_selection_is_a_selection() -> None:
    spec = TargetSpec(containers=["shop"])
    assert not spec.trace_all
    assert spec.describe() == "container shop"
    assert tls_per_process(parse(["--container", "shop"]), spec) is True


def test_ambiguous_prefix_is_an_error_and_a_missing_container_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    watch = ContainerWatch(["4ecd", "later"], lambda ref: ())
    watch.matched["4ecd"] = {"4ecd" + "0" * 60, "4ecd" + "1" * 60}
    with pytest.raises(RunError, match="^--container 4ecd matches 2 containers: 4ecd00000000, 4ecd11111111$"):
        check_containers(watch, 1.0)
    del watch.matched["4ecd"]
    watch.matched["4ecd"] = {"4ecd" + "0" * 60}
    check_containers(watch, 1.0)
    assert "container later is not running: it will be traced when it starts" in caplog.text
