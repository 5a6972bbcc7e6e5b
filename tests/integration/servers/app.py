"""A small uninstrumented HTTP/1.1 app (ThreadingHTTPServer) for the integration tests.

Binds 127.0.0.1 on the given port (0: a free one) and prints "PORT <n>" on stdout once listening.
With --tls-cert and --tls-key the same routes are served over HTTPS (the ssl module: OpenSSL's
SSL_read_ex/SSL_write_ex in libssl.so.3); each connection's handshake runs in its handler thread.

Routes (GET unless noted):
  /items/<id>  200, Content-Length body
  /chunked     200, chunked body written in several writes
  /split       200, status line, each header, the blank line and the body in separate send calls
  /error       500
  /missing     404 (so is any unknown path)
  /close       reads the request, then closes the connection without responding
  /slow        200 after sleeping 50 ms
  /bighead     200 with a head of about 4 KiB (60 headers), Content-Length last of them
  POST <any>   reads the Content-Length body, 200
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNKS = (b"alpha\n", b"beta-beta\n", b"gamma-gamma-gamma\n", b"delta\n")
SPLIT_BODY = (b"split-", b"body-in-", b"three-pieces\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

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
        if path.startswith("/items/"):
            self._reply(200, f"item {path.rsplit('/', 1)[1]}\n".encode())
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))  # one send per chunk
                time.sleep(0.002)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/split":
            body = b"".join(SPLIT_BODY)
            w = self.wfile  # unbuffered: every write is its own send
            w.write(b"HTTP/1.1 200 OK\r\n")
            w.write(b"Content-Type: text/plain\r\n")
            w.write(f"Content-Length: {len(body)}\r\n".encode())
            w.write(b"\r\n")
            for piece in SPLIT_BODY:
                time.sleep(0.002)
                w.write(piece)
        elif path == "/error":
            self._reply(500, b"boom\n")
        elif path == "/close":
            self.close_connection = True  # no response at all
        elif path == "/bighead":
            body = b"big head\n"
            self.send_response(200)
            for i in range(60):
                self.send_header(f"X-Filler-{i:02d}", "f" * 48)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()  # the whole head in one write, longer than the kernel's capture window
            self.wfile.write(body)
        elif path == "/slow":
            time.sleep(0.05)
            self._reply(200, b"slow\n")
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._reply(200, b"ok\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", metavar="PATH", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", metavar="PATH", help="the certificate's PEM private key")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
