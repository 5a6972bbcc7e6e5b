"""The hand-written OTLP encoder must produce exactly what the generated protobuf classes would."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbpf.export import SCOPE_NAME, encode_request
from otelbpf.otlp_wire import _varint, encode_export_request
from otelbpf.spans import Resource, Span, SpanKind, StatusCode

VALUES = ["", "x", "ünïcødé ✓", "a" * 300, 0, 1, -1, 2**63 - 1, -(2**63), 127, 128, 300, True, False, 0.0, -0.0,
          1.5, float("inf")]


def random_span(rng: random.Random, resources: list[Resource]) -> Span:
    attrs = {f"k{rng.randrange(40)}": rng.choice(VALUES) for _ in range(rng.randrange(0, 25))}
    return Span(
        trace_id=rng.getrandbits(128).to_bytes(16, "big"),
        span_id=rng.getrandbits(64).to_bytes(8, "big"),
        name=rng.choice(["GET /", "POST /items/{id}", "HTTP", "ü" * 200]),
        kind=rng.choice(list(SpanKind)),
        start_ns=rng.randrange(0, 2**63),
        end_ns=rng.randrange(0, 2**64),
        resource=rng.choice(resources),
        attributes=attrs,
        parent_span_id=rng.choice([None, rng.getrandbits(64).to_bytes(8, "big")]),
        status=rng.choice(list(StatusCode)),
        status_message=rng.choice(["", "connection closed"]),
        trace_state=rng.choice(["", "vendor=1,other=2"]),
    )


def test_matches_generated_classes() -> None:
    rng = random.Random(23)
    resources = [
        Resource((("service.name", "a"), ("process.pid", 1))),
        Resource((("service.name", "b"), ("flag", True), ("ratio", 0.5))),
        Resource(()),
    ]
    for _ in range(200):
        spans = [random_span(rng, resources) for _ in range(rng.randrange(1, 30))]
        ours = ExportTraceServiceRequest.FromString(encode_export_request(spans, SCOPE_NAME, "1.2.3"))
        reference = encode_request(spans, "1.2.3")
        assert ours == reference


def test_varint_edges() -> None:
    assert _varint(0) == b"\x00"
    assert _varint(127) == b"\x7f"
    assert _varint(128) == b"\x80\x01"
    assert _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"
