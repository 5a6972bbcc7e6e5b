"""Missing privileges and kernel features become one clear line (no root needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from otelbpf import preflight, probes
from otelbpf.preflight import PreflightError


def test_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    with pytest.raises(PreflightError, match="must run as root"):
        preflight.check_root()


@pytest.mark.parametrize(
    ("cap_eff", "allowed"),
    [
        ("000001ffffffffff", True),  # a privileged container, or root on the host
        ("0000000000200000", True),  # CAP_SYS_ADMIN alone
        ("000000c000000000", True),  # CAP_BPF and CAP_PERFMON
        ("00000000a80425fb", False),  # Docker's default set
        ("0000008000000000", False),  # CAP_BPF without CAP_PERFMON
    ],
)
def test_root_without_capabilities(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cap_eff: str, allowed: bool
) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n")
    if allowed:
        preflight.check_root(status)
        return
    with pytest.raises(PreflightError, match="--privileged") as err:
        preflight.check_root(status)
    assert "\n" not in str(err.value)


def test_capabilities_unknown_are_not_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    preflight.check_root(tmp_path / "missing")


def test_missing_tracepoints_are_named(tmp_path: Path) -> None:
    (tmp_path / "events" / "sock" / "sock_recv_length").mkdir(parents=True)
    (tmp_path / "events" / "sock" / "sock_recv_length" / "format").write_text("")
    preflight.check_tracepoints(["sock:sock_recv_length"], root=tmp_path)
    with pytest.raises(PreflightError) as err:
        preflight.check_tracepoints(["sock:sock_recv_length", "syscalls:sys_enter_recvfrom"], root=tmp_path)
    assert "syscalls:sys_enter_recvfrom" in str(err.value)
    assert "CONFIG_FTRACE_SYSCALLS" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_btf(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="CONFIG_DEBUG_INFO_BTF"):
        preflight.check_btf(str(tmp_path / "vmlinux"))
    preflight.check_btf()  # this machine has it


def test_missing_kernel_headers(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="make setup"):
        preflight.check_kernel_headers(tmp_path, "9.9.9-test")
    (tmp_path / "9.9.9-test" / "build" / "include").mkdir(parents=True)
    preflight.check_kernel_headers(tmp_path, "9.9.9-test")


def test_bcc_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes "import bcc" fail
    monkeypatch.setattr(probes, "_SYSTEM_BCC", tmp_path / "bcc")
    with pytest.raises(probes.ProbeError, match="python3-bpfcc"):
        probes.import_bcc()


def test_probe_settings_validate() -> None:
    with pytest.raises(ValueError, match="power of two"):
        probes.ProbeSettings(capture_bytes=500).cflags()
    with pytest.raises(ValueError, match="power of two"):
        probes.ProbeSettings(ringbuf_pages=1000).cflags()
    assert "-DOTELBPF_CAPTURE_BYTES=1024" in probes.ProbeSettings(capture_bytes=1024).cflags()
