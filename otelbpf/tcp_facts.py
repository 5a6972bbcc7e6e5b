"""The kernel's TCP facts on spans: retransmits, smoothed RTT, connect time and resets; failed connects.

The kernel reads them from the connection's socket when a request starts and ends (bpf/tcp.bpf.c), so
a span says what TCP did during that request. A connect() that never got established comes as a record
of its own and becomes a ``connect`` CLIENT span with the failure's kind.
"""

from __future__ import annotations

import errno
import os

from otelbpf.events import TCP_CONNECT, TCP_KNOWN, TCP_RESET, RequestEvent
from otelbpf.spans import AttributeValue

RETRANSMITS = "otelbpf.tcp.retransmits"
SRTT_US = "otelbpf.tcp.srtt_us"
CONNECT_US = "otelbpf.tcp.connect_us"
RESET = "otelbpf.tcp.reset"

CONNECTION_RESET = "connection_reset"
CONNECTION_REFUSED = "connection_refused"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"

_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def add_attributes(ev: RequestEvent, attrs: dict[str, AttributeValue]) -> None:
    """Put the record's TCP facts on a span's own attributes; a reset turns a broken connection's error
    into ``connection_reset``."""
    flags = ev.tcp_flags
    if flags & TCP_KNOWN:
        attrs[RETRANSMITS] = ev.retransmits
        attrs[SRTT_US] = ev.srtt_us
        attrs[RESET] = bool(flags & TCP_RESET)
    if flags & TCP_CONNECT:
        attrs[CONNECT_US] = ev.connect_us
    # Only a span whose connection broke under it: one that completed before the reset keeps its outcome.
    if flags & TCP_RESET and attrs.get("error.type") == "connection_closed":
        attrs["error.type"] = CONNECTION_RESET


def connect_error_type(err: int) -> str:
    """error.type of a failed connect from the socket's errno; 0 means the process gave up first (its own
    connect timeout closed the socket while the handshake was pending)."""
    if err in (0, errno.ETIMEDOUT):
        return TIMEOUT
    if err == errno.ECONNREFUSED:
        return CONNECTION_REFUSED
    if err in _UNREACHABLE:
        return UNREACHABLE
    return errno.errorcode.get(err, "_OTHER").lower()


def connect_error_message(err: int) -> str:
    """The span status message of a failed connect."""
    if err == 0:
        return "closed by the process before the connection was established"
    return os.strerror(err)
