"""Terminal output used when no OTLP endpoint is configured: each trace printed as a small waterfall.

Example (one trace across three services: a Python front end calls a Node service, which calls a
Python backend)::

    trace 4bf92f3577b34da6a3ce929d0e0e4736 front 12.00 ms (6 spans, 3 services)
      SERVER GET /buy 200                            12.00 ms  front  pid=100  |██████████████████████████████|
      ├─ CLIENT GET 200 [thread]                      8.00 ms  front  pid=100  |  █████████████████████       |
      │  └─ SERVER GET /cart 200 [connection]         7.00 ms  cart   pid=200  |   ███████████████████        |
      │     └─ CLIENT GET 200 [thread~]               6.00 ms  cart   pid=200  |     ███████████████          |
      │        └─ SERVER GET /qty 200 [traceparent]   5.00 ms  stock  pid=300  |      █████████████           |
      └─ CLIENT POST 503 [thread]                     1.50 ms  front  pid=100  |                       █████  |  ERROR

Rows are drawn as a tree (ASCII connectors and ``#`` bars when the stream is not UTF-8). Markers after
the label say how a span found its parent (``[thread]``, ``[connection]``, ``[traceparent]``; ``~``
means best effort, guessed on an event-loop thread), ``(+N links)`` counts span links, and
``(parent not shown)`` marks a root whose parent is not in the batch.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from otelbpf.export import BatchQueue
from otelbpf.spans import Span, SpanKind, StatusCode

logger = logging.getLogger(__name__)

BAR_WIDTH = 30

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_YELLOW = "\x1b[33m"
_MAGENTA = "\x1b[35m"
_CYAN = "\x1b[36m"
_DIM = "\x1b[2m"
_KIND_COLOR = {SpanKind.SERVER: _CYAN, SpanKind.CLIENT: _MAGENTA}


# Marks spans whose plaintext came from a TLS library (HTTP says it with its scheme).
_HTTPS = " https"
_TLS = " tls"

# Tree connectors: (has a later sibling, last child, ancestor has a later sibling); each 3 columns wide.
_UTF8_CONNECTORS = ("\u251c\u2500 ", "\u2514\u2500 ", "\u2502  ")
_ASCII_CONNECTORS = ("|- ", "`- ", "|  ")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class ConsolePrinter:
    """Prints spans grouped by trace as waterfalls drawn as trees."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        # Resolve sys.stdout at construction, not import, so redirection (and pytest capture) applies.
        self._stream = stream if stream is not None else sys.stdout
        if color is None:
            isatty = getattr(self._stream, "isatty", None)
            color = bool(isatty and isatty()) and "NO_COLOR" not in os.environ
        self._color = color
        encoding = (getattr(self._stream, "encoding", None) or "").lower().replace("-", "")
        # Block and box-drawing characters only where the stream can encode them; ASCII elsewhere.
        utf = encoding.startswith("utf")
        self._bar_char = "\u2588" if utf else "#"
        self._connectors = _UTF8_CONNECTORS if utf else _ASCII_CONNECTORS

    def print_spans(self, spans: Sequence[Span]) -> None:
        """Print the spans, one waterfall per trace, ordered by trace start."""
        if not spans:
            return
        traces: dict[bytes, list[Span]] = {}
        for span in spans:
            traces.setdefault(span.trace_id, []).append(span)
        lines: list[str] = []
        for group in sorted(traces.values(), key=lambda g: min(s.start_ns for s in g)):
            lines.extend(self.format_trace(group))
        # One write per batch keeps traces from interleaving with other output lines.
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    def format_trace(self, spans: Sequence[Span]) -> list[str]:
        """Render one trace's spans (same trace_id) as header + one line per span."""
        ordered = _tree_order(spans)
        t0 = min(s.start_ns for s in spans)
        t1 = max(s.end_ns for s in spans)
        root = ordered[0][1]
        services = len({s.resource.service_name for s in spans})
        header = (
            f"trace {root.trace_id.hex()} {root.resource.service_name} {_ms(t1 - t0)}"
            f" ({_count(len(spans), 'span')}, {_count(services, 'service')})"
        )
        ids = {s.span_id for s in spans}
        prefixes = _prefixes([depth for depth, _ in ordered], self._connectors)
        rows = []
        for (depth, s), prefix in zip(ordered, prefixes, strict=True):
            segments = self._label(s, prefix, depth == 0 and bool(s.parent_span_id) and s.parent_span_id not in ids)
            pid = s.resource.get("process.pid")
            rows.append((s, segments, s.resource.service_name, f"pid={pid}" if pid is not None else ""))
        widths = [sum(len(text) for text, _ in r[1]) for r in rows]
        label_w = max(widths)
        dur_w = max(len(_ms(r[0].duration_ns)) for r in rows)
        svc_w = max(len(r[2]) for r in rows)
        pid_w = max(len(r[3]) for r in rows)
        lines = [self._paint(header, _BOLD)]
        for (s, segments, service, pid), width in zip(rows, widths, strict=True):
            parts = [
                "".join(self._paint(text, color) for text, color in segments) + " " * (label_w - width),
                _ms(s.duration_ns).rjust(dur_w),
                service.ljust(svc_w),
            ]
            if pid_w:  # no empty column when no span in the trace knows its pid
                parts.append(pid.ljust(pid_w))
            parts.append(self._bar(s, t0, t1))
            line = "  ".join(parts)
            if s.status == StatusCode.ERROR:
                line += "  " + self._paint(f"ERROR {s.status_message}".rstrip(), _RED + _BOLD)
            lines.append(line)
        return lines

    def _label(self, span: Span, prefix: str, parent_not_shown: bool) -> list[tuple[str, str]]:
        """The label column as (text, color) segments: widths come from the text, colour is optional."""
        segments = [("  ", ""), (prefix, _DIM), (span.kind.name, _KIND_COLOR.get(span.kind, "")), (" " + span.name, "")]
        attrs = span.all_attributes()
        code = attrs.get("http.response.status_code")
        if code is not None:
            color = _GREEN
            if isinstance(code, int) and code >= 500:
                color = _RED
            elif isinstance(code, int) and code >= 400:
                color = _YELLOW
            segments += [(" ", ""), (str(code), color)]
        db_code = attrs.get("db.response.status_code")
        if db_code is not None:
            segments += [(" ", ""), (str(db_code), _RED)]
        error = attrs.get("error.type")
        if error in ("connection_refused", "timeout", "unreachable", "connection_reset") or (
            span.name == "connect" and error
        ):
            peer = attrs.get("network.peer.address")
            where = f" {peer}:{attrs.get('network.peer.port')}" if span.name == "connect" and peer else ""
            segments += [(" ", ""), (f"{error}{where}", _RED)]
        if attrs.get("url.scheme") == "https":
            segments.append((_HTTPS, _DIM))
        elif "otelbpf.tls.library" in attrs:
            segments.append((_TLS, _DIM))
        markers = []
        source = attrs.get("otelbpf.parent.source")
        if source:
            # "~": the parent was guessed from an event-loop thread, which many requests share.
            markers.append(f"[{source}~]" if attrs.get("otelbpf.parent.event_loop") else f"[{source}]")
        retransmits = attrs.get("otelbpf.tcp.retransmits")
        if isinstance(retransmits, int) and retransmits > 0:
            markers.append(f"({_count(retransmits, 'retransmit')})")
        if span.links:
            markers.append(f"(+{_count(len(span.links), 'link')})")
        if parent_not_shown:
            markers.append("(parent not shown)")
        for marker in markers:
            segments += [(" ", ""), (marker, _DIM)]
        return segments

    def _bar(self, span: Span, t0: int, t1: int) -> str:
        total = max(t1 - t0, 1)
        start = min(BAR_WIDTH - 1, max(0, (span.start_ns - t0) * BAR_WIDTH // total))
        end = min(BAR_WIDTH, math.ceil((span.end_ns - t0) * BAR_WIDTH / total))
        length = max(1, end - start)  # even a tiny span stays visible
        bar = " " * start + self._bar_char * length + " " * (BAR_WIDTH - start - length)
        if self._color:
            color = _RED if span.status == StatusCode.ERROR else _KIND_COLOR.get(span.kind, _DIM)
            return "|" + self._paint(bar, color) + "|"
        return f"|{bar}|"

    def _paint(self, text: str, color: str) -> str:
        return f"{color}{text}{_RESET}" if self._color and color and text else text


def _prefixes(depths: Sequence[int], connectors: tuple[str, str, str]) -> list[str]:
    """Tree connectors for rows in depth-first order, given each row's depth (roots get none)."""
    tee, elbow, pipe = connectors
    out = [""] * len(depths)
    # Walking backwards, more[d] says whether a row at depth d comes later before any shallower row:
    # for a row at depth d that means it has a later sibling, and for its ancestors the same, per level.
    more: list[bool] = []
    for i in range(len(depths) - 1, -1, -1):
        depth = depths[i]
        del more[depth + 1 :]
        more += [False] * (depth + 1 - len(more))
        if depth:
            out[i] = "".join(pipe if more[k] else "   " for k in range(1, depth)) + (tee if more[depth] else elbow)
        more[depth] = True
    return out


def _tree_order(spans: Sequence[Span]) -> list[tuple[int, Span]]:
    """Depth-first (depth, span) order: children under parents, siblings by start time."""
    ids = {s.span_id for s in spans}
    children: dict[bytes, list[Span]] = {}
    roots = []
    for s in spans:
        # A parent outside this group (remote, not yet finished, or in another batch) makes a root.
        if s.parent_span_id and s.parent_span_id in ids and s.parent_span_id != s.span_id:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    out: list[tuple[int, Span]] = []
    seen: set[int] = set()
    # Roots first, then any span left over: spans caught in a parent-id cycle have no root, and
    # are printed flat rather than lost. Iterative so deep chains cannot hit the recursion limit.
    starts = sorted(roots, key=lambda s: s.start_ns) + sorted(spans, key=lambda s: s.start_ns)
    for start in starts:
        stack = [(0, start)]
        while stack:
            depth, s = stack.pop()
            if id(s) in seen:
                continue
            seen.add(id(s))
            out.append((depth, s))
            kids = sorted(children.get(s.span_id, ()), key=lambda k: k.start_ns, reverse=True)
            stack.extend((depth + 1, k) for k in kids)
    return out


class ConsoleQueue(BatchQueue):
    """Same submit/flush/shutdown/stats interface as ExportQueue, printing batches from a thread."""

    def __init__(
        self,
        printer: ConsolePrinter | None = None,
        *,
        max_queue_spans: int = 20000,
        max_batch: int = 2048,
        schedule_delay_s: float = 0.5,
    ) -> None:
        self._printer = printer or ConsolePrinter()
        # Large batches and a delay keep the spans of one trace (which finish at different times)
        # in the same waterfall more often.
        super().__init__(
            max_queue_spans=max_queue_spans,
            max_batch=max_batch,
            schedule_delay_s=schedule_delay_s,
            thread_name="otelbpf-console",
        )

    def _send(self, batch: list[Span]) -> str | None:
        try:
            self._printer.print_spans(batch)
        except (OSError, ValueError) as e:  # closed pipe / closed stream: drop rather than die
            self._note_error(f"console output failed: {e}")
            self._fail_log.warn("console output failed, dropped %d spans: %s", len(batch), e)
            return "export_failed"
        return None
