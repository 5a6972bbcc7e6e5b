"""Tests for the pure-Python BTF reader and the socket offsets derived from it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from otelbpf import btf as B
from otelbpf.btf import Btf, BtfError
from otelbpf.kernel_offsets import (
    FILE_FIELDS,
    PROCESS_FIELDS,
    SOCKET_FIELDS,
    TCP_FIELDS,
    all_offsets,
    as_cflags,
    socket_offsets,
    tracepoint_offsets,
)

VMLINUX = Path(B.DEFAULT_VMLINUX_BTF)


# -- a tiny BTF writer for synthetic blobs ------------------------------------------------------


class BtfBuilder:
    """Builds a BTF blob type by type; add_* return the new type id."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.strs = bytearray(b"\0")
        self.types = bytearray()
        self.next_id = 1

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, tail: bytes = b"", kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack(self.e + "III", self.s(name), info, size_or_type) + tail
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int, bits: int | None = None) -> int:
        bits = size * 8 if bits is None else bits
        return self.add(name, B.KIND_INT, 0, size, struct.pack(self.e + "I", bits))

    def composite(
        self, kind: int, name: str, size: int, members: list[tuple[str, int, int, int]], kflag: int = 0
    ) -> int:
        """members: (name, type id, bit offset, bitfield size)."""
        tail = b""
        for mname, mtype, bit_off, bf_size in members:
            off = (bf_size << 24) | bit_off if kflag else bit_off
            tail += struct.pack(self.e + "III", self.s(mname), mtype, off)
        return self.add(name, kind, len(members), size, tail, kflag)

    def build(self) -> bytes:
        hdr_len = 24
        header = struct.pack(
            self.e + "HBBIIIII",
            B.BTF_MAGIC,
            1,
            0,
            hdr_len,
            0,
            len(self.types),
            len(self.types),
            len(self.strs),
        )
        return header + bytes(self.types) + bytes(self.strs)


def build_synthetic(endian: str = "<") -> bytes:
    b = BtfBuilder(endian)
    e = endian
    t_int = b.int_("int", 4)
    t_uint = b.int_("unsigned int", 4)
    # One of every other kind before the structs: a wrong trailing-size rule for any of them would
    # shift every later type and break the lookups below.
    b.add(
        "color",
        B.KIND_ENUM,
        2,
        4,
        struct.pack(e + "Ii", b.s("RED"), 0) + struct.pack(e + "Ii", b.s("BLUE"), 1),
    )
    b.add("big", B.KIND_ENUM64, 1, 8, struct.pack(e + "III", b.s("HUGE"), 1, 2))
    proto = b.add("", B.KIND_FUNC_PROTO, 2, t_int, struct.pack(e + "II", b.s("a"), t_int) * 2)
    b.add("f", B.KIND_FUNC, 0, proto)
    var = b.add("v", B.KIND_VAR, 0, t_int, struct.pack(e + "I", 1))
    b.add(".data", B.KIND_DATASEC, 1, 4, struct.pack(e + "III", var, 0, 4))
    b.add("fwd_only", B.KIND_FWD, 0, 0)
    b.add("", B.KIND_VOLATILE, 0, t_int)
    b.add("", B.KIND_RESTRICT, 0, t_int)
    b.add("double", B.KIND_FLOAT, 0, 8)
    b.add("tag", B.KIND_DECL_TAG, 0, t_int, struct.pack(e + "i", -1))
    b.add("user", B.KIND_TYPE_TAG, 0, t_int)

    inner = b.composite(B.KIND_STRUCT, "inner", 8, [("a", t_int, 0, 0), ("b", t_int, 32, 0)])
    inner_t = b.add("inner_t", B.KIND_TYPEDEF, 0, inner)
    const_inner_t = b.add("", B.KIND_CONST, 0, inner_t)
    anon_union = b.composite(B.KIND_UNION, "", 4, [("x", t_int, 0, 0), ("y", t_uint, 0, 0)])
    anon_struct = b.composite(B.KIND_STRUCT, "", 8, [("pad", t_int, 0, 0), ("", anon_union, 32, 0)])
    ptr = b.add("", B.KIND_PTR, 0, inner)
    arr = b.add("", B.KIND_ARRAY, 0, 0, struct.pack(e + "III", t_int, t_uint, 4))
    b.composite(
        B.KIND_STRUCT,
        "outer",
        48,
        [
            ("flags", t_uint, 0, 3),  # unsigned int flags:3
            ("more", t_uint, 3, 5),  # unsigned int more:5
            ("", anon_struct, 32, 0),
            ("nested", const_inner_t, 96, 0),
            ("ptr", ptr, 192, 0),
            ("arr", arr, 256, 0),
        ],
        kflag=1,
    )
    # Pre-kind_flag bitfield encoding: the bit width lives in the INT type itself.
    t_int3 = b.int_("int", 4, bits=3)
    b.composite(B.KIND_STRUCT, "oldbf", 4, [("old", t_int3, 0, 0)])
    return b.build()


@pytest.fixture(scope="module", params=["<", ">"], ids=["little-endian", "big-endian"])
def synth(request: pytest.FixtureRequest) -> Btf:
    return Btf.from_bytes(build_synthetic(request.param))


def test_synthetic_offsets_through_anonymous_members(synth: Btf) -> None:
    # x and y live in an anonymous union inside an anonymous struct that starts at byte 4.
    assert synth.member_offset("outer", "pad") == 4
    assert synth.member_offset("outer", "x") == 8
    assert synth.member_offset("outer", "y") == 8
    assert synth.member_size("outer", "y") == 4


def test_synthetic_nested_member_through_const_typedef(synth: Btf) -> None:
    assert synth.member_offset("outer", "nested") == 12
    assert synth.member_offset("outer", "nested.a") == 12
    assert synth.member_offset("outer", "nested.b") == 16
    assert synth.member_size("outer", "nested") == 8


def test_synthetic_sizes(synth: Btf) -> None:
    assert synth.struct_size("outer") == 48
    assert synth.struct_size("inner") == 8
    assert synth.member_size("outer", "ptr") == 8
    assert synth.member_offset("outer", "ptr") == 24
    assert synth.member_size("outer", "arr") == 16
    assert synth.member_offset("outer", "arr") == 32


def test_synthetic_bitfields_are_rejected(synth: Btf) -> None:
    with pytest.raises(BtfError, match="bitfield"):
        synth.member_offset("outer", "flags")
    with pytest.raises(BtfError, match="bitfield"):
        synth.member_offset("outer", "more")
    with pytest.raises(BtfError, match="bitfield"):
        synth.member_size("outer", "flags")
    with pytest.raises(BtfError, match="bitfield"):
        synth.member_offset("oldbf", "old")


def test_synthetic_missing_names(synth: Btf) -> None:
    with pytest.raises(BtfError, match="no member 'nope'"):
        synth.member_offset("outer", "nope")
    with pytest.raises(BtfError, match=r"outer\.nested has no member 'c'"):
        synth.member_offset("outer", "nested.c")
    with pytest.raises(BtfError, match="not a struct or union"):
        synth.member_offset("outer", "x.y")
    with pytest.raises(BtfError, match="no struct or union named 'missing'"):
        synth.member_offset("missing", "a")
    with pytest.raises(BtfError, match="invalid member path"):
        synth.member_offset("outer", "nested..a")
    # A FWD declaration is not a definition.
    with pytest.raises(BtfError, match="no struct or union named 'fwd_only'"):
        synth.struct_size("fwd_only")


def test_malformed_blobs() -> None:
    good = build_synthetic()
    with pytest.raises(BtfError, match="magic"):
        Btf.from_bytes(b"\0\0" + good[2:])
    with pytest.raises(BtfError, match="too short"):
        Btf.from_bytes(good[:10])
    with pytest.raises(BtfError, match="past the end"):
        Btf.from_bytes(good[:-5])


def test_missing_btf_file_message(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match=r"kernel BTF not found at .*CONFIG_DEBUG_INFO_BTF"):
        Btf.load(tmp_path / "vmlinux")


def test_as_cflags() -> None:
    assert as_cflags({"OFF_SKC_DADDR": 4, "OFF_SKC_NUM": 14}) == ["-DOFF_SKC_DADDR=4", "-DOFF_SKC_NUM=14"]


# -- the running kernel's BTF, checked against bpftool + gcc ------------------------------------

# (struct, member path) pairs to compare; sizes are compared for each as well.
REAL_MEMBERS = [
    ("task_struct", "files"),
    ("task_struct", "tgid"),
    ("task_struct", "pid"),
    ("file", "private_data"),
    ("file", "f_inode"),
    ("files_struct", "fdt"),
    ("fdtable", "fd"),
    ("fdtable", "max_fds"),
    ("socket", "sk"),
    ("task_struct", "mm"),
    ("mm_struct", "arg_start"),
    ("mm_struct", "arg_end"),
    ("tcp_sock", "srtt_us"),
    ("tcp_sock", "total_retrans"),
    ("sock", "sk_err"),
    ("sock", "sk_err_soft"),
    ("sock", "__sk_common"),
    ("sock", "__sk_common.skc_daddr"),
    ("sock", "__sk_common.skc_rcv_saddr"),
    ("sock", "__sk_common.skc_dport"),
    ("sock", "__sk_common.skc_num"),
    ("sock", "__sk_common.skc_family"),
    ("sock", "__sk_common.skc_v6_daddr"),
    ("sock", "__sk_common.skc_v6_rcv_saddr"),
    ("sock_common", "skc_daddr"),
    ("sock_common", "skc_portpair"),
    ("sock_common", "skc_v6_rcv_saddr"),
    ("sock", "sk_protocol"),
]
# Includes names the kernel defines more than once, where the first definition must win as in vmlinux.h.
REAL_STRUCTS = ["task_struct", "file", "sock", "sock_common", "console", "dma_chan"]


def _bpftool() -> str | None:
    # bpftool usually lives in /usr/sbin, which is not on an unprivileged user's PATH.
    return shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="module")
def real_btf() -> Btf:
    # otelbpf needs kernel BTF to run at all; a machine without it fails here, loudly.
    assert VMLINUX.exists(), f"{VMLINUX} not present (kernel built without CONFIG_DEBUG_INFO_BTF)"
    return Btf.load()


@pytest.fixture(scope="module")
def gcc_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Offsets/sizes as gcc computes them from bpftool's C dump of the same BTF; one compile per module."""
    bpftool = _bpftool()
    # make setup installs bpftool; without it this comparison cannot be made, which is a failure.
    assert bpftool is not None, "bpftool not installed (make setup installs it)"
    assert VMLINUX.exists(), f"{VMLINUX} not present (kernel built without CONFIG_DEBUG_INFO_BTF)"
    d = tmp_path_factory.mktemp("btf")
    header = d / "vmlinux.h"
    with header.open("wb") as out:
        subprocess.run([bpftool, "btf", "dump", "file", str(VMLINUX), "format", "c"], stdout=out, check=True)
    lines = []
    for struct_name, path in REAL_MEMBERS:
        lines.append(
            f'printf("off {struct_name} {path} %lu\\n", '
            f"(unsigned long)__builtin_offsetof(struct {struct_name}, {path}));"
        )
        lines.append(
            f'printf("size {struct_name} {path} %lu\\n", (unsigned long)sizeof(((struct {struct_name} *)0)->{path}));'
        )
    for struct_name in REAL_STRUCTS:
        lines.append(f'printf("struct {struct_name} - %lu\\n", (unsigned long)sizeof(struct {struct_name}));')
    # No system headers next to vmlinux.h: they would redefine its types. Hence the bare printf.
    src = d / "layout.c"
    src.write_text(
        '#include "vmlinux.h"\nint printf(const char *, ...);\nint main(void) {\n'
        + "\n".join(lines)
        + "\nreturn 0;\n}\n"
    )
    exe = d / "layout"
    # The dump's clang-only "#pragma clang attribute" is fenced by this macro; -w drops gcc's warnings
    # about other clang-isms in a 3 MB generated header.
    subprocess.run(["gcc", "-DBPF_NO_PRESERVE_ACCESS_INDEX", "-w", "-o", str(exe), str(src)], check=True, cwd=d)
    result = subprocess.run([str(exe)], check=True, capture_output=True, text=True)
    layout = {}
    for line in result.stdout.splitlines():
        what, struct_name, path, value = line.split()
        layout[f"{what} {struct_name} {path}"] = int(value)
    return layout


@pytest.mark.parametrize(("struct_name", "path"), REAL_MEMBERS)
def test_real_member_matches_gcc(real_btf: Btf, gcc_layout: dict[str, int], struct_name: str, path: str) -> None:
    assert real_btf.member_offset(struct_name, path) == gcc_layout[f"off {struct_name} {path}"]
    assert real_btf.member_size(struct_name, path) == gcc_layout[f"size {struct_name} {path}"]


@pytest.mark.parametrize("struct_name", REAL_STRUCTS)
def test_real_struct_size_matches_gcc(real_btf: Btf, gcc_layout: dict[str, int], struct_name: str) -> None:
    assert real_btf.struct_size(struct_name) == gcc_layout[f"struct {struct_name} -"]


def test_real_type_count_matches_bpftool(real_btf: Btf) -> None:
    bpftool = _bpftool()
    assert bpftool is not None, "bpftool not installed (make setup installs it)"
    raw = subprocess.run(
        [bpftool, "btf", "dump", "file", str(VMLINUX)], check=True, capture_output=True, text=True
    ).stdout
    last = raw[raw.rindex("\n[") + 2 :]
    assert real_btf.type_count == int(last[: last.index("]")])


def test_real_anonymous_member_lookup(real_btf: Btf) -> None:
    # skc_daddr sits in an anonymous union inside an anonymous struct of sock_common.
    assert real_btf.member_offset("sock_common", "skc_daddr") == real_btf.member_offset(
        "sock", "__sk_common.skc_daddr"
    ) - real_btf.member_offset("sock", "__sk_common")


def test_real_socket_offsets(real_btf: Btf, gcc_layout: dict[str, int]) -> None:
    offsets = socket_offsets(real_btf)
    assert list(offsets) == list(SOCKET_FIELDS)
    for macro, (path, _size) in SOCKET_FIELDS.items():
        assert offsets[macro] == gcc_layout[f"off sock {path}"], macro
    assert as_cflags(offsets)[0] == f"-DOFF_SKC_DADDR={offsets['OFF_SKC_DADDR']}"


def test_real_struct_offsets(real_btf: Btf, gcc_layout: dict[str, int]) -> None:
    """Every offset passed to the BPF code besides the socket ones, against gcc's layout of the same BTF."""
    offsets = all_offsets(real_btf)
    fields = {**PROCESS_FIELDS, **FILE_FIELDS, **TCP_FIELDS}
    assert list(offsets) == [*SOCKET_FIELDS, *fields]
    for macro, (struct_name, member, _size) in fields.items():
        assert (struct_name, member) in REAL_MEMBERS, macro
        assert offsets[macro] == gcc_layout[f"off {struct_name} {member}"], macro


TCP_SEND_RESET_FORMAT = """\
name: tcp_send_reset
ID: 1400
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u8 saddr[sizeof(struct sockaddr_in6)];\toffset:28;\tsize:28;\tsigned:0;
\tfield:enum sk_rst_reason reason;\toffset:88;\tsize:4;\tsigned:0;
"""


def _tracefs(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "events" / "tcp" / "tcp_send_reset"
    d.mkdir(parents=True)
    (d / "format").write_text(text)
    return tmp_path


def test_tracepoint_offsets_from_a_format_file(tmp_path: Path) -> None:
    assert tracepoint_offsets(_tracefs(tmp_path, TCP_SEND_RESET_FORMAT)) == {"OFF_TP_SEND_RESET_SKADDR": 16}


def test_tracepoint_offsets_of_this_kernel() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: tracefs is root's")
    root = next(p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")) if (p / "events").is_dir())
    assert tracepoint_offsets(root)["OFF_TP_SEND_RESET_SKADDR"] in (16, 24)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (TCP_SEND_RESET_FORMAT.replace("skaddr", "sk"), "no field 'skaddr'"),
        (TCP_SEND_RESET_FORMAT.replace("offset:16;\tsize:8", "offset:16;\tsize:4"), "is 4 bytes"),
    ],
)
def test_tracepoint_offsets_refuse_what_they_cannot_read(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(BtfError, match=error):
        tracepoint_offsets(_tracefs(tmp_path, text))
    with pytest.raises(BtfError, match="cannot read the format"):
        tracepoint_offsets(tmp_path / "nowhere")
