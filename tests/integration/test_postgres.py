"""PostgreSQL client spans against a real server: simple and extended protocol, pipelines, errors, TLS.

Every client connects before otelbpf starts (as an application's pool does), except psql, which is run once
otelbpf is ready so that its startup message (and with it the database name) is seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.databases import Postgres, start_postgres, stop_postgres
from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    PausedClient,
    all_values,
    assert_in_window,
    assert_summary,
    by_pid,
    make_tls_cert,
    settle,
)

pytestmark = pytest.mark.integration

N = 7  # a prime: a count that comes out right by accident is unlikely
SELECT_TEXT = "SELECT id, name FROM items WHERE id = ?"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A private cluster with TLS available (sslmode=require works), database ``shop``, table ``items``."""
    pg = start_postgres(make_tls_cert(tmp_path_factory.mktemp("pgtls")))
    try:
        yield pg
    finally:
        stop_postgres(pg)


def db_client(driver: str, pg: Postgres, scenario: str, n: int = N) -> PausedClient:
    return PausedClient(argv=[PYTHON, str(CLIENTS / "db_client.py"), driver, pg.dsn(), scenario, str(n)])


def traced_calls(client: PausedClient, otelbpf, receiver, expected: int):
    """Trace the paused client only, let it go; (results, its spans, run result, t0, t1)."""
    try:
        run = otelbpf("--pid", str(client.pid), receiver=receiver)
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, expected)
        res = run.stop()
    finally:
        client.stop()
    return results, by_pid(receiver.spans(), client.pid), res, t0, t1


def assert_db_span(span, pg: Postgres, **expected) -> None:
    """A CLIENT span of this server with exactly the expected database attributes (others absent)."""
    assert span.kind == CLIENT
    a = span.attributes
    assert a["db.system.name"] == "postgresql"
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == pg.port
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["network.peer.port"] == pg.port
    assert a["network.transport"] == "tcp"
    for key in (
        "db.namespace",
        "db.operation.name",
        "db.collection.name",
        "db.query.text",
        "db.response.status_code",
        "db.operation.batch.size",
        "error.type",
    ):
        assert a.get(key) == expected.get(key), (key, a)


def test_simple_queries_on_a_connection_opened_before_otelbpf(postgres, otelbpf, receiver):
    """psycopg2 sends simple Queries with the values inside: N spans, literals never exported."""
    client = db_client("psycopg2", postgres, "simple")
    results, spans, res, t0, t1 = traced_calls(client, otelbpf, receiver, N)
    assert len(results["calls"]) == N
    assert len(spans) == N
    assert_in_window(spans, t0, t1)
    for s in spans:
        assert s.name == "SELECT items"
        assert s.status_code == 0
        assert_db_span(
            s, postgres, **{"db.operation.name": "SELECT", "db.collection.name": "items", "db.query.text": SELECT_TEXT}
        )
        values = " ".join(all_values(s))
        for i in range(N):
            assert str(1000 + i) not in values
    assert_summary(res, requests=N, exported=N)


def test_extended_protocol_with_named_prepared_statements(postgres, otelbpf, receiver):
    """psycopg 3 binds on the server: the first Execute comes with its Parse, later ones without."""
    client = db_client("psycopg", postgres, "prepared")
    results, spans, res, t0, t1 = traced_calls(client, otelbpf, receiver, N)
    assert len(spans) == N
    text = "SELECT id, name FROM items WHERE id = $1"
    for s in spans:
        assert s.name == "SELECT items"
        assert_db_span(
            s, postgres, **{"db.operation.name": "SELECT", "db.collection.name": "items", "db.query.text": text}
        )
    # psycopg 3 prepares in a round trip of its own (Parse, Describe, Sync): a record, but no call to show.
    assert_summary(res, requests=N + 1, exported=N)
    assert res.summary["records without a span (handshakes, prepare-only round trips)"] == 1


def test_pipelined_statements_before_one_sync_are_one_batch_span(postgres, otelbpf, receiver):
    client = db_client("psycopg", postgres, "pipeline", 5)
    results, spans, res, t0, t1 = traced_calls(client, otelbpf, receiver, 2)
    assert [s.name for s in spans] == ["BATCH INSERT items", "DELETE items"]
    batch, delete = spans
    assert_db_span(
        batch,
        postgres,
        **{
            "db.operation.name": "BATCH INSERT",
            "db.collection.name": "items",
            "db.query.text": "INSERT INTO items (id, name) VALUES ($1, $2)",
            "db.operation.batch.size": 5,
        },
    )
    assert "secret-" not in " ".join(all_values(batch))
    assert_db_span(
        delete,
        postgres,
        **{
            "db.operation.name": "DELETE",
            "db.collection.name": "items",
            "db.query.text": "DELETE FROM items WHERE id >= ?",
        },
    )
    assert_summary(res, requests=2, exported=2)


def test_errors_give_error_spans_with_the_sqlstate(postgres, otelbpf, receiver):
    client = db_client("psycopg2", postgres, "error", 3)
    results, spans, res, t0, t1 = traced_calls(client, otelbpf, receiver, 3)
    assert results["errors"] == 3
    assert len(spans) == 3
    for s in spans:
        assert s.name == "SELECT no_such_table"
        assert s.status_code == 2
        # Quoted parts of the server's text are hidden: PostgreSQL quotes values the same way as names.
        assert s.status_message == "relation ? does not exist"
        assert_db_span(
            s,
            postgres,
            **{
                "db.operation.name": "SELECT",
                "db.collection.name": "no_such_table",
                "db.query.text": "SELECT * FROM no_such_table",
                "db.response.status_code": "42P01",
                "error.type": "42P01",
            },
        )
    assert_summary(res, requests=3, exported=3)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psql_startup_gives_the_database_and_tls_is_followed(postgres, otelbpf, receiver, sslmode):
    """psql started under otelbpf: its StartupMessage names the database; with sslmode=require the query is
    read from libssl's plaintext."""
    psql = [str(postgres.bindir / "psql"), "-X", "-A", "-t", "-d", postgres.dsn(sslmode)]
    client = PausedClient(argv=[PYTHON, str(CLIENTS / "run_paused.py"), *psql, "-c", "SELECT count(*) FROM items"])
    results, spans, res, t0, t1 = traced_calls(client, otelbpf, receiver, 1)
    assert results["returncode"] == 0, results["stderr"]
    assert results["stdout"].strip() == "101"
    spans = [s for s in receiver.spans() if s.resource.get("process.pid") == results["pid"]]
    assert len(spans) == 1, [s.name for s in receiver.spans()]
    (span,) = spans
    assert span.name == "SELECT items"
    assert_db_span(
        span,
        postgres,
        **{
            "db.namespace": "shop",
            "db.operation.name": "SELECT",
            "db.collection.name": "items",
            "db.query.text": "SELECT count(*) FROM items",
        },
    )
    assert span.attributes.get("otelbpf.tls.library") == ("openssl" if sslmode == "require" else None)
    assert res.returncode == 0, res.stderr
    assert res.summary.get("events lost") == 0, res.stderr
