"""A small, uninstrumented shop API for `make demo`: it serves HTTP and calls itself as a client.

Usage: demo_app.py PORT [TLS_PORT CERT KEY]. With the TLS arguments it also serves HTTPS on
TLS_PORT, and checkouts pay over HTTPS, trusting CERT.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
TLS_PORT, CERT, KEY = (int(sys.argv[2]), sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (0, "", "")


class Shop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path.startswith("/inventory/"):
            time.sleep(0.005)
            self._reply(200, {"sku": path.rsplit("/", 1)[1], "stock": 7})
        elif path.startswith("/payments/"):
            time.sleep(0.003)
            self._reply(200, {"paid": True})
        elif path.startswith("/checkout/"):
            # Calls out like a real service would: these show up as CLIENT spans.
            sku = path.rsplit("/", 1)[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/inventory/{sku}") as r:
                r.read()
            if TLS_PORT:
                ctx = ssl.create_default_context(cafile=CERT)
                with urllib.request.urlopen(f"https://127.0.0.1:{TLS_PORT}/payments/{sku}", context=ctx) as r:
                    r.read()
            time.sleep(0.002)
            self._reply(200, {"order": sku, "ok": True})
        elif path == "/boom":
            self._reply(500, {"error": "kaboom"})
        else:
            self._reply(404, {"error": "not found"})


if __name__ == "__main__":
    if TLS_PORT:
        tls = ThreadingHTTPServer(("127.0.0.1", TLS_PORT), Shop)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        threading.Thread(target=tls.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", PORT), Shop).serve_forever()
