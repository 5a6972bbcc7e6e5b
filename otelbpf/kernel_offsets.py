"""Kernel struct offsets that otelbpf's BPF programs need, taken from the running kernel's BTF.

The installed kernel headers may belong to another kernel version than the one running, so the BPF
C code reads socket fields at offsets passed in as ``-DOFF_...`` macros instead of trusting the
headers' struct layouts.
"""

from __future__ import annotations

import re
from pathlib import Path

from otelbpf.btf import DEFAULT_VMLINUX_BTF, Btf, BtfError

# Macro name -> (path from struct sock, byte size the BPF code reads). The sizes are checked too: a
# kernel that widened a field would otherwise make the BPF program silently read garbage.
SOCKET_FIELDS: dict[str, tuple[str, int]] = {
    "OFF_SKC_DADDR": ("__sk_common.skc_daddr", 4),
    "OFF_SKC_RCV_SADDR": ("__sk_common.skc_rcv_saddr", 4),
    "OFF_SKC_DPORT": ("__sk_common.skc_dport", 2),
    "OFF_SKC_NUM": ("__sk_common.skc_num", 2),
    "OFF_SKC_FAMILY": ("__sk_common.skc_family", 2),
    "OFF_SKC_V6_DADDR": ("__sk_common.skc_v6_daddr", 16),
    "OFF_SKC_V6_RCV_SADDR": ("__sk_common.skc_v6_rcv_saddr", 16),
}


def socket_offsets(btf: Btf | None = None) -> dict[str, int]:
    """Byte offsets of the sock_common address fields from the start of ``struct sock``, by macro name."""
    if btf is None:
        btf = Btf.load(DEFAULT_VMLINUX_BTF)
    # The paths go through sock.__sk_common, so its own offset (0 on every kernel so far) is included
    # rather than assumed; check it really is a struct sock_common so the field names mean what we think.
    common_type = btf.resolve(btf.member_type("sock", "__sk_common"))
    if btf.type_name(common_type) != "sock_common":
        raise BtfError(f"struct sock.__sk_common has type {btf.type_name(common_type)!r}, expected 'sock_common'")
    offsets: dict[str, int] = {}
    for macro, (path, size) in SOCKET_FIELDS.items():
        actual = btf.member_size("sock", path)
        if actual != size:
            raise BtfError(f"struct sock.{path} is {actual} bytes, otelbpf expects {size}")
        offsets[macro] = btf.member_offset("sock", path)
    return offsets


def as_cflags(offsets: dict[str, int]) -> list[str]:
    """Turn ``{"OFF_X": 4}`` into compiler flags like ``["-DOFF_X=4"]``."""
    return [f"-D{name}={value}" for name, value in offsets.items()]


# Macro name -> (struct, member, byte size read): where a new program's argv lives, read at exec.
PROCESS_FIELDS: dict[str, tuple[str, str, int]] = {
    "OFF_TASK_MM": ("task_struct", "mm", 8),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start", 8),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end", 8),
}

# Macro name -> (struct, member, byte size read): from a file descriptor to its socket's struct sock
# (task->files->fdt->fd[fd]->private_data->sk), walked only for otelbpf's own connect() calls.
FILE_FIELDS: dict[str, tuple[str, str, int]] = {
    "OFF_TASK_FILES": ("task_struct", "files", 8),
    "OFF_FILES_FDT": ("files_struct", "fdt", 8),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds", 4),
    "OFF_FDT_FD": ("fdtable", "fd", 8),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data", 8),
    "OFF_SOCKET_SK": ("socket", "sk", 8),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol", 2),
}

# Macro name -> (struct, member, byte size read): the TCP stack's own facts about a connection, read
# when a request starts and ends (bpf/tcp.bpf.c). srtt_us is kept scaled by 8.
TCP_FIELDS: dict[str, tuple[str, str, int]] = {
    "OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us", 4),
    "OFF_TCP_TOTAL_RETRANS": ("tcp_sock", "total_retrans", 4),
    "OFF_SK_ERR": ("sock", "sk_err", 4),
    "OFF_SK_ERR_SOFT": ("sock", "sk_err_soft", 4),
}


def struct_offsets(fields: dict[str, tuple[str, str, int]], btf: Btf | None = None) -> dict[str, int]:
    """Byte offsets of the given struct members, by macro name; their sizes must be what the C reads."""
    if btf is None:
        btf = Btf.load(DEFAULT_VMLINUX_BTF)
    offsets: dict[str, int] = {}
    for macro, (struct_name, member, size) in fields.items():
        actual = btf.member_size(struct_name, member)
        if actual != size:
            raise BtfError(f"struct {struct_name}.{member} is {actual} bytes, otelbpf expects {size}")
        offsets[macro] = btf.member_offset(struct_name, member)
    return offsets


def process_offsets(btf: Btf | None = None) -> dict[str, int]:
    """Byte offsets of task_struct.mm and mm_struct.arg_start/arg_end, by macro name."""
    return struct_offsets(PROCESS_FIELDS, btf)


def all_offsets(btf: Btf | None = None) -> dict[str, int]:
    """Every offset the BPF programs need, loading the kernel's BTF once."""
    if btf is None:
        btf = Btf.load(DEFAULT_VMLINUX_BTF)
    return {
        **socket_offsets(btf),
        **struct_offsets(PROCESS_FIELDS, btf),
        **struct_offsets(FILE_FIELDS, btf),
        **struct_offsets(TCP_FIELDS, btf),
    }


# Macro name -> (tracepoint, field, byte size read): tracepoint fields read at an offset from the tracepoint's
# own format file. bcc declares a TRACEPOINT_PROBE's arguments from that format, and tcp_send_reset's names
# a type (enum sk_rst_reason, Linux 6.10) that older installed headers lack, so it cannot be compiled that way.
TRACEPOINT_FIELDS: dict[str, tuple[str, str, int]] = {
    "OFF_TP_SEND_RESET_SKADDR": ("tcp:tcp_send_reset", "skaddr", 8),
}
_FORMAT_FIELD = re.compile(r"field:[^;]*?\b(\w+)(?:\[[^\]]*\])?;\s*offset:(\d+);\s*size:(\d+);")


def tracepoint_offsets(tracefs: Path) -> dict[str, int]:
    """Byte offsets of TRACEPOINT_FIELDS in their tracepoints' records, from the mounted tracefs."""
    offsets: dict[str, int] = {}
    for macro, (tracepoint, name, size) in TRACEPOINT_FIELDS.items():
        path = tracefs / "events" / tracepoint.replace(":", "/") / "format"
        try:
            text = path.read_text()
        except OSError as exc:
            raise BtfError(f"cannot read the format of tracepoint {tracepoint}: {exc}") from exc
        fields = {m[0]: (int(m[1]), int(m[2])) for m in _FORMAT_FIELD.findall(text)}
        if name not in fields:
            raise BtfError(f"tracepoint {tracepoint} has no field {name!r} ({path})")
        offset, actual = fields[name]
        if actual != size:
            raise BtfError(f"tracepoint {tracepoint} field {name} is {actual} bytes, otelbpf expects {size}")
        offsets[macro] = offset
    return offsets
