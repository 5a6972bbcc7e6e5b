"""Python mirror of bpf/include/otelbpf/events.h, and the decoder for ring-buffer records.

tests/unit/test_events_mirror.py compiles events.h with gcc and checks every size and offset
here against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT_REQUEST = 1
EVENT_PROCESS = 2
EVENT_TASK = 3
EVENT_CONNECT = 4

# enum otelbpf_task_kind: what happened to a traced process (records on the task_events ring).
TASK_FORK = 1
TASK_EXEC = 2
TASK_MAP = 3
TASK_EXIT = 4

# enum otelbpf_protocol: what a connection carries (the kernel's detector decides).
PROTO_UNKNOWN = 0
PROTO_HTTP1 = 1
PROTO_POSTGRES = 2
PROTO_REDIS = 3
PROTO_MYSQL = 4
PROTO_MAX = 8

COMM_LEN = 16
FILENAME_LEN = 256
ARGS_LEN = 512

ROLE_SERVER = 1
ROLE_CLIENT = 2

# enum otelbpf_end: how a request ended.
END_COMPLETE = 0
END_CONN_CLOSED = 1
END_NO_RESPONSE = 2
END_INFERRED = 3
END_CLOSE_DELIMITED = 4
END_KINDS = frozenset({END_COMPLETE, END_CONN_CLOSED, END_NO_RESPONSE, END_INFERRED, END_CLOSE_DELIMITED})

FLAG_REQ_TRUNCATED = 0x01
FLAG_PIPELINED = 0x02
FLAG_ERROR = 0x04
FLAG_RESP_TRUNCATED = 0x08

# otelbpf_record_header.tcp_flags: which TCP facts the kernel read.
TCP_KNOWN = 0x01  # retransmits and srtt_us are valid
TCP_RESET = 0x02  # a reset was sent or received on the connection
TCP_CONNECT = 0x04  # connect_us is valid

DEFAULT_CAPTURE_BYTES = 512
DEFAULT_RESP_CAPTURE_BYTES = 256

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
    15: "task_events_lost",
    16: "connect_failures",
}

# enum otelbpf_tls_library -> the library's name in span attributes.
TLS_NONE = 0
TLS_OPENSSL = 1
TLS_GNUTLS = 2
TLS_LIBRARIES: dict[int, str] = {TLS_OPENSSL: "openssl", TLS_GNUTLS: "gnutls"}

# struct otelbpf_record_header, then struct otelbpf_payload up to data[]; "x" bytes are _pad fields.
RECORD_HEADER = struct.Struct("<BBBBBBHIIQQQQQQ16s16s16sHHHxxIIIBxxxHHHH")

# name -> (offset, size) for the mirror test.
HEADER_LAYOUT: dict[str, tuple[int, int]] = {
    "type": (0, 1),
    "protocol": (1, 1),
    "role": (2, 1),
    "tls": (3, 1),
    "end": (4, 1),
    "flags": (5, 1),
    "status": (6, 2),
    "pid": (8, 4),
    "tid": (12, 4),
    "start_ns": (16, 8),
    "end_ns": (24, 8),
    "cause_ns": (32, 8),
    "bytes_in": (40, 8),
    "bytes_out": (48, 8),
    "sock_id": (56, 8),
    "comm": (64, 16),
    "conn": (80, 40),
    "retransmits": (120, 4),
    "srtt_us": (124, 4),
    "connect_us": (128, 4),
    "tcp_flags": (132, 1),
}
HEADER_SIZE = 136
PAYLOAD_LAYOUT: dict[str, tuple[int, int]] = {
    "req_len": (0, 2),
    "resp_len": (2, 2),
    "req_offset": (4, 2),
    "count": (6, 2),
    "data": (8, -1),
}
REQUEST_LAYOUT: dict[str, tuple[int, int]] = {"h": (0, HEADER_SIZE), "p": (HEADER_SIZE, -1)}
# struct otelbpf_connect_event: the header alone.
CONNECT_LAYOUT: dict[str, tuple[int, int]] = {"h": (0, HEADER_SIZE)}
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

# struct otelbpf_task_event.
TASK_EVENT = struct.Struct("<BB2xIIxxxxQ")
TASK_LAYOUT: dict[str, tuple[int, int]] = {
    "type": (0, 1),
    "kind": (1, 1),
    "pid": (4, 4),
    "parent": (8, 4),
    "ns": (16, 8),
}
_TASK_KINDS = frozenset({TASK_FORK, TASK_EXEC, TASK_MAP, TASK_EXIT})


def request_event_size(
    capture_bytes: int = DEFAULT_CAPTURE_BYTES, resp_capture_bytes: int = DEFAULT_RESP_CAPTURE_BYTES
) -> int:
    """sizeof(struct otelbpf_request_event): the longest record, for given capture sizes."""
    return RECORD_HEADER.size + capture_bytes + resp_capture_bytes


class DecodeError(ValueError):
    """A ring-buffer record that does not match the contract."""


@dataclass(slots=True)
class RequestEvent:
    """One finished request as the kernel paired it: the common header's facts and the protocol's bytes."""

    protocol: int
    role: int
    tls: int
    end: int
    flags: int
    status: int
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
    resp: bytes = b""
    req_offset: int = 0
    count: int = 0
    # Client requests: kernel start of the server request this thread was serving (0: none).
    cause_ns: int = 0
    # The TCP stack's facts about the connection (tcp_flags says which are valid: TCP_*).
    retransmits: int = 0
    srtt_us: int = 0
    connect_us: int = 0
    tcp_flags: int = 0


def decode(
    raw: bytes | memoryview,
    capture_bytes: int = DEFAULT_CAPTURE_BYTES,
    resp_capture_bytes: int = DEFAULT_RESP_CAPTURE_BYTES,
) -> RequestEvent:
    """Decode one request record; raise DecodeError for anything that breaks the contract."""
    if len(raw) < RECORD_HEADER.size:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than the {RECORD_HEADER.size}-byte header")
    (
        etype,
        protocol,
        role,
        tls,
        end,
        flags,
        status,
        pid,
        tid,
        start_ns,
        end_ns,
        cause_ns,
        bytes_in,
        bytes_out,
        sock_id,
        comm,
        local_addr,
        peer_addr,
        local_port,
        peer_port,
        family,
        retransmits,
        srtt_us,
        connect_us,
        tcp_flags,
        req_len,
        resp_len,
        req_offset,
        count,
    ) = RECORD_HEADER.unpack_from(raw)
    base = RECORD_HEADER.size
    mid = base + req_len
    if (
        etype != EVENT_REQUEST
        or not 0 < protocol < PROTO_MAX
        or role not in _ROLES
        or tls not in _TLS_KINDS
        or end not in END_KINDS
        or req_len > capture_bytes
        or resp_len > resp_capture_bytes
        or mid + resp_len != len(raw)
        or end_ns < start_ns
    ):
        # One test on the hot path; the reason is worked out only for a bad record.
        _reject(etype, protocol, role, tls, end, req_len, resp_len, capture_bytes, resp_capture_bytes, len(raw),
                start_ns, end_ns)  # fmt: skip
    name = _comm_names.get(comm)
    if name is None:
        name = _cstr(comm)
        if len(_comm_names) >= 4096:
            _comm_names.clear()
        _comm_names[comm] = name
    # Positional, in field order: a third of the cost of 25 keywords on this hot path.
    return RequestEvent(
        protocol, role, tls, end, flags, status, pid, tid, start_ns, end_ns, bytes_in, bytes_out, sock_id, name,
        family, local_addr, peer_addr, local_port, peer_port, raw[base:mid], raw[mid:], req_offset, count, cause_ns,
        retransmits, srtt_us, connect_us, tcp_flags,
    )  # fmt: skip


def decode_connect(raw: bytes | memoryview) -> RequestEvent:
    """Decode an OTELBPF_EVENT_CONNECT record (a failed connect): a client event with no protocol and no
    bytes, its status the socket's errno (0: the process gave up before the handshake ended)."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"connect record of {len(raw)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (etype, protocol, role, tls, end, flags, status, pid, tid, start_ns, end_ns, cause_ns, _bytes_in, _bytes_out,
     sock_id, comm, local_addr, peer_addr, local_port, peer_port, family, retransmits, srtt_us, connect_us,
     tcp_flags) = _CONNECT.unpack_from(raw)  # fmt: skip
    if etype != EVENT_CONNECT:
        raise DecodeError(f"not a connect record: type {etype}")
    if role != ROLE_CLIENT or protocol != PROTO_UNKNOWN:
        raise DecodeError(f"connect record with role {role} and protocol {protocol}")
    if end_ns < start_ns:
        raise DecodeError(f"end {end_ns} before start {start_ns}")
    return RequestEvent(
        protocol, role, tls, end, flags, status, pid, tid, start_ns, end_ns, 0, 0, sock_id, _cstr(comm),
        family, local_addr, peer_addr, local_port, peer_port, b"", b"", 0, 0, cause_ns,
        retransmits, srtt_us, connect_us, tcp_flags,
    )  # fmt: skip


# The header alone: RECORD_HEADER without the payload's counts.
_CONNECT = struct.Struct(RECORD_HEADER.format[: -len("HHHH")])
_ROLES = frozenset({ROLE_SERVER, ROLE_CLIENT})
_TLS_KINDS = frozenset({TLS_NONE, *TLS_LIBRARIES})
_comm_names: dict[bytes, str] = {}


def _reject(
    etype: int, protocol: int, role: int, tls: int, end: int, req_len: int, resp_len: int,
    capture_bytes: int, resp_capture_bytes: int, size: int, start_ns: int, end_ns: int,
) -> None:  # fmt: skip
    """Raise the DecodeError that says what is wrong with a record that failed the contract."""
    if etype != EVENT_REQUEST:
        raise DecodeError(f"unknown event type {etype}")
    if not 0 < protocol < PROTO_MAX:
        raise DecodeError(f"unknown protocol {protocol}")
    if role not in _ROLES:
        raise DecodeError(f"unknown role {role}")
    if tls not in _TLS_KINDS:
        raise DecodeError(f"unknown TLS library {tls}")
    if end not in END_KINDS:
        raise DecodeError(f"unknown end kind {end}")
    if req_len > capture_bytes or resp_len > resp_capture_bytes:
        raise DecodeError(f"capture lengths {req_len}/{resp_len} exceed the capture sizes")
    if RECORD_HEADER.size + req_len + resp_len != size:
        raise DecodeError(f"record of {size} bytes does not hold the {req_len}+{resp_len} bytes it declares")
    raise DecodeError(f"end {end_ns} before start {start_ns}")


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


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A traced process forked, exec'd, mapped an executable file, or ended."""

    kind: int  # TASK_*
    pid: int
    parent: int  # TASK_FORK: the parent's pid
    ns: int  # CLOCK_MONOTONIC when it happened


def decode_task(raw: bytes | memoryview) -> TaskEvent:
    """Decode an OTELBPF_EVENT_TASK record."""
    if len(raw) < TASK_EVENT.size:
        raise DecodeError(f"task record of {len(raw)} bytes is shorter than {TASK_EVENT.size}")
    etype, kind, pid, parent, ns = TASK_EVENT.unpack_from(raw)
    if etype != EVENT_TASK:
        raise DecodeError(f"not a task record: type {etype}")
    if kind not in _TASK_KINDS:
        raise DecodeError(f"unknown task event kind {kind}")
    return TaskEvent(kind, pid, parent, ns)
