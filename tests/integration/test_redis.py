"""Redis client spans against a real redis-server: commands, pipelines, errors, and no values ever exported.

redis-py connects before otelbpf starts (a pooled connection); redis-cli is started under otelbpf.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.databases import Redis, start_redis
from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    PausedClient,
    all_values,
    assert_in_window,
    assert_summary,
    by_pid,
    settle,
    stop_process,
)

pytestmark = pytest.mark.integration

N = 7


@pytest.fixture(scope="module")
def redis_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        stop_process(server.proc)


def traced(client: PausedClient, otelbpf, receiver, expected: int):
    try:
        run = otelbpf("--pid", str(client.pid), receiver=receiver)
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, expected)
        res = run.stop()
    finally:
        client.stop()
    return results, res, t0, t1


def assert_redis_span(span, server: Redis, **expected) -> None:
    assert span.kind == CLIENT
    a = span.attributes
    assert a["db.system.name"] == "redis"
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == server.port
    assert a["network.peer.port"] == server.port
    for key in ("db.operation.name", "db.query.text", "db.response.status_code", "db.operation.batch.size"):
        assert a.get(key) == expected.get(key), (key, a)
    assert "secret-value" not in " ".join(all_values(span))


def redis_py(server: Redis, scenario: str, n: int = N, driver: str = "redis") -> PausedClient:
    return PausedClient(argv=[PYTHON, str(CLIENTS / "db_client.py"), driver, server.url(), scenario, str(n)])


def test_one_span_per_command_with_the_key_shape_only(redis_db, otelbpf, receiver):
    client = redis_py(redis_db, "commands")
    results, res, t0, t1 = traced(client, otelbpf, receiver, N)
    spans = by_pid(receiver.spans(), client.pid)
    assert len(spans) == N
    assert_in_window(spans, t0, t1)
    for s in spans:
        assert s.name == "SET"
        assert s.status_code == 0
        assert_redis_span(s, redis_db, **{"db.operation.name": "SET", "db.query.text": "SET user:? ?"})
    assert_summary(res, requests=N, exported=N)


def test_a_pipeline_is_one_batch_span(redis_db, otelbpf, receiver):
    client = redis_py(redis_db, "pipeline", 5)
    results, res, t0, t1 = traced(client, otelbpf, receiver, 1)
    spans = by_pid(receiver.spans(), client.pid)
    assert [s.name for s in spans] == ["PIPELINE SET"]
    assert_redis_span(
        spans[0],
        redis_db,
        **{"db.operation.name": "PIPELINE SET", "db.query.text": "SET user:? ?", "db.operation.batch.size": 5},
    )
    assert_summary(res, requests=1, exported=1)


def test_error_replies_are_error_spans(redis_db, otelbpf, receiver):
    client = redis_py(redis_db, "error", 3)
    results, res, t0, t1 = traced(client, otelbpf, receiver, 4)
    assert results["errors"] == 3
    spans = by_pid(receiver.spans(), client.pid)
    assert [s.name for s in spans] == ["SET", "LPUSH", "LPUSH", "LPUSH"]
    for s in spans[1:]:
        assert s.status_code == 2
        assert_redis_span(
            s,
            redis_db,
            **{
                "db.operation.name": "LPUSH",
                "db.query.text": "LPUSH a-string ?",
                "db.response.status_code": "WRONGTYPE",
            },
        )
    assert_summary(res, requests=4, exported=4)


@pytest.mark.parametrize("driver", ["redis", "redis-resp3"])
def test_aggregate_and_null_replies_in_resp2_and_resp3(redis_db, otelbpf, receiver, driver):
    """Maps, sets, doubles and nulls (RESP3 types with HELLO 3): each command's replies end its span."""
    client = redis_py(redis_db, "mixed", 3, driver)
    results, res, t0, t1 = traced(client, otelbpf, receiver, len(["HSET", "SADD", "ZADD"]) + 4 * 3)
    spans = by_pid(receiver.spans(), client.pid)
    assert [s.name for s in spans] == results["calls"]
    shapes = {
        "HSET": "HSET user:?:profile ? ? ? ?",
        "SADD": "SADD tags:? ? ?",
        "ZADD": "ZADD scores ? ?",
        "HGETALL": "HGETALL user:?:profile",
        "SMEMBERS": "SMEMBERS tags:?",
        "ZSCORE": "ZSCORE scores ?",
        "GET": "GET missing:?",
    }
    for s in spans:
        assert s.status_code == 0
        assert_redis_span(s, redis_db, **{"db.operation.name": s.name, "db.query.text": shapes[s.name]})
    assert_summary(res, requests=len(spans), exported=len(spans))


def test_redis_cli_started_under_otelbpf(redis_db, otelbpf, receiver):
    argv = [PYTHON, str(CLIENTS / "run_paused.py"), "redis-cli", "-p", str(redis_db.port), "GET", "user:1000"]
    client = PausedClient(argv=argv)
    results, res, t0, t1 = traced(client, otelbpf, receiver, 1)
    assert results["returncode"] == 0, results["stderr"]
    spans = [s for s in receiver.spans() if s.resource.get("process.pid") == results["pid"]]
    assert [s.name for s in spans] == ["GET"]
    assert_redis_span(spans[0], redis_db, **{"db.operation.name": "GET", "db.query.text": "GET user:?"})
    assert res.summary.get("events lost") == 0, res.stderr
