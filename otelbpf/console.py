"""Terminal output used when no OTLP endpoint is configured: each trace printed as a small waterfall.

Example (one trace, a server span with two children)::

    trace 0af7651916cd43dd8448eb211c80319c frontend 10.00 ms
      SERVER GET /users 200  10.00 ms  frontend  pid=100  |##############################|
        CLIENT GET 200        5.00 ms  backend   pid=200  |      ###############         |
        CLIENT SELECT         1.00 ms  backend   pid=200  |                     ###      |  ERROR timeout
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


# Marks spans whose plaintext came from a TLS library.
_HTTPS = " https"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


class ConsolePrinter:
    """Prints spans grouped by trace as indented waterfalls."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        # Resolve sys.stdout at construction, not import, so redirection (and pytest capture) applies.
        self._stream = stream if stream is not None else sys.stdout
        if color is None:
            isatty = getattr(self._stream, "isatty", None)
            color = bool(isatty and isatty()) and "NO_COLOR" not in os.environ
        self._color = color
        encoding = (getattr(self._stream, "encoding", None) or "").lower().replace("-", "")
        # Block characters only where the stream can encode them; "#" everywhere else.
        self._bar_char = "\u2588" if encoding.startswith("utf") else "#"

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
        header = f"trace {root.trace_id.hex()} {root.resource.service_name} {_ms(t1 - t0)}"
        rows = []
        for depth, s in ordered:
            code = s.attributes.get("http.response.status_code")
            label = "  " * (depth + 1) + f"{s.kind.name} {s.name}" + (f" {code}" if code is not None else "")
            label += _HTTPS if s.attributes.get("url.scheme") == "https" else ""
            pid = s.resource.get("process.pid")
            rows.append((s, label, code, s.resource.service_name, f"pid={pid}" if pid is not None else ""))
        label_w = max(len(r[1]) for r in rows)
        dur_w = max(len(_ms(r[0].duration_ns)) for r in rows)
        svc_w = max(len(r[3]) for r in rows)
        pid_w = max(len(r[4]) for r in rows)
        lines = [self._paint(header, _BOLD)]
        for s, label, code, service, pid in rows:
            parts = [
                self._label(label, s, code) + " " * (label_w - len(label)),
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

    def _label(self, label: str, span: Span, code: object) -> str:
        if not self._color:
            return label
        indent = label[: len(label) - len(label.lstrip(" "))]
        kind = self._paint(span.kind.name, _KIND_COLOR.get(span.kind, ""))
        text = f"{indent}{kind} {span.name}"
        if code is not None:
            color = _GREEN
            if isinstance(code, int) and code >= 500:
                color = _RED
            elif isinstance(code, int) and code >= 400:
                color = _YELLOW
            text += " " + self._paint(str(code), color)
        if label.endswith(_HTTPS):
            text += self._paint(_HTTPS, _DIM)
        return text

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
        return f"{color}{text}{_RESET}" if self._color and color else text


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
