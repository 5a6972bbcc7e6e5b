"""Record and replay without root: synthetic kernel records through the live wiring, recorded, then replayed.

The recording run is ``runner.pipeline`` (what ``otelbpf record`` runs) fed by a stand-in ring buffer
and exporting to a real OTLP receiver; ``otelbpf replay`` runs in a subprocess (a different pid, no
bcc) to a second receiver. The two receivers must hold the same spans, field for field.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otelbpf import events
from otelbpf.cli import parse_args
from otelbpf.clock import ClockMap
from otelbpf.recording import Kind, Recorder, RecordingReader
from otelbpf.runner import export_queue, pipeline
from tests.factories import http_event, process_record_bytes, record_bytes, v4
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

REPO = Path(__file__).resolve().parents[2]
SERVER_PID = os.getpid()  # a real process: its resource is read from /proc while recording, never on replay
CLIENT_PID = 4_000_000_001  # no such process: its resource comes from the exec record
CONNS, PER_CONN = 3, 5
N = CONNS * PER_CONN
KERNEL_STATS = {"requests": 2 * N, "events": 2 * N, "lost_ringbuf_full": 3, "sampled_out": 0}
LOCAL = v4("127.0.0.1")


def head(i: int) -> bytes:
    return (
        f"GET /items/{i} HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    ).encode()


def traffic() -> list[list[bytes]]:
    """curl's keep-alive requests on 3 connections to a server, both ends traced; an exec, two bad records."""
    records = [process_record_bytes(CLIENT_PID, "curl", "/usr/bin/curl", ["curl", "-s", "http://shop.local:8080/"])]
    for i in range(N):
        port = 50_000 + i % CONNS
        start = 7_000_000_000 + i * 10_000_000
        common = dict(local_addr=LOCAL, peer_addr=LOCAL, req=head(i), bytes_in=90, bytes_out=512)
        server = http_event(
            pid=SERVER_PID, tid=SERVER_PID + 1, role=events.ROLE_SERVER, start_ns=start + 100_000,
            end_ns=start + 900_000, local_port=8080, peer_port=port, comm="python3", **common,
        )  # fmt: skip
        client = http_event(
            pid=CLIENT_PID, tid=CLIENT_PID, role=events.ROLE_CLIENT, start_ns=start, end_ns=start + 1_000_000,
            local_port=port, peer_port=8080, comm="curl", **common,
        )  # fmt: skip
        records += [record_bytes(server), record_bytes(client)]  # the server answers first
    records[9:9] = [b"\x01 short", b""]  # a record cut short, and an empty one
    return [records[:4], records[4:16], records[16:17], records[17:]]


class TimedRing:
    """Stands in for the ring buffer: one batch every ``gap_s``, so the linker releases trees between them."""

    def __init__(self, batches: list[list[bytes]], gap_s: float) -> None:
        self._batches = list(batches)
        self._gap_s = gap_s
        self._due = time.monotonic()

    def drain(self, limit: int) -> list[bytes]:
        if not self._batches or time.monotonic() < self._due:
            return []
        self._due += self._gap_s
        return self._batches.pop(0)

    def wait(self, timeout_s: float) -> None:
        due = self._due - time.monotonic() if self._batches else timeout_s
        time.sleep(max(0.0, min(timeout_s, due)))


class Kernel:
    def read_stats(self) -> dict[str, int]:
        return dict(KERNEL_STATS)

    def in_flight_requests(self) -> int:
        return 0


def record(path: Path, receiver: OtlpReceiver) -> str:
    """A recording run of the synthetic traffic, exporting to ``receiver``; its summary."""
    args = parse_args(["record", str(path), "--link-window", "0.2", "--otlp-endpoint", receiver.grpc_endpoint], {})
    queue, destination = export_queue(args, {})
    recorder = Recorder(path)
    # The wall clock steps 1 µs at every read, so each refresh moves the offset and writes it down.
    step = itertools.count(0, 1000)
    clock = ClockMap(refresh_s=0.0, realtime_ns=lambda: time.time_ns() + next(step))
    collector = pipeline(
        args, {}, Kernel(), TimedRing(traffic(), 0.15), queue, 1234, recorder,
        periodic=[(0.05, recorder.clock_refresh(clock))], clock=clock,
    )  # fmt: skip
    collector.run(threading.Event(), duration_s=1.0)
    queue.shutdown(10.0)
    summary = collector.summary(destination).format()
    recorder.close()
    assert not recorder.error
    return summary


def replay(path: Path, *flags: str) -> subprocess.CompletedProcess:
    """``otelbpf replay`` in a fresh interpreter; exit code 3 if anything imported bcc."""
    code = (
        "import sys; from otelbpf.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(3 if any(m == 'bcc' or m.startswith('bcc.') for m in sys.modules) else rc)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBPF_"))}
    return subprocess.run(
        [sys.executable, "-c", code, "replay", str(path), *flags],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip


def key(s: ReceivedSpan) -> str:
    return s.span_id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ReceivedSpan], str]:
    path = tmp_path_factory.mktemp("rec") / "synthetic.rec"
    with OtlpReceiver() as live:
        summary = record(path, live)
        spans = live.wait_for(2 * N)
    return path, sorted(spans, key=key), summary


def test_the_recording_holds_every_input(recorded) -> None:
    path, _, _ = recorded
    with RecordingReader(path) as reader:
        entries = list(reader)
    kinds = [e.kind for e in entries]
    assert kinds[0] is Kind.META and kinds[1] is Kind.CLOCK
    assert [e.value for e in entries if e.kind is Kind.BATCH] == traffic()
    assert kinds.count(Kind.CLOCK) > 2  # the offset moved while recording
    # One resource per process: the server's from /proc, the client's from its exec record.
    assert sorted(e.value[1] for e in entries if e.kind is Kind.RESOURCE) == [SERVER_PID, CLIENT_PID]
    assert entries[-1].value == {"stats": KERNEL_STATS, "in_flight": 0}
    assert entries[0].value["seed"] == 1234 and entries[0].value["link_window"] == 0.2


def test_replay_to_otlp_gives_the_same_spans(recorded) -> None:
    path, live, live_summary = recorded
    with OtlpReceiver() as again:
        res = replay(path, "--otlp-endpoint", again.grpc_endpoint)
        assert res.returncode == 0, res.stderr
        replayed = sorted(again.wait_for(2 * N), key=key)
    assert len(live) == 2 * N
    assert replayed == live  # ids, parents, names, times, attributes, resources, links

    servers = [s for s in live if s.kind == 2]
    clients = {s.span_id: s for s in live if s.kind == 3}
    assert len(servers) == len(clients) == N
    for s in servers:  # each server span is its client span's child, found by connection
        parent = clients[s.parent_span_id]
        assert s.trace_id == parent.trace_id
        assert s.attributes["otelbpf.parent.source"] == "connection"
        assert s.name == "GET /items/{id}" and s.attributes["url.path"] == parent.attributes["url.path"]
        assert s.resource["process.pid"] == SERVER_PID and "pytest" in s.resource["process.command_line"]
    assert len({s.trace_id for s in live}) == N
    for c in clients.values():
        assert c.resource["process.executable.path"] == "/usr/bin/curl"
        assert c.resource["process.command_line"] == "curl -s http://shop.local:8080/"
        assert c.attributes["url.full"].startswith("http://shop.local:8080/items/")

    # The summary is the recording run's too: the kernel's counters come from the recording.
    assert "otelbpf: replaying " in res.stderr
    for line in ("requests seen:   30", "events lost:     5", "ring buffer full (collector too slow):"):
        assert line in live_summary and line in res.stderr, (live_summary, res.stderr)
    assert re.search(r"malformed kernel records:\s+2\n", res.stderr)
    assert re.search(r"recorded batches replayed:\s+4\n", res.stderr)


def test_replay_in_the_terminal(recorded) -> None:
    path, live, _ = recorded
    res = replay(path, "--no-color")
    assert res.returncode == 0, res.stderr
    traces = re.findall(r"^trace ([0-9a-f]{32}) ", res.stdout, re.M)
    assert sorted(traces) == sorted({s.trace_id for s in live})
    assert res.stdout.count("SERVER GET /items/{id} 200 [connection]") == N


def test_replay_of_a_file_cut_short_warns_once_and_exports_what_it_holds(recorded, tmp_path: Path) -> None:
    path, live, _ = recorded
    with RecordingReader(path) as reader:
        ends = [(entry.kind, reader._file.tell()) for entry in reader]
    last = max(i for i, (kind, _) in enumerate(ends) if kind is Kind.BATCH)
    cut = tmp_path / "cut.rec"
    cut.write_bytes(path.read_bytes()[: ends[last][1] - 100])  # mid-way through the last batch
    with OtlpReceiver() as again:
        res = replay(cut, "--otlp-endpoint", again.grpc_endpoint)
        assert res.returncode == 0, res.stderr
        spans = again.wait_for(14, timeout_s=5)
    assert [line for line in res.stderr.splitlines() if "cut short" in line] == [
        f"otelbpf: WARNING: {cut} is cut short after {last} whole entries (otelbpf stopped mid-write): replaying those"
    ], res.stderr
    assert "no end entry" not in res.stderr
    # The first three batches hold 7 whole requests, both ends: the same spans as recorded, under the same
    # span ids (trees the recording run released after the last batch get other trace ids).
    assert len(spans) == 14
    by_id = {s.span_id: s for s in live}
    for s in spans:
        want = by_id[s.span_id]
        assert (s.name, s.parent_span_id, s.start_ns, s.end_ns, s.attributes, s.resource) == (
            want.name, want.parent_span_id, want.start_ns, want.end_ns, want.attributes, want.resource,
        )  # fmt: skip
