"""The linking flags of ``otelbpf run``: defaults, environment variables, flags, and bad values."""

from __future__ import annotations

import pytest

from otelbpf.cli import parse_args
from otelbpf.runner import linker_for


def parse(argv: list[str], env: dict[str, str] | None = None):
    return parse_args(["run", *argv], env or {})


def test_defaults_link_with_a_half_second_window() -> None:
    args = parse([])
    assert (args.link_window, args.link_max_hold, args.link_max_spans) == (0.5, 10.0, 100000)
    linker = linker_for(args)
    assert linker is not None
    assert (linker.window_s, linker.max_hold_s, linker.max_spans) == (0.5, 10.0, 100000)


def test_environment_and_flags_over_it() -> None:
    env = {"OTELBPF_LINK_WINDOW": "2", "OTELBPF_LINK_MAX_HOLD": "30", "OTELBPF_LINK_MAX_SPANS": "500"}
    assert (parse([], env).link_window, parse([], env).link_max_hold, parse([], env).link_max_spans) == (2, 30, 500)
    args = parse(["--link-window", "0.25", "--link-max-spans", "7"], env)
    assert (args.link_window, args.link_max_hold, args.link_max_spans) == (0.25, 30, 7)


def test_window_zero_turns_linking_off() -> None:
    assert linker_for(parse(["--link-window", "0"])) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--link-window", "-1"], "--link-window must be 0"),
        (["--link-window", "5", "--link-max-hold", "1"], "must be at least --link-window"),
        (["--link-max-spans", "0"], "--link-max-spans must be at least 1"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        linker_for(parse(argv))


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SystemExit, match="OTELBPF_LINK_WINDOW='soon' is not a number"):
        parse([], {"OTELBPF_LINK_WINDOW": "soon"})
    with pytest.raises(SystemExit, match="OTELBPF_LINK_MAX_SPANS='1.5' is not an integer"):
        parse([], {"OTELBPF_LINK_MAX_SPANS": "1.5"})
