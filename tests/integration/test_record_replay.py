"""``otelbpf record`` while real services are traced, then ``otelbpf replay``: the spans the live run
exported, again, field for field (trace, span and parent ids, names, times, attributes, resources, links).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import (
    CLIENT,
    OTELBPF,
    SERVER,
    OtelbpfRun,
    PausedClient,
    assert_summary,
    clean_env,
    parse_summary,
    settle,
)
from tests.integration.test_traces import backend_and_node, chain, drive  # noqa: F401 - fixtures
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

N = 23
# Summary lines a replay must repeat: they come from the recorded records and kernel counters.
SAME_IN_SUMMARY = ("requests seen", "spans exported", "events lost", "malformed kernel records")


def record(rec: Path, pids: list[int], receiver: OtlpReceiver, tmp_path: Path) -> OtelbpfRun:
    """``otelbpf record REC --pid ...`` exporting to ``receiver``, once it is ready."""
    args = [str(rec), "--otlp-endpoint", receiver.grpc_endpoint]
    for pid in pids:
        args += ["--pid", str(pid)]
    run = OtelbpfRun(args, clean_env(), tmp_path, command="record")
    run.wait_ready()
    return run


def replay(rec: Path, receiver: OtlpReceiver, expected: int) -> tuple[list[ReceivedSpan], str]:
    """``otelbpf replay REC`` to a fresh receiver: (its spans, its stderr)."""
    res = subprocess.run(
        [OTELBPF, "replay", str(rec), "--otlp-endpoint", receiver.grpc_endpoint],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    # replay exits after its export queue is flushed: every span has arrived.
    spans = receiver.spans()
    assert len(spans) == expected, res.stderr
    return spans, res.stderr


def assert_same(live: list[ReceivedSpan], live_err: str, replayed: list[ReceivedSpan], replay_err: str) -> None:
    def by_id(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return sorted(spans, key=lambda s: s.span_id)

    assert len({s.span_id for s in live}) == len(live)
    assert by_id(replayed) == by_id(live)
    live_summary, replay_summary = parse_summary(live_err), parse_summary(replay_err)
    for line in SAME_IN_SUMMARY:
        assert replay_summary.get(line) == live_summary.get(line), (line, live_err, replay_err)


def test_replay_gives_the_spans_of_a_keepalive_session_both_ends_traced(py_server, tmp_path):
    """A python client's N requests on one connection to the python app: N server spans, each the child
    of its client span by connection."""
    rec = tmp_path / "session.rec"
    client = PausedClient("session", [py_server.url(f"/items/{i}") for i in range(N)])
    with OtlpReceiver() as live_receiver:
        try:
            run = record(rec, [py_server.pid, client.pid], live_receiver, tmp_path)
            assert [r["status"] for r in client.go()] == [200] * N
            settle(live_receiver, 2 * N)
            res = run.stop()
        finally:
            client.stop()
        live = live_receiver.spans()
    assert_summary(res, requests=2 * N, exported=2 * N)
    assert res.stderr.rstrip().splitlines()[-1].startswith(f"otelbpf: recorded {2 * N} records in ")
    servers = [s for s in live if s.kind == SERVER]
    clients = {s.span_id: s for s in live if s.kind == CLIENT}
    assert len(servers) == len(clients) == N
    assert all(clients[s.parent_span_id].trace_id == s.trace_id for s in servers)

    with OtlpReceiver() as again:
        replayed, err = replay(rec, again, 2 * N)
    assert_same(live, res.stderr, replayed, err)


def test_replay_gives_the_traces_of_three_services(chain, tmp_path):  # noqa: F811 - the fixture
    """python front -> node (HTTP) -> python backend (HTTPS, through the TLS uprobes): parents by thread
    and by connection, 5 spans per request, one trace each."""
    ids = list(range(7))
    rec = tmp_path / "chain.rec"
    with OtlpReceiver() as live_receiver:
        run = record(rec, [chain.front.pid, chain.node.pid, chain.backend.pid], live_receiver, tmp_path)
        drive(chain, ids)
        settle(live_receiver, 5 * len(ids), timeout=20)
        res = run.stop()
        live = live_receiver.spans()
    assert_summary(res, requests=5 * len(ids), exported=5 * len(ids))
    assert len({s.trace_id for s in live}) == len(ids)
    assert {s.attributes.get("otelbpf.parent.source") for s in live} == {None, "thread", "connection"}

    with OtlpReceiver() as again:
        replayed, err = replay(rec, again, 5 * len(ids))
    assert_same(live, res.stderr, replayed, err)
