"""The front of the multi-service chain: an uninstrumented HTTP/1.1 ThreadingHTTPServer (a thread per connection).

usage: chain_front.py DOWNSTREAM_URL      (e.g. http://127.0.0.1:1234)

Binds 127.0.0.1 on a free port and prints "PORT <n>" on stdout once listening. Keep-alive is on and every reply has
a Content-Length.

Routes (GET):
  /order/<id>  one downstream GET DOWNSTREAM_URL/stock/<id> (http.client, a new connection closed afterwards, made
               synchronously in the handler thread), then 200 "order <id>: <downstream body>"; any downstream
               failure (connection error or non-200) 502
  anything else 404
"""

from __future__ import annotations

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import SplitResult, urlsplit

DOWNSTREAM = urlsplit("http://127.0.0.1")


def fetch(path: str, downstream: SplitResult | None = None) -> bytes:
    """GET path from the downstream service on a new connection (also used by chain_gunicorn_app)."""
    downstream = downstream or DOWNSTREAM
    conn = http.client.HTTPConnection(downstream.hostname, downstream.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"downstream status {resp.status}")
        return body
    finally:
        conn.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body in one write: two small writes would wait on Nagle and a delayed ACK (40 ms).
    wbufsize = 65536

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/order/"):
            oid = path[len("/order/") :]
            try:
                body = fetch(f"/stock/{oid}")
            except (OSError, http.client.HTTPException) as exc:
                self._reply(502, f"bad gateway: {exc}\n".encode())
                return
            self._reply(200, f"order {oid}: ".encode() + body)
        else:
            self._reply(404, b"not found\n")


def main() -> None:
    global DOWNSTREAM
    if len(sys.argv) != 2:
        sys.exit("usage: chain_front.py DOWNSTREAM_URL")
    DOWNSTREAM = urlsplit(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
