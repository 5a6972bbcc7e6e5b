"""Python mirror of bpf/include/otelbpf/events.h, and the decoder for ring-buffer records.

tests/unit/test_events_mirror.py compiles events.h with gcc and checks every size and offset
here against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT_HTTP = 1
EVENT_PROCESS = 2

COMM_LEN = 16
FILENAME_LEN = 256
ARGS_LEN = 512

ROLE_SERVER = 1
ROLE_CLIENT = 2

FLAG_CONN_CLOSED = 0x01
FLAG_REQ_TRUNCATED = 0x02
FLAG_PIPELINED = 0x04
FLAG_END_INFERRED = 0x08
FLAG_NO_RESPONSE = 0x10
FLAG_CLOSE_DELIMITED = 0x20

DEFAULT_CAPTURE_BYTES = 512

# enum otelbpf_stat -> name used in summaries.
STAT_NAMES: dict[int, str] = {
    0: "requests",
    1: "events",
    2: "lost_ringbuf_full",
    3: "sampled_out",
    4: "orphan_responses",
    5: "read_faults",
    6: "targets_full",
    7: "io_table_full",
    8: "ringbuf_retried",
    9: "tls_probe_hits",
    10: "tls_unbound",
    11: "tls_table_full",
    12: "tls_guessed",
    13: "tls_rebound",
    14: "own_conns",
}

# enum otelbpf_tls_library -> the library's name in span attributes.
TLS_NONE = 0
TLS_OPENSSL = 1
TLS_GNUTLS = 2
TLS_LIBRARIES: dict[int, str] = {TLS_OPENSSL: "openssl", TLS_GNUTLS: "gnutls"}

# struct otelbpf_http_event up to req[]; "x" bytes are the explicit _pad fields.
HTTP_HEADER = struct.Struct("<BBBBHHIIIxxxxQQQQQQ16s16s16sHHHxx")

# name -> (offset, size) for the mirror test; req follows the fixed header.
HTTP_LAYOUT: dict[str, tuple[int, int]] = {
    "type": (0, 1),
    "role": (1, 1),
    "flags": (2, 1),
    "tls": (3, 1),
    "status": (4, 2),
    "req_offset": (6, 2),
    "pid": (8, 4),
    "tid": (12, 4),
    "req_len": (16, 4),
    "start_ns": (24, 8),
    "end_ns": (32, 8),
    "bytes_in": (40, 8),
    "bytes_out": (48, 8),
    "sock_id": (56, 8),
    "cause_ns": (64, 8),
    "comm": (72, 16),
    "conn": (88, 40),
    "req": (128, -1),
}
CONN_LAYOUT: dict[str, tuple[int, int]] = {
    "local_addr": (0, 16),
    "peer_addr": (16, 16),
    "local_port": (32, 2),
    "peer_port": (34, 2),
    "family": (36, 2),
}
CONN_SIZE = 40


# struct otelbpf_process_event.
PROCESS_EVENT = struct.Struct(f"<B3xIII{COMM_LEN}s{FILENAME_LEN}s{ARGS_LEN}s")
PROCESS_LAYOUT: dict[str, tuple[int, int]] = {
    "type": (0, 1),
    "pid": (4, 4),
    "filename_len": (8, 4),
    "args_len": (12, 4),
    "comm": (16, COMM_LEN),
    "filename": (32, FILENAME_LEN),
    "args": (288, ARGS_LEN),
}


def http_event_size(capture_bytes: int = DEFAULT_CAPTURE_BYTES) -> int:
    """sizeof(struct otelbpf_http_event) for a given capture size."""
    return HTTP_HEADER.size + capture_bytes


class DecodeError(ValueError):
    """A ring-buffer record that does not match the contract."""


@dataclass(slots=True)
class HttpEvent:
    """One finished HTTP/1.x request as the kernel paired it."""

    role: int
    flags: int
    tls: int
    status: int
    req_offset: int
    pid: int
    tid: int
    start_ns: int
    end_ns: int
    bytes_in: int
    bytes_out: int
    sock_id: int
    comm: str
    family: int
    local_addr: bytes
    peer_addr: bytes
    local_port: int
    peer_port: int
    req: bytes
    # Client requests: kernel start of the server request this thread was serving (0: none).
    cause_ns: int = 0


def decode(raw: bytes | memoryview, capture_bytes: int = DEFAULT_CAPTURE_BYTES) -> HttpEvent:
    """Decode one record; raise DecodeError for anything that breaks the contract."""
    if len(raw) < HTTP_HEADER.size:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than the {HTTP_HEADER.size}-byte header")
    (
        etype,
        role,
        flags,
        tls,
        status,
        req_offset,
        pid,
        tid,
        req_len,
        start_ns,
        end_ns,
        bytes_in,
        bytes_out,
        sock_id,
        cause_ns,
        comm,
        local_addr,
        peer_addr,
        local_port,
        peer_port,
        family,
    ) = HTTP_HEADER.unpack_from(raw)
    if etype != EVENT_HTTP:
        raise DecodeError(f"unknown event type {etype}")
    if role not in (ROLE_SERVER, ROLE_CLIENT):
        raise DecodeError(f"unknown role {role}")
    if tls != TLS_NONE and tls not in TLS_LIBRARIES:
        raise DecodeError(f"unknown TLS library {tls}")
    if req_len > capture_bytes or HTTP_HEADER.size + req_len > len(raw):
        raise DecodeError(f"request capture length {req_len} exceeds the record")
    if end_ns < start_ns:
        raise DecodeError(f"end {end_ns} before start {start_ns}")
    base = HTTP_HEADER.size
    return HttpEvent(
        role=role,
        flags=flags,
        tls=tls,
        status=status,
        req_offset=req_offset,
        pid=pid,
        tid=tid,
        start_ns=start_ns,
        end_ns=end_ns,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        sock_id=sock_id,
        comm=_cstr(comm),
        family=family,
        local_addr=local_addr,
        peer_addr=peer_addr,
        local_port=local_port,
        peer_port=peer_port,
        req=bytes(raw[base : base + req_len]),
        cause_ns=cause_ns,
    )


@dataclass(slots=True)
class ProcessEvent:
    """A traced process started a program: what it is, read in the kernel at exec."""

    pid: int
    comm: str
    filename: str
    argv: list[str]


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_process(raw: bytes | memoryview) -> ProcessEvent:
    """Decode an OTELBPF_EVENT_PROCESS record."""
    if len(raw) < PROCESS_EVENT.size:
        raise DecodeError(f"process record of {len(raw)} bytes is shorter than {PROCESS_EVENT.size}")
    etype, pid, filename_len, args_len, comm, filename, args = PROCESS_EVENT.unpack_from(raw)
    if etype != EVENT_PROCESS:
        raise DecodeError(f"not a process record: type {etype}")
    if filename_len > FILENAME_LEN or args_len > ARGS_LEN:
        raise DecodeError("process record lengths exceed their fields")
    argv = [a.decode("utf-8", "replace") for a in args[:args_len].split(b"\0") if a]
    return ProcessEvent(pid=pid, comm=_cstr(comm), filename=_cstr(filename[:filename_len]), argv=argv)
