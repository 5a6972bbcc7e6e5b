"""The hand-written OTLP encoder must produce exactly what the generated protobuf classes would."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from otelbpf.export import SCOPE_NAME, encode_request
from otelbpf.otlp_wire import _span, _varint, encode_export_request
from otelbpf.spans import AttributeBlock, Resource, Span, SpanKind, SpanLink, StatusCode

VALUES = ["", "x", "ünïcødé ✓", "a" * 300, 0, 1, -1, 2**63 - 1, -(2**63), 127, 128, 300, True, False, 0.0, -0.0,
          1.5, float("inf"), ("1.2",), ("1.2", "stable"), ()]  # fmt: skip
# (Tuples are string arrays: container.image.tags.)


def random_link(rng: random.Random) -> SpanLink:
    attrs = {f"l{rng.randrange(10)}": rng.choice(VALUES) for _ in range(rng.randrange(0, 4))}
    return SpanLink(
        trace_id=rng.getrandbits(128).to_bytes(16, "big"),
        span_id=rng.getrandbits(64).to_bytes(8, "big"),
        trace_state=rng.choice(["", "vendor=1"]),
        attributes=tuple(attrs.items()),
    )


# Shared blocks (a connection's attributes) are encoded once and reused: their keys never meet own keys.
SHARED = [AttributeBlock({f"s{i}": v for i, v in enumerate(VALUES[j : j + 6])}) for j in range(0, 12, 3)]


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
        links=[random_link(rng) for _ in range(rng.choice([0, 0, 0, 1, 3]))],
        shared=rng.choice([None, *SHARED]),
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


def linked_span() -> Span:
    return Span(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        name="GET /batch",
        kind=SpanKind.SERVER,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_002_000_000,
        resource=Resource((("service.name", "a"),)),
        attributes={"http.response.status_code": 200},
        links=[
            SpanLink(b"\xaa" * 16, b"\xbb" * 8, "vendor=1", (("job", "resize"), ("n", 7), ("ok", True), ("r", 0.5))),
            SpanLink(b"\xcc" * 16, b"\xdd" * 8),
        ],
    )


def test_links_decode_exactly_with_trace_pb2() -> None:
    decoded = trace_pb2.Span.FromString(_span(linked_span()))
    kv = common_pb2.KeyValue
    value = common_pb2.AnyValue
    assert list(decoded.links) == [
        trace_pb2.Span.Link(
            trace_id=b"\xaa" * 16,
            span_id=b"\xbb" * 8,
            trace_state="vendor=1",
            attributes=[
                kv(key="job", value=value(string_value="resize")),
                kv(key="n", value=value(int_value=7)),
                kv(key="ok", value=value(bool_value=True)),
                kv(key="r", value=value(double_value=0.5)),
            ],
        ),
        trace_pb2.Span.Link(trace_id=b"\xcc" * 16, span_id=b"\xdd" * 8),
    ]
    assert decoded.links[0].attributes[2].value.WhichOneof("value") == "bool_value"  # not int 1
    assert (decoded.name, decoded.attributes[0].value.int_value) == ("GET /batch", 200)


def test_bytes_identical_to_generated_serializer_with_and_without_links() -> None:
    # Fields go out in ascending number order, as protobuf's own serializer writes them, so the
    # bytes (not just the decoded messages) match: with no links the output is what it was before.
    span = linked_span()
    for links in (span.links, []):
        span.links = links
        ours = encode_export_request([span], SCOPE_NAME, "1")
        assert ours == encode_request([span], "1").SerializeToString(deterministic=True)

