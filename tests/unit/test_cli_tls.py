"""The HTTPS flags of ``otelbpf run``: defaults, environment variables, and flags over them."""

from __future__ import annotations

import pytest

from otelbpf.cli import parse_args


def parse(argv: list[str], env: dict[str, str] | None = None):
    return parse_args(["run", *argv], env or {})


def test_defaults() -> None:
    args = parse([])
    assert args.tls is True
    assert args.tls_library == []
    assert args.tls_scan_interval == 1.0


def test_flags() -> None:
    args = parse(
        ["--no-tls", "--tls-library", "/a/libssl.so.3", "--tls-library", "/b/node"] + ["--tls-scan-interval", "0"]
    )
    assert args.tls is False
    assert args.tls_library == ["/a/libssl.so.3", "/b/node"]
    assert args.tls_scan_interval == 0.0


def test_environment() -> None:
    env = {
        "OTELBPF_TLS": "false",
        "OTELBPF_TLS_LIBRARIES": "/a/libssl.so.3, /b/node",
        "OTELBPF_TLS_SCAN_INTERVAL": "2.5",
    }
    args = parse([], env)
    assert args.tls is False
    assert args.tls_library == ["/a/libssl.so.3", "/b/node"]
    assert args.tls_scan_interval == 2.5


def test_flags_replace_the_environment_list() -> None:
    args = parse(["--tls-library", "/c/libssl.so.1.1"], {"OTELBPF_TLS_LIBRARIES": "/a/libssl.so.3"})
    assert args.tls_library == ["/c/libssl.so.1.1"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTELBPF_TLS": "maybe"}, "OTELBPF_TLS='maybe' is not a boolean"),
        ({"OTELBPF_TLS_SCAN_INTERVAL": "soon"}, "OTELBPF_TLS_SCAN_INTERVAL='soon' is not a number"),
    ],
)
def test_bad_environment_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        parse([], env)


def test_attach_mode_and_budget() -> None:
    args = parse([])
    assert (args.tls_attach, args.tls_max_process_probes) == ("auto", 512)
    args = parse(["--tls-attach", "file-wide", "--tls-max-process-probes", "64"])
    assert (args.tls_attach, args.tls_max_process_probes) == ("file-wide", 64)
    args = parse([], {"OTELBPF_TLS_ATTACH": "per-process", "OTELBPF_TLS_MAX_PROCESS_PROBES": "8"})
    assert (args.tls_attach, args.tls_max_process_probes) == ("per-process", 8)
    with pytest.raises(SystemExit):
        parse(["--tls-attach", "sometimes"])


@pytest.mark.parametrize(
    ("mode", "selection", "per_process"),
    [
        ("auto", [], False),
        ("auto", ["--pid", "1"], True),
        ("auto", ["--exe", "node"], True),
        ("file-wide", ["--port", "443"], False),
        ("per-process", ["--exe", "node"], True),
    ],
)
def test_which_selections_get_per_process_probes(mode: str, selection: list[str], per_process: bool) -> None:
    from otelbpf.runner import tls_per_process
    from otelbpf.targets import TargetSpec

    args = parse(["--tls-attach", mode, *selection])
    spec = TargetSpec(pids=args.pid, exes=args.exe, ports=args.port)
    assert tls_per_process(args, spec) is per_process


def test_per_process_probes_need_a_selection() -> None:
    from otelbpf.runner import RunError, tls_per_process
    from otelbpf.targets import TargetSpec

    with pytest.raises(RunError, match="needs a selection"):
        tls_per_process(parse(["--tls-attach", "per-process"]), TargetSpec())
