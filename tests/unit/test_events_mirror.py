"""events.h (the kernel side) compiled with gcc must match the Python mirror in otelbpf/events.py exactly.

The structs, fields and constants are read from the header itself, so a field or constant added to
events.h without its mirror fails here rather than going unnoticed.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from otelbpf import events
from otelbpf.events import RECORD_HEADER, DecodeError, decode, request_event_size

INCLUDE_DIR = Path(__file__).resolve().parents[2] / "bpf" / "include"
HEADER = INCLUDE_DIR / "otelbpf" / "events.h"

TYPES_FALLBACK = """\
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
"""


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def header_structs() -> dict[str, list[str]]:
    """struct name -> field names in declaration order, read from events.h."""
    text = _strip_comments(HEADER.read_text())
    out = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, re.S):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if decl:
                m = re.search(r"(\w+)\s*(?:\[[^\]]*\])?$", decl)
                assert m, f"cannot read the field declaration {decl!r} in struct {name}"
                fields.append(m.group(1))
        out[name] = fields
    return out


def header_constants() -> list[str]:
    """Every enum member and #define named OTELBPF_* (the include guard aside)."""
    text = _strip_comments(HEADER.read_text())
    names = re.findall(r"^#define[ \t]+(OTELBPF_\w+)[ \t]+\S", text, re.M)
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\};", text, re.S):
        names += re.findall(r"\b(OTELBPF_\w+)\s*=", body)
    return sorted(set(names))


# The mirror of each struct: its layout dict and its size in otelbpf/events.py.
def mirror_of(struct_name: str, capture: int) -> tuple[dict[str, tuple[int, int]], int]:
    data = capture + events.DEFAULT_RESP_CAPTURE_BYTES
    if struct_name == "otelbpf_record_header":
        return events.HEADER_LAYOUT, events.HEADER_SIZE
    if struct_name == "otelbpf_payload":
        return events.PAYLOAD_LAYOUT, 8 + data
    if struct_name == "otelbpf_request_event":
        return events.REQUEST_LAYOUT, request_event_size(capture)
    if struct_name == "otelbpf_connect_event":
        return events.CONNECT_LAYOUT, events.HEADER_SIZE
    if struct_name == "otelbpf_conn_addr":
        return events.CONN_LAYOUT, events.CONN_SIZE
    if struct_name == "otelbpf_process_event":
        return events.PROCESS_LAYOUT, events.PROCESS_EVENT.size
    if struct_name == "otelbpf_task_event":
        return events.TASK_LAYOUT, events.TASK_EVENT.size
    raise AssertionError(f"struct {struct_name} in events.h has no mirror in otelbpf/events.py (nor in this test)")


def _c_program(structs: dict[str, list[str]], constants: list[str]) -> str:
    lines = ["#include <linux/types.h>" if Path("/usr/include/linux/types.h").exists() else TYPES_FALLBACK]
    lines += ["#include <stdio.h>", "#include <stddef.h>", '#include "otelbpf/events.h"', "int main(void) {"]
    for name, fields in structs.items():
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
        for f in fields:
            lines.append(f'printf("offset {name}.{f} %zu\\n", (size_t)__builtin_offsetof(struct {name}, {f}));')
            lines.append(f'printf("size {name}.{f} %zu\\n", sizeof(((struct {name} *)0)->{f}));')
    for c in constants:
        lines.append(f'printf("const {c} %lld\\n", (long long)({c}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


class Layout:
    """What gcc says about events.h."""

    def __init__(self, lines: list[str]) -> None:
        self.sizeof: dict[str, int] = {}
        self.offset: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.const: dict[str, int] = {}
        for line in lines:
            kind, key, value = line.split()
            getattr(self, kind)[key] = int(value)


def compile_layout(tmp_path: Path, *defines: str) -> Layout:
    # make setup installs gcc; without it the contract cannot be checked, which must fail.
    assert shutil.which("gcc") is not None, "gcc not installed (make setup installs it)"
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(_c_program(header_structs(), header_constants()))
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Werror", "-I", str(INCLUDE_DIR), *defines, "-o", str(exe), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return Layout(out.splitlines())


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return compile_layout(tmp_path_factory.mktemp("mirror"))


def test_header_is_parsed() -> None:
    structs = header_structs()
    assert {"otelbpf_record_header", "otelbpf_payload", "otelbpf_request_event", "otelbpf_conn_addr"} <= set(structs)
    # The event type byte first, then protocol and role: what dispatch reads before anything else.
    assert structs["otelbpf_record_header"][:3] == ["type", "protocol", "role"]
    assert "OTELBPF_EVENT_REQUEST" in header_constants()


@pytest.mark.parametrize("struct_name", sorted(header_structs()))
def test_struct_layout(layout: Layout, struct_name: str) -> None:
    mirror, size = mirror_of(struct_name, events.DEFAULT_CAPTURE_BYTES)
    assert layout.sizeof[struct_name] == size, f"sizeof(struct {struct_name})"
    fields = header_structs()[struct_name]
    public = [f for f in fields if not f.startswith("_")]
    assert sorted(mirror) == sorted(public), "fields differ between events.h and the mirror"
    for f in public:
        offset, fsize = mirror[f]
        assert layout.offset[f"{struct_name}.{f}"] == offset, f
        if fsize == -1:  # the tail whose size follows the capture sizes: data[], or the payload holding it
            assert f == fields[-1]
            assert layout.offset[f"{struct_name}.{f}"] + layout.size[f"{struct_name}.{f}"] == size
        else:
            assert layout.size[f"{struct_name}.{f}"] == fsize, f


def test_no_hidden_padding(layout: Layout) -> None:
    """Every byte of every struct belongs to a named field (implicit padding differs between compilers)."""
    for struct_name, fields in header_structs().items():
        end = 0
        for f in fields:
            assert layout.offset[f"{struct_name}.{f}"] == end, f"implicit padding before {struct_name}.{f}"
            end += layout.size[f"{struct_name}.{f}"]
        assert end == layout.sizeof[struct_name], f"implicit tail padding in {struct_name}"


def _format_codes(fmt: struct.Struct) -> list[str]:
    """One code per unpacked value: "s" for byte strings, the integer code otherwise (pads dropped)."""
    codes = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.format):
        if code == "x":
            continue
        codes += [code] if code == "s" else [code] * int(count or 1)
    return codes


def _check_struct_format(fmt: struct.Struct, fields: list[str], struct_name: str, layout: Layout) -> None:
    """Unpacking a buffer with a marker at each C offset yields the markers in the mirror's field order."""
    codes = _format_codes(fmt)
    assert len(codes) == len(fields), f"{fmt.format} unpacks {len(codes)} values for {len(fields)} fields"
    raw = bytearray(fmt.size)
    expected: list[int | bytes] = []
    packers = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
    for i, (f, code) in enumerate(zip(fields, codes, strict=True), start=1):
        off, size = layout.offset[f"{struct_name}.{f}"], layout.size[f"{struct_name}.{f}"]
        assert off + size <= fmt.size, f
        if code == "s":  # a byte array: a marker in its first byte
            raw[off] = i
            expected.append(bytes([i]) + bytes(size - 1))
        else:
            assert struct.calcsize("<" + code) == size, f"{f}: format {code!r} for a {size}-byte field"
            struct.pack_into(packers[size], raw, off, i)
            expected.append(i)
    assert list(fmt.unpack_from(raw)) == expected


def test_record_header_format(layout: Layout) -> None:
    """RECORD_HEADER unpacks the header (conn flattened in place) and the payload's counts, in C's order."""
    structs = header_structs()
    conn = layout.offset["otelbpf_record_header.conn"]
    payload = layout.offset["otelbpf_request_event.p"]
    flat = Layout([])
    fields = []

    def add(name: str, offset: int, size: int) -> None:
        flat.offset[f"x.{name}"] = offset
        flat.size[f"x.{name}"] = size
        fields.append(name)

    for f in structs["otelbpf_record_header"]:
        if f.startswith("_"):
            continue
        if f == "conn":
            for cf in structs["otelbpf_conn_addr"]:
                if not cf.startswith("_"):
                    key = f"otelbpf_conn_addr.{cf}"
                    add(cf, conn + layout.offset[key], layout.size[key])
        else:
            add(f, layout.offset[f"otelbpf_record_header.{f}"], layout.size[f"otelbpf_record_header.{f}"])
    for f in structs["otelbpf_payload"]:
        if f != "data":
            add(f, payload + layout.offset[f"otelbpf_payload.{f}"], layout.size[f"otelbpf_payload.{f}"])
    assert RECORD_HEADER.size == payload + layout.offset["otelbpf_payload.data"]
    _check_struct_format(RECORD_HEADER, fields, "x", flat)


def test_process_event_format(layout: Layout) -> None:
    fields = [f for f in header_structs()["otelbpf_process_event"] if not f.startswith("_")]
    _check_struct_format(events.PROCESS_EVENT, fields, "otelbpf_process_event", layout)


def test_task_event_format(layout: Layout) -> None:
    fields = [f for f in header_structs()["otelbpf_task_event"] if not f.startswith("_")]
    _check_struct_format(events.TASK_EVENT, fields, "otelbpf_task_event", layout)


def test_task_event_decodes_and_rejects() -> None:
    raw = events.TASK_EVENT.pack(events.EVENT_TASK, events.TASK_FORK, 41, 40, 123456789)
    assert events.decode_task(raw) == events.TaskEvent(events.TASK_FORK, 41, 40, 123456789)
    with pytest.raises(DecodeError, match="unknown task event kind 9"):
        events.decode_task(events.TASK_EVENT.pack(events.EVENT_TASK, 9, 41, 0, 1))
    with pytest.raises(DecodeError, match="shorter"):
        events.decode_task(raw[:10])


def mirror_constant(name: str) -> int:
    """The Python value that mirrors a C constant, by naming convention."""
    short = name.removeprefix("OTELBPF_")
    if short == "CAPTURE_BYTES":
        return events.DEFAULT_CAPTURE_BYTES
    if short == "RESP_CAPTURE_BYTES":
        return events.DEFAULT_RESP_CAPTURE_BYTES
    if short == "STAT_MAX":
        return max(events.STAT_NAMES) + 1  # checked separately: an upper bound
    if short.startswith("STAT_"):
        key = short.removeprefix("STAT_").lower()
        matches = [i for i, n in events.STAT_NAMES.items() if n == key]
        assert len(matches) == 1, f"STAT_NAMES has no single entry named {key!r}"
        return matches[0]
    assert hasattr(events, short), f"{name} in events.h has no mirror otelbpf.events.{short}"
    return getattr(events, short)


def test_constants(layout: Layout) -> None:
    for name, value in layout.const.items():
        if name == "OTELBPF_STAT_MAX":
            assert max(events.STAT_NAMES) < value
            continue
        assert mirror_constant(name) == value, name


def test_every_stat_index_is_in_the_header(layout: Layout) -> None:
    in_header = {
        v: k.removeprefix("OTELBPF_STAT_").lower()
        for k, v in layout.const.items()
        if k.startswith("OTELBPF_STAT_") and k != "OTELBPF_STAT_MAX"
    }
    assert in_header == events.STAT_NAMES


def test_flags_are_distinct_bits() -> None:
    flags = [v for k, v in vars(events).items() if k.startswith("FLAG_")]
    assert len(flags) >= 4
    combined = 0
    for f in flags:
        assert f & (f - 1) == 0 and f & combined == 0
        combined |= f


def test_other_capture_size(tmp_path: Path) -> None:
    got = compile_layout(tmp_path, "-DOTELBPF_CAPTURE_BYTES=1024", "-DOTELBPF_RESP_CAPTURE_BYTES=128")
    assert got.const["OTELBPF_CAPTURE_BYTES"] == 1024
    assert got.sizeof["otelbpf_request_event"] == request_event_size(1024, 128)
    assert got.size["otelbpf_payload.data"] == 1024 + 128
    assert got.offset["otelbpf_request_event.p"] + got.offset["otelbpf_payload.data"] == RECORD_HEADER.size


# ---- decode: records built field by field at the mirror's offsets (not with RECORD_HEADER itself)

REQ = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
FIELDS = {
    "type": events.EVENT_REQUEST,
    "protocol": events.PROTO_HTTP1,
    "role": events.ROLE_SERVER,
    "end": events.END_INFERRED,
    "flags": events.FLAG_PIPELINED | events.FLAG_REQ_TRUNCATED,
    "status": 201,
    "pid": 4242,
    "tid": 4243,
    "start_ns": 1_000_000,
    "end_ns": 1_500_000,
    "bytes_in": 77,
    "bytes_out": 612,
    "sock_id": 0xDEADBEEFCAFE,
    "cause_ns": 900_000,
}
PAYLOAD = {"req_offset": 3, "count": 2}
CONN = {
    "local_addr": bytes([127, 0, 0, 1]) + bytes(12),
    "peer_addr": bytes([10, 1, 2, 3]) + bytes(12),
    "local_port": 8080,
    "peer_port": 54321,
    "family": 2,
}
PACKERS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def pack_record(req: bytes = REQ, resp: bytes = b"", **override: int | bytes) -> bytes:
    """A record as the kernel sends it: the header, the payload's counts, then only the bytes it holds."""
    values = {**FIELDS, **PAYLOAD, "req_len": len(req), "resp_len": len(resp), **override}
    raw = bytearray(RECORD_HEADER.size)
    for name, (off, size) in events.HEADER_LAYOUT.items():
        if name in values:
            struct.pack_into(PACKERS[size], raw, off, values[name])
    off = events.HEADER_LAYOUT["comm"][0]
    raw[off : off + 5] = b"nginx"
    conn = events.HEADER_LAYOUT["conn"][0]
    for name, (off, size) in events.CONN_LAYOUT.items():
        v = {**CONN, **override}[name]
        if isinstance(v, bytes):
            raw[conn + off : conn + off + size] = v
        else:
            struct.pack_into(PACKERS[size], raw, conn + off, v)
    payload = events.REQUEST_LAYOUT["p"][0]
    for name, (off, size) in events.PAYLOAD_LAYOUT.items():
        if name != "data":
            struct.pack_into(PACKERS[size], raw, payload + off, values[name])
    return bytes(raw) + req + resp


def test_decode_round_trip() -> None:
    raw = pack_record(resp=b"RESP")
    assert len(raw) == RECORD_HEADER.size + len(REQ) + 4
    for data in (raw, memoryview(raw), bytearray(raw)):
        ev = decode(data)
        for name, value in {**FIELDS, **PAYLOAD}.items():
            if name != "type":
                assert getattr(ev, name) == value, name
        for name, value in CONN.items():
            assert getattr(ev, name) == value, name
        assert ev.req == REQ
        assert ev.resp == b"RESP"
        assert ev.comm == "nginx"


def test_decode_other_capture_and_client_role() -> None:
    req = b"POST /y HTTP/1.0\r\n\r\n" * 40  # 800 bytes
    raw = pack_record(req, role=events.ROLE_CLIENT)
    ev = decode(raw, 1024)
    assert ev.role == events.ROLE_CLIENT and ev.req == req
    with pytest.raises(DecodeError):
        decode(raw)  # req_len 800 > the default capture of 512


def test_decode_edges() -> None:
    full = bytes(range(256)) * 2
    assert decode(pack_record(full)).req == full
    assert decode(pack_record(b"")).req == b""
    assert decode(pack_record(b"", b"x" * 256)).resp == b"x" * 256
    assert decode(pack_record(start_ns=5, end_ns=5)).end_ns == 5


@pytest.mark.parametrize("length", [0, 1, RECORD_HEADER.size - 1])
def test_decode_rejects_short_records(length: int) -> None:
    with pytest.raises(DecodeError):
        decode(pack_record()[:length])


@pytest.mark.parametrize("cut", [-1, 1])
def test_decode_rejects_a_record_whose_length_disagrees_with_its_counts(cut: int) -> None:
    raw = pack_record(b"A" * 100, b"B" * 10)
    with pytest.raises(DecodeError, match="does not hold"):
        decode(raw[:cut] if cut < 0 else raw + b"\0" * cut)


@pytest.mark.parametrize("etype", [0, 2, 3, 255])
def test_decode_rejects_bad_type(etype: int) -> None:
    with pytest.raises(DecodeError):
        decode(pack_record(type=etype))


@pytest.mark.parametrize("protocol", [0, events.PROTO_MAX, 255])
def test_decode_rejects_bad_protocol(protocol: int) -> None:
    with pytest.raises(DecodeError, match="unknown protocol"):
        decode(pack_record(protocol=protocol))


@pytest.mark.parametrize("role", [0, 3, 255])
def test_decode_rejects_bad_role(role: int) -> None:
    with pytest.raises(DecodeError):
        decode(pack_record(role=role))


@pytest.mark.parametrize("end", [5, 255])
def test_decode_rejects_bad_end_kind(end: int) -> None:
    with pytest.raises(DecodeError, match="unknown end kind"):
        decode(pack_record(end=end))


@pytest.mark.parametrize(
    ("req_len", "resp_len"),
    [(events.DEFAULT_CAPTURE_BYTES + 1, 0), (0xFFFF, 0), (0, events.DEFAULT_RESP_CAPTURE_BYTES + 1)],
)
def test_decode_rejects_lengths_beyond_capture(req_len: int, resp_len: int) -> None:
    with pytest.raises(DecodeError):
        decode(pack_record(b"", req_len=req_len, resp_len=resp_len))


def test_decode_rejects_end_before_start() -> None:
    with pytest.raises(DecodeError):
        decode(pack_record(start_ns=2_000, end_ns=1_999))


def test_unknown_tls_library_is_malformed() -> None:
    with pytest.raises(events.DecodeError, match="unknown TLS library 9"):
        decode(pack_record(tls=9))
    assert decode(pack_record(tls=events.TLS_GNUTLS)).tls == events.TLS_GNUTLS


# ---- process records


def pack_process(
    pid: int = 99, comm: bytes = b"curl", filename: bytes = b"/usr/bin/curl\0", args: bytes = b""
) -> bytes:
    layout = events.PROCESS_LAYOUT
    raw = bytearray(events.PROCESS_EVENT.size)
    raw[layout["type"][0]] = events.EVENT_PROCESS
    struct.pack_into("<I", raw, layout["pid"][0], pid)
    struct.pack_into("<I", raw, layout["filename_len"][0], len(filename))
    struct.pack_into("<I", raw, layout["args_len"][0], len(args))
    for name, value in (("comm", comm), ("filename", filename), ("args", args)):
        off = layout[name][0]
        raw[off : off + len(value)] = value
    return bytes(raw)


def test_decode_process_round_trip() -> None:
    ev = events.decode_process(pack_process(args=b"curl\0-s\0http://x/\0"))
    assert (ev.pid, ev.comm, ev.filename, ev.argv) == (99, "curl", "/usr/bin/curl", ["curl", "-s", "http://x/"])


def test_decode_process_rejects_bad_records() -> None:
    good = pack_process()
    with pytest.raises(DecodeError):
        events.decode_process(good[:-1])
    with pytest.raises(DecodeError):
        events.decode_process(bytes([events.EVENT_REQUEST]) + good[1:])
    too_long = bytearray(good)
    struct.pack_into("<I", too_long, events.PROCESS_LAYOUT["filename_len"][0], events.FILENAME_LEN + 1)
    with pytest.raises(DecodeError):
        events.decode_process(bytes(too_long))
    too_long = bytearray(good)
    struct.pack_into("<I", too_long, events.PROCESS_LAYOUT["args_len"][0], events.ARGS_LEN + 1)
    with pytest.raises(DecodeError):
        events.decode_process(bytes(too_long))
