"""Locating configured native functions in real files: this test process's own libc, the linker cache, PATH."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from otelbpf.elf import function_symbols
from otelbpf.function_sites import FunctionLocator
from otelbpf.functions import SpecError, parse_spec

PID = os.getpid()


def own_libc() -> str:
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libc.so" in line and "x" in line.split()[1]}
    (path,) = paths
    return path


def locator(*specs: str, **kw: int) -> FunctionLocator:
    return FunctionLocator([parse_spec(s) for s in specs], **kw)


def test_a_function_in_a_mapped_library() -> None:
    libc = own_libc()
    (site,) = locator("libc:getaddrinfo", "python:handle").sites_in(PID)
    assert (site.shown, site.symbol) == (libc, "getaddrinfo")
    assert site.address == function_symbols(libc)["getaddrinfo"] > 0
    assert site.file_id == (os.stat(libc).st_dev, os.stat(libc).st_ino)
    assert site.spec.text == "libc:getaddrinfo"


def test_every_spec_that_names_something_real_passes_the_start_check() -> None:
    libc = os.path.realpath(own_libc())
    specs = [
        "libc:getaddrinfo",  # mapped by this process
        f"{libc}:getaddrinfo",  # a path
        "libgnutls:gnutls_record_recv",  # not mapped here: found in the linker cache
        "libc:getaddrinf?",  # a glob
        "nginx:ngx_http_core_run_phases",  # a program on PATH (make setup installs nginx for the tests)
    ]
    assert shutil.which("nginx"), "nginx is not installed (make setup installs it)"
    locator(*specs).check_at_start([PID])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("libc:no_such_function_here", "no function 'no_such_function_here' in "),
        ("libnothere:f", "unknown library 'libnothere': no target process maps it"),
        ("/no/such/lib.so:f", "no such file /no/such/lib.so"),
        ("libc:str*", "matches .* functions in one file, more than the limit of 5"),
    ],
)
def test_a_spec_naming_nothing_real_is_an_error_at_start(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        locator(spec, max_symbols=5).check_at_start([PID])
    assert str(caught.value).startswith(repr(spec)) and "\n" not in str(caught.value)


def test_a_file_that_is_not_elf_is_an_error_at_start(tmp_path: Path) -> None:
    lib = tmp_path / "libfake.so"
    lib.write_text("not elf")
    with pytest.raises(SpecError, match="cannot read .*libfake.so: .*not an ELF file"):
        locator(f"{lib}:f").check_at_start([])


def test_a_mapped_library_without_the_function_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    loc = locator("libc:no_such_function_here", "libc:str*", max_symbols=5)
    with caplog.at_level(logging.WARNING, logger="otelbpf.function_sites"):
        assert loc.sites_in(PID) == []
        assert loc.sites_in(PID) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert f"pid {PID} maps {own_libc()}, which has no function 'no_such_function_here'" in messages[0]
    assert "more than the limit of 5" in messages[1] and "not hooked there" in messages[1]


def test_a_process_that_is_gone_has_no_sites() -> None:
    assert locator("libc:getaddrinfo").sites_in(2**22 + 1) == []


def test_symbols_are_read_once_per_file() -> None:
    loc = locator("libc:getaddrinfo", "libc:getnameinfo")
    assert {s.symbol for s in loc.sites_in(PID)} == {"getaddrinfo", "getnameinfo"}
    assert len(loc._symbols) == 1
