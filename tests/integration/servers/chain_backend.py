"""The back of the multi-service chain: an uninstrumented HTTPS (HTTP/1.1) ThreadingHTTPServer.

usage: chain_backend.py CERT KEY      (PEM certificate and its private key)

Binds 127.0.0.1 on a free port and prints "PORT <n>" on stdout once listening. The listening socket is wrapped with
an ssl.SSLContext(PROTOCOL_TLS_SERVER) (the ssl module: SSL_read_ex/SSL_write_ex in libssl.so.3); each connection's
handshake runs in its handler thread. Keep-alive is on and every reply has a Content-Length.

Routes (GET):
  /price/<id>  200 "price-<id>"
  anything else 404
"""

from __future__ import annotations

import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body in one write: two small writes would wait on Nagle and a delayed ACK (40 ms).
    wbufsize = 65536

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, not in accept(): a slow client must not stall the others
        super().setup()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/price/"):
            self._reply(200, f"price-{path[len('/price/') :]}".encode())
        else:
            self._reply(404, b"not found\n")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: chain_backend.py CERT KEY")
    cert, key = sys.argv[1:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # No TLS 1.3 session tickets: sent as small writes after the handshake, they make the first
    # response wait on Nagle and the client's delayed ACK (40 ms).
    context.num_tickets = 0
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
