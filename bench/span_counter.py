"""A minimal OTLP/gRPC trace receiver for benchmarks: counts spans, keeps nothing.

Run as its own process (``python bench/span_counter.py``). It prints ``endpoint http://127.0.0.1:PORT``
once listening; on SIGUSR1 it prints ``count SPANS REQUESTS`` (totals since start) on stdout; on
SIGTERM or SIGINT it prints the final count and exits. Every line is flushed at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Counter(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts every export and adds up its spans."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0

    def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:  # noqa: N802
        n = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
        with self.lock:
            self.spans += n
            self.requests += 1
        return ExportTraceServiceResponse()

    def line(self) -> str:
        with self.lock:
            return f"count {self.spans} {self.requests}"


def main() -> int:
    counter = Counter()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def report(signum: int, frame: object) -> None:
        print(counter.line(), flush=True)

    def finish(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    print(f"endpoint http://127.0.0.1:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait()
    print(counter.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
