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
