"""A Flask app whose handlers call PostgreSQL, Redis and MariaDB, as an uninstrumented service would.

usage: flask_db_app.py PG_DSN REDIS_URL MYSQL_HOST:PORT:DB

Opens one connection to each database at start, before it listens, and shares them behind a lock (a pool of
one), so the connections predate the tracer. Serves
Werkzeug's threaded server on 127.0.0.1 and prints "PORT <n>" once listening.

Routes (GET):
  /item/<id>   PostgreSQL SELECT (psycopg2), then Redis SET of the cached name
  /item3/<id>  PostgreSQL SELECT with psycopg 3 (extended protocol)
  /stock/<id>  MariaDB SELECT
  /all/<id>    all three, in that order: PostgreSQL, Redis, MariaDB
"""

from __future__ import annotations

import socket
import sys
import threading

import psycopg
import psycopg2
import pymysql
import redis
from flask import Flask
from werkzeug.serving import make_server

pg_dsn, redis_url, mysql_dsn = sys.argv[1:4]
pg = psycopg2.connect(pg_dsn)
pg.autocommit = True
pg3 = psycopg.connect(pg_dsn, autocommit=True)
cache = redis.Redis.from_url(redis_url)
cache.ping()
host, port, database = mysql_dsn.split(":")
my = pymysql.connect(host=host, port=int(port), user="root", database=database, autocommit=True)
lock = threading.Lock()  # one connection each: calls take turns, each on its request's thread
app = Flask(__name__)


def pg_item(item: int) -> str:
    with lock, pg.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = %s", (item,))
        row = cur.fetchone()
    return row[0] if row else ""


def cache_name(item: int, name: str) -> None:
    with lock:
        cache.set(f"item:{item}", name)


def stock(item: int) -> str:
    with lock, my.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = %s", (item,))
        row = cur.fetchone()
    return row[0] if row else ""


@app.get("/item/<int:item>")
def item_route(item: int) -> str:
    name = pg_item(item)
    cache_name(item, name)
    return name


@app.get("/item3/<int:item>")
def item3_route(item: int) -> str:
    # psycopg 3: the extended protocol, the value bound on the server.
    with lock, pg3.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = %s", (item,))
        row = cur.fetchone()
    return row[0] if row else ""


@app.get("/stock/<int:item>")
def stock_route(item: int) -> str:
    return stock(item)


@app.get("/all/<int:item>")
def all_route(item: int) -> str:
    name = pg_item(item)
    cache_name(item, name)
    return f"{name}|{stock(item)}"


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_no = sock.getsockname()[1]
    sock.close()
    server = make_server("127.0.0.1", port_no, app, threaded=True)
    print(f"PORT {port_no}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
