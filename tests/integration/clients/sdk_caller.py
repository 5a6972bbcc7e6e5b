"""A caller instrumented with the OpenTelemetry Python SDK: each request is made inside its own span.

Usage: sdk_caller.py [--ca FILE] URL...

Protocol as clients/http_client.py: prints "paused", then on "go" opens one SDK span per URL (all in
one trace whose tracestate is "vendor=42"), sends the request with the W3C headers the SDK's
propagator injects, prints one JSON line {"trace_id", "spans": [{"url", "span_id", "status"}]}, and
stays alive until stdin closes. One last request carries a malformed traceparent.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.request

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ca")
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca) if args.ca else None
    tracer = TracerProvider().get_tracer("sdk-caller")
    propagator = TraceContextTextMapPropagator()
    print("paused", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    # An upstream context with a tracestate, as if this caller had itself been called.
    upstream = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "42")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(upstream))
    out = {"trace_id": f"{upstream.trace_id:032x}", "spans": []}
    for url in args.urls:
        with tracer.start_as_current_span("call", context=parent, kind=SpanKind.CLIENT) as span:
            headers: dict[str, str] = {}
            propagator.inject(headers)
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=ctx, timeout=10) as r:
                r.read()
                status = r.status
            out["spans"].append({"url": url, "span_id": f"{span.get_span_context().span_id:016x}", "status": status})
    bad = urllib.request.Request(args.urls[0], headers={"traceparent": "00-not-a-valid-header-01"})
    with urllib.request.urlopen(bad, context=ctx, timeout=10) as r:
        r.read()
    print(json.dumps(out), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
