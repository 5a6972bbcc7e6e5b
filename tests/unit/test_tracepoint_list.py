"""The tracepoints preflight checks are exactly the ones the BPF sources attach to (no root needed)."""

from __future__ import annotations

import re

from otelbpf.probes import BPF_SOURCES, TCP_TRACEPOINTS, TRACEPOINTS, bpf_source_dir

# Attached by hand in probes.py (bcc cannot declare its arguments on every kernel).
BY_HAND = {"tcp:tcp_send_reset"}


def attached(text: str) -> list[str]:
    """TRACEPOINT_PROBE(cat, name) lines, and the enter/exit pairs each IO_PROBES(name, ...) line makes."""
    found = [f"{cat}:{name}" for cat, name in re.findall(r"^TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", text, re.M)]
    for name in re.findall(r"^IO_PROBES\((\w+),", text, re.M):
        found += [f"syscalls:sys_enter_{name}", f"syscalls:sys_exit_{name}"]
    return found


def test_every_attached_tracepoint_is_checked_first() -> None:
    text = "\n".join((bpf_source_dir() / name).read_text() for name in BPF_SOURCES)
    assert sorted({*attached(text), *BY_HAND}) == sorted({*TRACEPOINTS, *TCP_TRACEPOINTS})


def test_the_tcp_ones_are_those_tcp_facts_turns_off() -> None:
    text = (bpf_source_dir() / "tcp.bpf.c").read_text()
    guarded = text[text.index("#if TCP_FACTS") : text.index("#endif /* TCP_FACTS */")]
    assert sorted({*attached(guarded), *BY_HAND}) == sorted(TCP_TRACEPOINTS)
    assert "tcp_send_reset_seen" in guarded
