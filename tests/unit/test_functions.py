"""Function specs from flags and config files: parsing, settings, library and symbol matching, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.functions import (
    DEFAULT_MAX_PER_SECOND,
    NATIVE,
    PYTHON,
    FunctionSpec,
    SpecError,
    all_specs,
    library_name_matches,
    load_config,
    matching_symbols,
    parse_duration_ns,
    parse_spec,
    specs_from_config,
)


def test_native_specs() -> None:
    spec = parse_spec("libwork.so:work_compute")
    assert (spec.kind, spec.library, spec.symbol, spec.file) == (NATIVE, "libwork.so", "work_compute", "")
    assert (spec.min_duration_ns, spec.max_per_second, spec.name) == (0, DEFAULT_MAX_PER_SECOND, "")
    assert not spec.is_glob
    nginx = parse_spec("/usr/sbin/nginx:ngx_http_core_run_phases")
    assert nginx.library == "/usr/sbin/nginx" and nginx.matches_library("/usr/sbin/../sbin/nginx")
    assert not nginx.matches_library("/usr/local/sbin/nginx")
    assert parse_spec("libfoo:ns::Class::method").symbol == "ns::Class::method"


def test_python_specs() -> None:
    assert parse_spec("python:handle") == FunctionSpec(PYTHON, "", "handle", "", text="python:handle")
    spec = parse_spec("python:app/views.py:index")
    assert (spec.kind, spec.file, spec.symbol) == (PYTHON, "app/views.py", "index")
    assert not spec.matches_library("/usr/bin/python3.11")
    assert parse_spec("python:/srv/a.py:get_*").is_glob


def test_settings_on_a_flag_and_in_a_config_entry() -> None:
    spec = parse_spec("libpq:PQexec, min_duration=1.5ms ,max_per_second=100,name=query")
    assert (spec.min_duration_ns, spec.max_per_second, spec.name) == (1_500_000, 100, "query")
    assert spec.text == "libpq:PQexec, min_duration=1.5ms ,max_per_second=100,name=query"
    same = parse_spec("libpq:PQexec", {"min_duration": "1500us", "max_per_second": 100, "name": "query"})
    assert (same.min_duration_ns, same.max_per_second, same.name) == (1_500_000, 100, "query")
    assert parse_spec("libc:getaddrinfo,max_per_second=0").max_per_second == 0


@pytest.mark.parametrize(
    ("value", "ns"),
    [(0, 0), ("0", 0), (0.002, 2_000_000), ("2ms", 2_000_000), ("250us", 250_000), ("250µs", 250_000),
     ("1.5s", 1_500_000_000), ("0.5", 500_000_000), ("40 ns", 40), (".5ms", 500_000)],
)  # fmt: skip
def test_durations(value: object, ns: int) -> None:
    assert parse_duration_ns(value, "x") == ns


@pytest.mark.parametrize("value", ["-1ms", "1h", "fast", "", "1e3", True, -0.5, "ms"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(SpecError, match="^x: "):
        parse_duration_ns(value, "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("work_compute", "expected LIB:SYMBOL"),
        (":f", "expected LIB:SYMBOL"),
        ("libc:", "expected LIB:SYMBOL"),
        ("python:app.py:", "no Python function name"),
        ("libc:a:b", "one ':' between LIB and SYMBOL"),
        ("libc:get addrinfo", "no spaces"),
        ("libc:get[abc", "unclosed '\\['"),
        ("libc:f,fast=1", "not one of min_duration=..."),
        ("libc:f,min_duration", "not one of"),
        ("libc:f,name=a,name=b", "name given twice"),
        ("libc:f,max_per_second=-3", "max_per_second: -3 is negative"),
        ("libc:f,max_per_second=lots", "is not a whole number"),
        ("libc:f,min_duration=soon", "min_duration: 'soon' is not a duration"),
    ],
)
def test_bad_specs_say_what_is_wrong_in_one_line(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(text)
    assert "\n" not in str(caught.value) and repr(text.strip()) in str(caught.value)


def test_library_names() -> None:
    assert library_name_matches("libc.so.6", "libc")
    assert library_name_matches("libc-2.31.so", "libc")
    assert not library_name_matches("libcrypto.so.3", "libc")
    assert library_name_matches("libwork.so.1", "libwork.so")
    assert library_name_matches("libwork.so", "libwork.so")
    assert library_name_matches("nginx", "nginx") and not library_name_matches("nginx-debug2", "nginxd")
    spec = parse_spec("libpq:PQexec")
    assert spec.matches_library("/usr/lib/x86_64-linux-gnu/libpq.so.5.15")
    assert not spec.matches_library("/usr/lib/x86_64-linux-gnu/libpqwalreceiver.so")


def test_symbol_globs_are_bounded() -> None:
    symbols = {"work_compute": 0x1100, "work_step": 0x1200, "work_io": 0x1300, "helper": 0x1400}
    assert matching_symbols(parse_spec("libwork:work_step"), symbols, 1) == {"work_step": 0x1200}
    assert matching_symbols(parse_spec("libwork:missing"), symbols, 1) == {}
    assert list(matching_symbols(parse_spec("libwork:work_*"), symbols, 3)) == ["work_compute", "work_io", "work_step"]
    with pytest.raises(SpecError, match="matches 3 functions in one file, more than the limit of 2"):
        matching_symbols(parse_spec("libwork:work_*"), symbols, 2)
    two = matching_symbols(parse_spec("libwork:work_[cs]*"), symbols, 2)
    assert two == {"work_compute": 0x1100, "work_step": 0x1200}


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "otelbpf.yaml"
    path.write_text(
        "functions:\n"
        "  - libwork.so:work_compute\n"
        "  - function: python:app.py:handle\n"
        "    min_duration: 2ms\n"
        "    max_per_second: 50\n"
        "    name: handler\n"
        "  - function: libc:getaddrinfo\n"
        "    min_duration: 0.001\n"
    )
    specs = load_config(path)
    assert [s.text for s in specs] == ["libwork.so:work_compute", "python:app.py:handle", "libc:getaddrinfo"]
    assert (specs[1].min_duration_ns, specs[1].max_per_second, specs[1].name) == (2_000_000, 50, "handler")
    assert specs[2].min_duration_ns == 1_000_000
    # Flags come after the file's entries; the same spec twice is kept once.
    both = all_specs(["libwork.so:work_compute", "libc:malloc"], path)
    assert [s.text for s in both] == [*[s.text for s in specs], "libc:malloc"]
    assert all_specs([], None) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n", "expected a mapping with functions"),
        ("function: [libc:f]\n", "unknown key\\(s\\) function \\(known: functions\\)"),
        ("functions: libc:f\n", "functions must be a list"),
        ("functions:\n  - 3\n", "functions\\[1\\]: expected a spec string"),
        ("functions:\n  - name: x\n", "functions\\[1\\]: needs function:"),
        (
            "functions:\n  - libc:f\n  - function: libc:g\n    min_duration: soon\n",
            "functions\\[2\\]: 'libc:g': min_duration",
        ),
        (
            "functions:\n  - function: libc:g\n    colour: red\n",
            "functions\\[1\\]: 'libc:g': unknown setting\\(s\\) colour",
        ),
        ("functions: [libc:f\n", "not valid YAML at line 2"),
    ],
)
def test_bad_config_files_name_the_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_a_missing_or_empty_config_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the config file .*: No such file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == []
    assert specs_from_config({"functions": None}, "x") == []


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_any_text_is_a_spec_or_a_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert "\n" not in str(exc).replace(repr(text.strip()), "")
        return
    assert spec.kind in (NATIVE, PYTHON) and spec.symbol
    assert spec.min_duration_ns >= 0 and spec.max_per_second >= 0
