"""The selection flags of ``otelbpf run``: --pid, --exe, --port and how often ports are looked up again."""

from __future__ import annotations

import pytest

from otelbpf.cli import parse_args
from otelbpf.runner import RunError, check_scan_intervals


def parse(argv: list[str], env: dict[str, str] | None = None):
    return parse_args(["run", *argv], env or {})


def test_defaults() -> None:
    args = parse([])
    assert (args.pid, args.exe, args.port) == ([], [], [])
    assert args.port_scan_interval == 5.0


def test_flags() -> None:
    args = parse(["--pid", "7", "--exe", "nginx", "--port", "80", "--port", "443", "--port-scan-interval", "0.5"])
    assert (args.pid, args.exe, args.port) == ([7], ["nginx"], [80, 443])
    assert args.port_scan_interval == 0.5


def test_environment_and_flag_over_it() -> None:
    assert parse([], {"OTELBPF_PORT_SCAN_INTERVAL": "0"}).port_scan_interval == 0.0
    args = parse(["--port-scan-interval", "2"], {"OTELBPF_PORT_SCAN_INTERVAL": "9"})
    assert args.port_scan_interval == 2.0


def test_bad_environment_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="OTELBPF_PORT_SCAN_INTERVAL='often' is not a number"):
        parse([], {"OTELBPF_PORT_SCAN_INTERVAL": "often"})


@pytest.mark.parametrize("flag", ["--port-scan-interval", "--tls-scan-interval"])
def test_negative_scan_interval_is_refused_with_the_flag_named(flag: str) -> None:
    with pytest.raises(RunError, match=f"^{flag} must be 0 \\(scan only at start\\) or more, got -1$"):
        check_scan_intervals(parse([flag, "-1"]))
    check_scan_intervals(parse([flag, "0"]))
