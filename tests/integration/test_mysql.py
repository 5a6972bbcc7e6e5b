"""MySQL-protocol client spans against a real MariaDB: queries, errors, and the greeting's system name.

PyMySQL connects before otelbpf starts (its greeting is never seen, so the system stays "mysql"); the
mariadb command-line client is started under otelbpf, so its greeting says MariaDB and its handshake
names the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.databases import MariaDb, start_mariadb, stop_mariadb
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
)

pytestmark = pytest.mark.integration

N = 7


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDb]:
    server = start_mariadb()
    try:
        yield server
    finally:
        stop_mariadb(server)


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


def assert_mysql_span(span, server: MariaDb, system: str, **expected) -> None:
    assert span.kind == CLIENT
    a = span.attributes
    assert a["db.system.name"] == system
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == server.port
    assert a["network.peer.port"] == server.port
    for key in (
        "db.namespace",
        "db.operation.name",
        "db.collection.name",
        "db.query.text",
        "db.response.status_code",
    ):
        assert a.get(key) == expected.get(key), (key, a)


def pymysql(server: MariaDb, scenario: str, n: int = N) -> PausedClient:
    dsn = f"127.0.0.1:{server.port}:shop"
    return PausedClient(argv=[PYTHON, str(CLIENTS / "db_client.py"), "pymysql", dsn, scenario, str(n)])


def test_queries_on_a_connection_opened_before_otelbpf(mariadb, otelbpf, receiver):
    client = pymysql(mariadb, "simple")
    results, res, t0, t1 = traced(client, otelbpf, receiver, N)
    spans = by_pid(receiver.spans(), client.pid)
    assert len(spans) == N
    assert_in_window(spans, t0, t1)
    for s in spans:
        assert s.name == "SELECT items"
        assert s.status_code == 0
        assert_mysql_span(
            s,
            mariadb,
            "mysql",
            **{
                "db.operation.name": "SELECT",
                "db.collection.name": "items",
                "db.query.text": "SELECT id, name FROM items WHERE id = ?",
            },
        )
        values = " ".join(all_values(s))
        for i in range(N):
            assert str(1000 + i) not in values
    assert_summary(res, requests=N, exported=N)


def test_errors_give_error_spans_with_the_error_number(mariadb, otelbpf, receiver):
    client = pymysql(mariadb, "error", 3)
    results, res, t0, t1 = traced(client, otelbpf, receiver, 3)
    assert results["errors"] == 3
    spans = by_pid(receiver.spans(), client.pid)
    assert len(spans) == 3
    for s in spans:
        assert s.status_code == 2
        assert_mysql_span(
            s,
            mariadb,
            "mysql",
            **{
                "db.operation.name": "SELECT",
                "db.collection.name": "no_such_table",
                "db.query.text": "SELECT * FROM no_such_table",
                "db.response.status_code": "1146",
            },
        )
    assert_summary(res, requests=3, exported=3)


def test_the_mariadb_client_greeting_and_handshake_name_system_and_database(mariadb, otelbpf, receiver):
    argv = ["mariadb", "-h", "127.0.0.1", "-P", str(mariadb.port), "-u", "root", "-N", "-B", "shop"]
    client = PausedClient(argv=[PYTHON, str(CLIENTS / "run_paused.py"), *argv, "-e", "SELECT count(*) FROM items"])
    results, res, t0, t1 = traced(client, otelbpf, receiver, 1)
    assert results["returncode"] == 0, results["stderr"]
    assert results["stdout"].strip() == "101"
    spans = [s for s in receiver.spans() if s.resource.get("process.pid") == results["pid"]]
    user = [s for s in spans if s.attributes.get("db.query.text") == "SELECT count(*) FROM items"]
    assert len(user) == 1, [(s.name, s.attributes.get("db.query.text")) for s in spans]
    assert_mysql_span(
        user[0],
        mariadb,
        "mariadb",
        **{
            "db.namespace": "shop",
            "db.operation.name": "SELECT",
            "db.collection.name": "items",
            "db.query.text": "SELECT count(*) FROM items",
        },
    )
    assert res.summary.get("events lost") == 0, res.stderr


def test_prepared_statements_are_remembered_by_id(mariadb, otelbpf, receiver):
    """mysql-connector's prepared cursor: one COM_STMT_PREPARE, then COM_STMT_EXECUTE with the id only."""
    dsn = f"127.0.0.1:{mariadb.port}:shop"
    argv = [PYTHON, str(CLIENTS / "db_client.py"), "mysql-connector", dsn, "prepared", str(N)]
    client = PausedClient(argv=argv)
    results, res, t0, t1 = traced(client, otelbpf, receiver, N + 1)
    spans = by_pid(receiver.spans(), client.pid)
    text = "SELECT id, name FROM items WHERE id = ?"
    prepare = [s for s in spans if s.attributes.get("db.operation.name") == "PREPARE"]
    executes = [s for s in spans if s.attributes.get("db.operation.name") == "SELECT"]
    assert len(prepare) == 1 and len(executes) == N, [s.name for s in spans]
    for s in executes:
        assert s.name == "SELECT items"
        assert_mysql_span(
            s,
            mariadb,
            "mysql",
            **{"db.operation.name": "SELECT", "db.collection.name": "items", "db.query.text": text},
        )
    assert res.summary.get("events lost") == 0, res.stderr
