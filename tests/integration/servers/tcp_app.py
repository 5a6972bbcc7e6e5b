"""An HTTP server whose handlers make TCP fail in chosen ways, for the TCP-facts tests.

usage: tcp_app.py   (prints "PORT <n>" once it listens on 127.0.0.1)

GET /connect/<port>/<how>: connect to 127.0.0.1:<port> from the handler's thread, then answer 200 with the
    outcome ("connected", or the error's name). how:
      blocking: a blocking connect(), no timeout (fails with the kernel's error);
      syncnt:   the same with TCP_SYNCNT 1, so a dropped SYN times out in the kernel after about 3 s;
      timeout:  socket.create_connection with a 0.5 s timeout (non-blocking inside; given up on);
GET /abort: read the request, then close the connection with SO_LINGER 0: the client gets a reset.
POST /echo: read the body, answer with its length.
One thread per connection (ThreadingHTTPServer), keep-alive (HTTP/1.1).
"""

from __future__ import annotations

import io
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def connect(port: int, how: str) -> str:
    try:
        if how == "timeout":
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        else:
            sock = socket.socket()
            if how == "syncnt":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                raise
        sock.close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _reply(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[0] == "connect" and len(parts) == 3:
            self._reply(connect(int(parts[1]), parts[2]).encode())
        elif parts[0] == "abort":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            self.wfile = io.BytesIO()  # what the handler's epilogue flushes, now that the socket is gone
        else:
            self._reply(b"not found", 404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(str(len(body)).encode())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
