"""`otelbpf check` on this machine: the features it reports, a process's TLS libraries, and a run without
the capabilities to load programs."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.integration.helpers import OTELBPF, PYTHON, clean_env, stop_process

pytestmark = pytest.mark.integration

FINDING = re.compile(
    r"^(?P<state>ok|missing|unknown) +"
    r"(?P<feature>USDT \S+|TLS in pid \d+|kernel headers|ring buffers|\S+) +(?P<detail>.*)$"
)
BASIC = ("privileges", "kernel headers", "bcc", "BTF", "tracepoints", "ring buffers")


def otelbpf_check(*args: str, prefix: tuple[str, ...] = ()) -> tuple[int, dict[str, tuple[str, str]], list[str]]:
    """Run the command: its exit code, each finding's (state, detail) by feature, and its lines."""
    argv = [*prefix, OTELBPF, "check", *args]
    res = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert res.stderr == "", res.stderr
    lines = res.stdout.splitlines()
    findings = {}
    for line in lines[:-1]:
        match = FINDING.match(line)
        assert match, line
        findings[match["feature"]] = (match["state"], match["detail"])
    return res.returncode, findings, lines


def test_this_machine_can_run_otelbpf() -> None:
    code, findings, lines = otelbpf_check()
    assert code == 0, "\n".join(lines)
    for feature in BASIC:
        assert findings[feature][0] == "ok", "\n".join(lines)
    assert lines[-1].startswith("otelbpf can run here")
    # This VM's kernel has no kprobes; otelbpf does not need them and says so.
    assert findings["kprobes"][0] in ("ok", "missing")
    assert findings["uprobes"][0] == "ok"
    assert findings["USDT /usr/bin/python3"][0] == "ok", "\n".join(lines)


def test_the_tls_libraries_of_a_process() -> None:
    proc = subprocess.Popen(
        [PYTHON, "-c", "import ssl, sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        code, findings, lines = otelbpf_check("--pid", str(proc.pid), "--pid", "4194305", "--python", "/bin/true")
    finally:
        stop_process(proc)
    assert code == 0, "\n".join(lines)  # targets' findings are not basic
    state, detail = findings[f"TLS in pid {proc.pid}"]
    assert state == "ok" and "openssl (shared)" in detail and "libssl.so" in detail, detail
    assert findings["TLS in pid 4194305"] == ("missing", "no such process")
    state, detail = findings["USDT /bin/true"]
    assert state == "missing" and "no USDT probes" in detail


def test_without_the_capabilities_it_says_so_and_fails() -> None:
    # Still uid 0, so every file is readable, but with no capability to load programs or create maps.
    code, findings, lines = otelbpf_check(prefix=("setpriv", "--bounding-set", "-all", "--inh-caps", "-all"))
    assert code == 1, "\n".join(lines)
    state, detail = findings["privileges"]
    assert state == "missing" and "without the capabilities" in detail
    assert findings["ring buffers"][0] == "unknown"
    assert findings["BTF"][0] == "ok"
    assert lines[-1] == "otelbpf cannot run here: privileges, ring buffers (see above)"
