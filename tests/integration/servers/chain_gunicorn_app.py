"""The front of the multi-service chain as a plain WSGI app, for gunicorn sync workers (see chain_gunicorn.py).

usage: CHAIN_DOWNSTREAM=http://127.0.0.1:1234 gunicorn chain_gunicorn_app:app   (normally started by chain_gunicorn.py)

Routes (GET):
  /order/<id>  one downstream GET $CHAIN_DOWNSTREAM/stock/<id> (http.client, a new connection closed afterwards, made
               synchronously in the worker), then 200 "order <id>: <downstream body>"; any downstream failure
               (connection error or non-200) 502
  anything else 404
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from chain_front import fetch  # the same downstream call as the threaded front (servers/ is on sys.path)


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") == "GET" and path.startswith("/order/"):
        oid = path[len("/order/") :]
        try:
            downstream = urlsplit(os.environ["CHAIN_DOWNSTREAM"])
            status, body = "200 OK", f"order {oid}: ".encode() + fetch(f"/stock/{oid}", downstream)
        except (OSError, http.client.HTTPException) as exc:
            status, body = "502 Bad Gateway", f"bad gateway: {exc}\n".encode()
    else:
        status, body = "404 Not Found", b"not found\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
