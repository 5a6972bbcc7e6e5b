"""The TLS hook table in probes.py agrees with bpf/tls.bpf.c and with the library classifier."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otelbpf import tls_libraries
from otelbpf.probes import BPF_SOURCES, TLS_HOOKS, TLS_RETURN, program_text

BPF = Path(__file__).resolve().parents[2] / "bpf"


def uprobe_programs() -> set[str]:
    """Names of the programs tls.bpf.c defines for uprobes (they take struct pt_regs *)."""
    return set(re.findall(r"^int (\w+)\(struct pt_regs \*ctx\)", (BPF / "tls.bpf.c").read_text(), re.M))


def test_every_entry_handler_and_the_return_handler_exist() -> None:
    programs = uprobe_programs()
    for kind, hooks in TLS_HOOKS.items():
        for hook in hooks:
            assert hook.entry in programs, f"{kind} {hook.symbol}: no program {hook.entry} in tls.bpf.c"
    assert TLS_RETURN in programs


@pytest.mark.parametrize("kind", sorted(TLS_HOOKS))
def test_hooks_match_what_the_classifier_requires(kind: str) -> None:
    required, optional = tls_libraries.HOOKABLE[kind]
    hooks = TLS_HOOKS[kind]
    assert {h.symbol for h in hooks if h.required} == set(required)
    assert {h.symbol for h in hooks if not h.required} == set(optional)


def test_ex_forms_read_the_count_through_their_fourth_argument() -> None:
    """SSL_*_ex return 1 and store the byte count through arg 4; the others return the count."""
    text = (BPF / "tls.bpf.c").read_text()
    for hook in TLS_HOOKS["openssl"]:
        body = re.search(rf"int {hook.entry}\(struct pt_regs \*ctx\)\n{{\n(.*?)\n}}", text, re.S)
        assert body, hook.entry
        assert ("PT_REGS_PARM4" in body.group(1)) == hook.symbol.endswith("_ex"), hook.entry


def test_program_text_joins_every_family_with_line_markers(tmp_path: Path) -> None:
    for name in BPF_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"/* {name} */\n")
    text = program_text(tmp_path)
    for name in BPF_SOURCES:
        assert f'#line 1 "{tmp_path / name}"\n/* {name} */' in text
    # The shared maps come first, the protocols' state machines before the dispatcher that calls them,
    # and tls uses the socket side's maps and dispatcher.
    names = ("conn.bpf.h", "http1.bpf.h", "postgres.bpf.h", "redis.bpf.h", "mysql.bpf.h", "sockets.bpf.c", "tls.bpf.c")
    order = [text.index(name) for name in names]
    assert order == sorted(order)


def test_tail_call_slots_come_from_the_one_declaration() -> None:
    from otelbpf import events
    from otelbpf.probes import tail_call_slots

    slots = dict((name, slot) for slot, name in tail_call_slots())
    assert slots["process_io"] == 0
    assert slots["http1"] == events.PROTO_HTTP1  # a protocol's state machine sits at its number
    assert len(set(slots.values())) == len(slots)
    text = program_text()
    for name in slots:  # each slot has both copies: the syscall hooks' and the uprobes'
        assert re.search(rf"\bint {name}\(void \*ctx\)|TAIL_PROGRAMS\({name},", text), name
        assert re.search(rf"\bint tls_{name}\(struct pt_regs \*ctx\)|TAIL_PROGRAMS\({name},", text), name


def test_program_text_names_a_missing_file(tmp_path: Path) -> None:
    from otelbpf.probes import ProbeError

    with pytest.raises(ProbeError, match="not found"):
        program_text(tmp_path)
