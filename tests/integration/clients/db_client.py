"""A database client that connects first, pauses, then makes a scripted set of calls (helpers.PausedClient).

usage: db_client.py DRIVER DSN SCENARIO [N]

DRIVER is psycopg2, psycopg (3), pymysql (DSN host:port:database) or redis (DSN a redis:// URL). The
connection is opened BEFORE "paused" is printed, so the tracer meets a connection whose handshake it never
saw, as with an application's pool. On "go" the SCENARIO runs; one JSON line reports {"pid", "calls": [what
was sent, in order], "errors": n}; the process then stays alive until stdin closes.
"""

from __future__ import annotations

import json
import os
import sys


def connect(driver: str, dsn: str):
    if driver == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn
    if driver == "psycopg":
        import psycopg

        return psycopg.connect(dsn, autocommit=True)
    if driver in ("redis", "redis-resp3"):
        import redis

        # RESP3: HELLO 3 goes out as the connection opens, so the traced replies are RESP3 types.
        conn = redis.Redis.from_url(dsn, protocol=3 if driver == "redis-resp3" else 2)
        conn.ping()  # connect now, before the tracer starts
        return conn
    if driver == "pymysql":
        import pymysql

        host, port, database = dsn.split(":")
        return pymysql.connect(host=host, port=int(port), user="root", database=database, autocommit=True)
    if driver == "mysql-connector":
        import mysql.connector

        host, port, database = dsn.split(":")
        # Pure Python: the socket I/O is this process's own, as with PyMySQL.
        return mysql.connector.connect(
            host=host, port=int(port), user="root", database=database, autocommit=True, use_pure=True
        )
    raise SystemExit(f"unknown driver {driver}")


def redis_scenario(conn, scenario: str, n: int) -> tuple[list[str], int]:
    calls: list[str] = []
    errors = 0
    if scenario == "commands":
        for i in range(n):
            conn.set(f"user:{1000 + i}", f"secret-value-{i}")
            calls.append("SET")
    elif scenario == "mixed":
        # Replies of several RESP3 types: a map (HGETALL), a set (SMEMBERS), a double (ZSCORE), null (GET).
        conn.hset("user:42:profile", mapping={"name": "secret-value-a", "city": "secret-value-b"})
        conn.sadd("tags:7", "secret-value-c", "secret-value-d")
        conn.zadd("scores", {"secret-value-e": 1.5})
        for _ in range(n):
            conn.hgetall("user:42:profile")
            conn.smembers("tags:7")
            conn.zscore("scores", "secret-value-e")
            conn.get("missing:1")
        calls += ["HSET", "SADD", "ZADD"] + ["HGETALL", "SMEMBERS", "ZSCORE", "GET"] * n
    elif scenario == "pipeline":
        pipe = conn.pipeline(transaction=False)
        for i in range(n):
            pipe.set(f"user:{2000 + i}", f"secret-value-{i}")
        pipe.execute()
        calls.append(f"PIPELINE SET x{n}")
    elif scenario == "error":
        conn.set("a-string", "x")
        calls.append("SET")
        for _ in range(n):
            try:
                conn.lpush("a-string", "y")
            except Exception:  # noqa: BLE001 - the error is the point
                errors += 1
            calls.append("LPUSH")
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    return calls, errors


def pg_scenario(driver: str, conn, scenario: str, n: int) -> tuple[list[str], int]:
    calls: list[str] = []
    errors = 0
    cur = conn.cursor()
    if scenario == "simple":
        # psycopg2 puts the value into the text itself: a simple Query with a literal in it.
        for i in range(n):
            cur.execute("SELECT id, name FROM items WHERE id = %s", (1000 + i,))
            cur.fetchall()
            calls.append("SELECT items")
    elif scenario == "prepared":
        # psycopg 3 binds server-side: Parse/Bind/Describe/Execute/Sync; prepare=True names the statement
        # and later executions send only Bind/Execute.
        for i in range(n):
            cur.execute("SELECT id, name FROM items WHERE id = %s", (1000 + i,), prepare=True)
            cur.fetchall()
            calls.append("SELECT items")
    elif scenario == "pipeline":
        # Several statements before one Sync: one batch span.
        with conn.pipeline():
            for i in range(n):
                cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (5000 + i, f"secret-{i}"))
        conn.execute("DELETE FROM items WHERE id >= 5000")
        calls.append(f"BATCH INSERT x{n}")
        calls.append("DELETE items")
    elif scenario == "error":
        for _ in range(n):
            try:
                cur.execute("SELECT * FROM no_such_table")
            except Exception:  # noqa: BLE001 - the error is the point
                errors += 1
            calls.append("SELECT no_such_table")
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    return calls, errors


def mysql_scenario(conn, scenario: str, n: int) -> tuple[list[str], int]:
    calls: list[str] = []
    errors = 0
    cur = conn.cursor()
    if scenario == "simple":
        for i in range(n):
            cur.execute("SELECT id, name FROM items WHERE id = %s", (1000 + i,))
            cur.fetchall()
            calls.append("SELECT items")
    elif scenario == "prepared":
        # mysql-connector's prepared cursor: COM_STMT_PREPARE once, then COM_STMT_EXECUTE per call.
        cur = conn.cursor(prepared=True)
        for i in range(n):
            cur.execute("SELECT id, name FROM items WHERE id = %s", (1000 + i,))
            cur.fetchall()
            calls.append("SELECT items")
    elif scenario == "error":
        for _ in range(n):
            try:
                cur.execute("SELECT * FROM no_such_table")
            except Exception:  # noqa: BLE001 - the error is the point
                errors += 1
            calls.append("SELECT no_such_table")
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    return calls, errors


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    driver, dsn, scenario = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    conn = connect(driver, dsn)
    print("paused", flush=True)
    sys.stdin.readline()
    if driver in ("redis", "redis-resp3"):
        calls, errors = redis_scenario(conn, scenario, n)
    elif driver in ("pymysql", "mysql-connector"):
        calls, errors = mysql_scenario(conn, scenario, n)
    else:
        calls, errors = pg_scenario(driver, conn, scenario, n)
    print(json.dumps({"pid": os.getpid(), "calls": calls, "errors": errors}), flush=True)
    sys.stdin.read()  # until the test closes stdin
    conn.close()


if __name__ == "__main__":
    main()
