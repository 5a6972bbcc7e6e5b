"""A Flask app's requests and the database calls their handlers make: exact trees, linked by thread.

The app (servers/flask_db_app.py) opens its PostgreSQL, Redis and MariaDB connections before otelbpf
starts; curl is untraced. Each request must come out as one trace: the SERVER span with exactly the
database CLIENT spans its handler made, in order, each a child found by thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.databases import (
    MariaDb,
    Postgres,
    Redis,
    start_mariadb,
    start_postgres,
    start_redis,
    stop_mariadb,
    stop_postgres,
)
from tests.integration.helpers import (
    CLIENT,
    SERVER,
    SERVERS,
    Server,
    assert_summary,
    curl,
    settle,
    start_script_server,
    stop_process,
)

pytestmark = pytest.mark.integration

SOURCE = "otelbpf.parent.source"


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, Redis, MariaDb]]:
    pg = start_postgres()
    cache = start_redis(tmp_path_factory.mktemp("redis"))
    my = start_mariadb()
    try:
        yield pg, cache, my
    finally:
        stop_postgres(pg)
        stop_process(cache.proc)
        stop_mariadb(my)


@pytest.fixture(scope="module")
def app(databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pg, cache, my = databases
    log = tmp_path_factory.mktemp("flask") / "app.stderr"
    server = start_script_server(
        SERVERS / "flask_db_app.py", pg.dsn(), cache.url(), f"127.0.0.1:{my.port}:shop", log=log
    )
    try:
        yield server
    finally:
        stop_process(server.proc)


def trees(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans:
        out.setdefault(s.trace_id, []).append(s)
    return out


@pytest.mark.parametrize(
    ("path", "children"),
    [
        ("/item/", [("postgresql", "SELECT items"), ("redis", "SET")]),
        ("/item3/", [("postgresql", "SELECT items")]),
        ("/stock/", [("mysql", "SELECT items")]),
        ("/all/", [("postgresql", "SELECT items"), ("redis", "SET"), ("mysql", "SELECT items")]),
    ],
)
def test_each_request_is_one_tree_with_its_database_calls(app, otelbpf, receiver, path, children):
    ids = [1001, 1002, 1003, 1005, 1007]
    per_request = 1 + len(children)
    run = otelbpf("--pid", str(app.pid), receiver=receiver)
    for i in ids:
        assert curl(app.url(f"{path}{i}")).stdout.startswith(f"item {i}")
    settle(receiver, per_request * len(ids))
    res = run.stop()
    assert_summary(res, requests=per_request * len(ids), exported=per_request * len(ids))
    by_trace = trees(receiver.spans())
    assert len(by_trace) == len(ids)
    for group in by_trace.values():
        (root,) = [s for s in group if s.kind == SERVER]
        assert root.parent_span_id == ""
        calls = sorted((s for s in group if s.kind == CLIENT), key=lambda s: s.start_ns)
        assert [(s.attributes["db.system.name"], s.name) for s in calls] == children
        for s in calls:
            assert s.parent_span_id == root.span_id
            assert s.attributes[SOURCE] == "thread"
            assert s.attributes["thread.id"] == root.attributes["thread.id"]
            assert root.start_ns <= s.start_ns <= s.end_ns <= root.end_ns
    assert res.summary["parents found by thread"] == len(children) * len(ids)
