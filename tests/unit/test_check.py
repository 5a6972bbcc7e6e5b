"""otelbpf check's findings from crafted system files, and its USDT note reader on crafted and real ELF files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbpf import check, elf
from otelbpf.check import MISSING, OK, UNKNOWN, Finding, report
from otelbpf.elf import ElfError

PYTHON311 = Path("/usr/bin/python3.11")


def note(provider: bytes, name: bytes, kind: int = 3, owner: bytes = b"stapsdt\0") -> bytes:
    """One ELF note as the stapsdt convention lays it out: pc, base, semaphore, then provider, name, args."""
    desc = struct.pack("<QQQ", 0x1000, 0x2000, 0) + provider + b"\0" + name + b"\0" + b"-8@%rax\0"

    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(owner), len(desc), kind) + pad(owner) + pad(desc)


def elf_with_notes(path: Path, section: bytes, name: bytes = b".note.stapsdt") -> Path:
    """A minimal ELF64 file: a header, one note section and the section-name table."""
    names = b"\0" + name + b"\0.shstrtab\0"
    notes_at = 64
    names_at = notes_at + len(section)
    shoff = names_at + len(names)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    null = b"\0" * 64
    sh_note = struct.pack("<IIQQQQIIQQ", 1, 7, 0, 0, notes_at, len(section), 0, 0, 4, 0)
    sh_names = struct.pack("<IIQQQQIIQQ", 2 + len(name), 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    body = ehdr + section + names
    path.write_bytes(body + b"\0" * (shoff - len(body)) + null + sh_note + sh_names)
    return path


def test_notes_are_read_in_order_and_other_owners_skipped() -> None:
    data = note(b"python", b"function__entry") + note(b"gnu", b"x", owner=b"GNU\0") + note(b"libc", b"setjmp")
    assert elf._notes(data) == [("python", "function__entry"), ("libc", "setjmp")]


def test_a_damaged_note_section_keeps_what_was_read() -> None:
    data = note(b"python", b"line") + struct.pack("<III", 8, 4000, 3) + b"stapsdt\0"
    assert elf._notes(data) == [("python", "line")]
    assert elf._notes(b"\x01\x02") == []


def test_usdt_in_a_crafted_interpreter(tmp_path: Path) -> None:
    probes = note(b"python", b"function__entry") + note(b"python", b"function__return")
    good = elf_with_notes(tmp_path / "python-dtrace", probes)
    assert elf.stapsdt_probes(good) == [("python", "function__entry"), ("python", "function__return")]
    assert check.usdt(str(good)).state == OK
    partial = elf_with_notes(tmp_path / "python-gc-only", note(b"python", b"gc__start"))
    finding = check.usdt(str(partial))
    assert (finding.state, finding.basic) == (MISSING, False)
    assert "1 USDT probes, none for Python function calls" in finding.detail
    other = elf_with_notes(tmp_path / "no-stapsdt", note(b"python", b"function__entry"), name=b".note.other")
    assert "no USDT probes" in check.usdt(str(other)).detail


def test_usdt_of_what_is_not_an_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\nexec python3.11 \"$@\"\n")
    assert "is a script" in check.usdt(str(script)).detail
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ElfError):
        elf.stapsdt_probes(text)
    assert check.usdt(str(text)).state == MISSING
    assert check.usdt(str(tmp_path / "absent")).detail.endswith("no such file")


def test_debian_python311_has_the_function_probes() -> None:
    found = elf.stapsdt_probes(PYTHON311)
    assert {("python", p) for p in check.PYTHON_FUNCTION_PROBES} <= set(found)
    assert check.usdt(str(PYTHON311)).state == OK


def test_kprobes_and_uprobes_from_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "devices"
    (sysfs / "uprobe").mkdir(parents=True)
    none = [tmp_path / "no-tracefs"]
    assert check.kprobes(sysfs, none).state == MISSING
    assert check.uprobes(sysfs).state == OK
    (sysfs / "kprobe").mkdir()
    assert check.kprobes(sysfs, none).state == OK
    assert check.uprobes(tmp_path / "empty").state in (OK, MISSING)  # falls back to this machine's tracefs


def test_tracepoints_needed_and_optional(tmp_path: Path) -> None:
    for tp in ("syscalls/sys_enter_read", "sock/sock_recv_length"):
        (tmp_path / "events" / tp).mkdir(parents=True)
        (tmp_path / "events" / tp / "format").write_text("")
    needed = ["syscalls:sys_enter_read", "sock:sock_recv_length"]
    finding = check.tracepoints(needed, ["tcp:tcp_send_reset"], tmp_path)
    assert finding.state == OK and "run with --no-tcp-facts" in finding.detail
    finding = check.tracepoints([*needed, "syscalls:sys_exit_read"], root=tmp_path)
    assert finding.state == MISSING and finding.basic
    assert "syscalls:sys_exit_read" in finding.detail and "CONFIG_FTRACE_SYSCALLS" in finding.detail


def test_kernel_headers(tmp_path: Path) -> None:
    assert check.kernel_headers(tmp_path, "6.1.0-test").state == MISSING
    src = tmp_path / "src" / "linux-headers-6.1.0"
    (src / "include").mkdir(parents=True)
    (tmp_path / "6.1.0-test").mkdir()
    (tmp_path / "6.1.0-test" / "build").symlink_to(src)
    finding = check.kernel_headers(tmp_path, "6.1.0-test")
    assert finding.state == OK and finding.detail.endswith(f"-> {src}")


def test_btf_missing(tmp_path: Path) -> None:
    finding = check.btf(str(tmp_path / "vmlinux"))
    assert (finding.state, finding.basic) == (MISSING, True)
    assert "CONFIG_DEBUG_INFO_BTF" in finding.detail
    (tmp_path / "vmlinux").write_bytes(b"not btf")
    assert check.btf(str(tmp_path / "vmlinux")).state == MISSING


def test_privileges_from_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status"
    monkeypatch.setattr(check.os, "geteuid", lambda: 0)
    status.write_text("Name:\tx\nCapEff:\t000001ffffffffff\n")
    finding = check.privileges(status)
    assert finding.state == OK and "CAP_BPF" in finding.detail
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert check.privileges(status).state == MISSING
    monkeypatch.setattr(check.os, "geteuid", lambda: 1000)
    finding = check.privileges(status)
    assert finding.state == MISSING and "must run as root" in finding.detail


def test_tls_of_a_process_that_does_not_exist() -> None:
    assert check.tls_libraries(2**22 + 1).detail == "no such process"


def test_report_exit_code_follows_the_basic_features() -> None:
    fine = [Finding("privileges", OK, "root", basic=True), Finding("kprobes", MISSING, "no kprobes")]
    text, code = report(fine)
    assert code == 0 and text.splitlines()[-1].startswith("otelbpf can run here")
    assert text.splitlines()[1] == "missing  kprobes    no kprobes"
    text, code = report([*fine, Finding("ring buffers", UNKNOWN, "not allowed", basic=True)])
    assert code == 1 and text.splitlines()[-1] == "otelbpf cannot run here: ring buffers (see above)"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_note_sections_never_raise(data: bytes) -> None:
    for provider, name in elf._notes(data):
        assert isinstance(provider, str) and isinstance(name, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=12))
def test_fuzz_mutated_elf_files_give_probes_or_elf_error(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    path = elf_with_notes(tmp_path / "mutated", note(b"python", b"function__entry") + note(b"python", b"line"))
    data = bytearray(path.read_bytes())
    for at, value in flips:
        data[at % len(data)] = value
    path.write_bytes(bytes(data))
    try:
        found = elf.stapsdt_probes(path)
    except ElfError:
        return
    assert all(isinstance(p, str) and isinstance(n, str) for p, n in found)
