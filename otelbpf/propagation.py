"""W3C Trace Context: the ``traceparent`` and ``tracestate`` an incoming request carries.

Pure functions over header values, as the request-head parser hands them over. A request whose
caller was instrumented (an OpenTelemetry SDK, another host's tracer) continues that caller's trace.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# W3C Trace Context level 1: at most 32 list members; propagators need keep only 512 characters.
_MAX_TRACESTATE_MEMBERS = 32
_MAX_TRACESTATE_CHARS = 512


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid parent from a ``traceparent`` header."""

    trace_id: bytes  # 16 bytes, not all zero
    span_id: bytes  # 8 bytes, not all zero: the caller's span, our span's parent
    sampled: bool
    trace_state: str  # the validated ``tracestate``, "" when absent or invalid


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceParent | None:
    """The parent a ``traceparent`` value names; None when it is absent or invalid (the trace restarts).

    Follows the W3C rules: lowercase hex; version ``ff`` is invalid; version ``00`` is exactly 55
    characters; a later version may carry more fields after a "-", of which the first four are read;
    all-zero trace or parent ids are invalid.
    """
    if not value:
        return None
    value = value.strip()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace, span, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if not (_is_hex(version) and _is_hex(trace) and _is_hex(span) and _is_hex(flags)) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return TraceParent(
        trace_id=bytes.fromhex(trace),
        span_id=bytes.fromhex(span),
        sampled=bool(int(flags, 16) & 0x01),
        trace_state=valid_tracestate(tracestate),
    )


def valid_tracestate(value: str | None) -> str:
    """The ``tracestate`` to keep: list members as sent, or "" when it breaks the W3C limits or syntax."""
    if not value:
        return ""
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > _MAX_TRACESTATE_MEMBERS:
        return ""
    for member in members:
        key, sep, val = member.partition("=")
        if not sep or not key or not val or len(key) > 256 or len(val) > 256:
            return ""
        if any(c in " ,=" or not (0x20 < ord(c) < 0x7F) for c in val):
            return ""
        if any(not (c.islower() or c.isdigit() or c in "_-*/@") or not c.isascii() for c in key):
            return ""
    keys = [m.partition("=")[0] for m in members]
    if len(set(keys)) != len(keys):
        return ""  # a key may appear once
    kept = ",".join(members)
    return kept if len(kept) <= _MAX_TRACESTATE_CHARS else ""
