"""The one factory for hand-made kernel events, shared by the unit tests and the benchmarks (no root)."""

from __future__ import annotations

import socket

from otelbpf import events
from otelbpf.events import RequestEvent


def v4(addr: str) -> bytes:
    """An IPv4 address as the kernel record carries it: 4 bytes, zero-padded to 16."""
    return socket.inet_aton(addr) + b"\x00" * 12


def http_event(**fields: object) -> RequestEvent:
    """A finished HTTP/1.x server request on 127.0.0.1:8080 from 127.0.0.2; ``fields`` override any field."""
    base: dict[str, object] = dict(
        protocol=events.PROTO_HTTP1,
        role=events.ROLE_SERVER,
        end=events.END_COMPLETE,
        flags=0,
        tls=0,
        status=200,
        req_offset=0,
        pid=4000,
        tid=4242,
        start_ns=1_000,
        end_ns=5_000,
        bytes_in=120,
        bytes_out=900,
        sock_id=0xFFFF0001,
        comm="pytest",
        family=socket.AF_INET,
        local_addr=v4("127.0.0.1"),
        peer_addr=v4("127.0.0.2"),
        local_port=8080,
        peer_port=51000,
        req=b"",
        resp=b"",
        count=0,
        cause_ns=0,
        retransmits=0,
        srtt_us=0,
        connect_us=0,
        tcp_flags=0,
    )
    unknown = fields.keys() - base.keys()
    if unknown:
        raise TypeError(f"RequestEvent has no field(s) {sorted(unknown)}")
    base.update(fields)
    return RequestEvent(**base)  # type: ignore[arg-type]


def record_bytes(ev: RequestEvent) -> bytes:
    """The ring-buffer record the kernel would write for ``ev`` (what ``events.decode`` reads back)."""
    head = events.RECORD_HEADER.pack(
        events.EVENT_REQUEST, ev.protocol, ev.role, ev.tls, ev.end, ev.flags, ev.status, ev.pid, ev.tid,
        ev.start_ns, ev.end_ns, ev.cause_ns, ev.bytes_in, ev.bytes_out, ev.sock_id, ev.comm.encode(),
        ev.local_addr, ev.peer_addr, ev.local_port, ev.peer_port, ev.family,
        ev.retransmits, ev.srtt_us, ev.connect_us, ev.tcp_flags,
        len(ev.req), len(ev.resp), ev.req_offset, ev.count,
    )  # fmt: skip
    return head + ev.req + ev.resp


def connect_record_bytes(ev: RequestEvent) -> bytes:
    """The ring-buffer record the kernel writes for a failed connect (``events.decode_connect`` reads it)."""
    return events.RECORD_HEADER.pack(
        events.EVENT_CONNECT, 0, events.ROLE_CLIENT, 0, 0, 0, ev.status, ev.pid, ev.tid,
        ev.start_ns, ev.end_ns, ev.cause_ns, 0, 0, ev.sock_id, ev.comm.encode(),
        ev.local_addr, ev.peer_addr, ev.local_port, ev.peer_port, ev.family,
        ev.retransmits, ev.srtt_us, ev.connect_us, ev.tcp_flags, 0, 0, 0, 0,
    )[: events.HEADER_SIZE]  # fmt: skip


def process_record_bytes(pid: int, comm: str, filename: str, argv: list[str]) -> bytes:
    """The ring-buffer record the kernel writes when a traced process execs ``filename``."""
    args = b"\0".join(a.encode() for a in argv) + b"\0"
    name = filename.encode()
    return events.PROCESS_EVENT.pack(events.EVENT_PROCESS, pid, len(name), len(args), comm.encode(), name, args)
