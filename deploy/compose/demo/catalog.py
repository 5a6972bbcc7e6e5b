"""The demo's database service: a small Flask app reading PostgreSQL with psycopg2, uninstrumented.

usage: catalog.py PORT PG_DSN

Routes (GET):
  /item/<id>   SELECT one row; 404 if there is none
  /items       SELECT every row
  /slow        pg_sleep(0.2), for a long database span
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import psycopg2
from flask import Flask, abort, jsonify

app = Flask(__name__)
_local = threading.local()


def cursor():  # noqa: ANN201
    """A connection per request thread: Werkzeug's threaded server runs each request on its own."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg2.connect(app.config["PG_DSN"])
        conn.autocommit = True
    return conn.cursor()


@app.get("/item/<int:item>")
def item(item: int):  # noqa: ANN201
    with cursor() as cur:
        cur.execute("SELECT id, name, price FROM items WHERE id = %s", (item,))
        row = cur.fetchone()
    if row is None:
        abort(404)
    return jsonify(id=row[0], name=row[1], price=float(row[2]))


@app.get("/items")
def items():  # noqa: ANN201
    with cursor() as cur:
        cur.execute("SELECT id, name FROM items ORDER BY id")
        return jsonify([{"id": i, "name": n} for i, n in cur.fetchall()])


@app.get("/slow")
def slow():  # noqa: ANN201
    with cursor() as cur:
        cur.execute("SELECT pg_sleep(0.2)")
    return "slept\n"


def main() -> None:
    port, app.config["PG_DSN"] = int(sys.argv[1]), sys.argv[2]
    for _ in range(60):  # postgres may still be starting
        try:
            psycopg2.connect(app.config["PG_DSN"]).close()
            break
        except psycopg2.OperationalError:
            time.sleep(1)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log: the traces are the log
    app.run(host="0.0.0.0", port=port, threaded=True)


if __name__ == "__main__":
    main()
