"""HTTPS through an OpenSSL 1.1 copy bundled in a wheel, called directly with ctypes.

Usage: openssl11_client.py LIBCRYPTO LIBSSL CA_FILE PORT PATH...

Debian 12 ships only OpenSSL 3; psycopg2-binary's wheel carries libssl/libcrypto 1.1 under hashed
names, as many wheels do. The libraries are loaded at start, before "paused", so otelbpf finds the
copy in /proc/PID/maps. Protocol as clients/http_client.py: "paused", then on "go" every PATH is
requested over one keep-alive TLS connection (SSL_write, SSL_read), one JSON line of results, and
the process stays until stdin closes.
"""

from __future__ import annotations

import ctypes
import json
import socket
import struct
import sys

SSL_VERIFY_PEER = 1


def load(libcrypto: str, libssl: str) -> ctypes.CDLL:
    # The copy has no RPATH: its libcrypto must be loaded first, so the soname it needs resolves.
    ctypes.CDLL(libcrypto, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(libssl)
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, res, argtypes in [
        ("TLS_client_method", vp, []),
        ("SSL_CTX_new", vp, [vp]),
        ("SSL_CTX_load_verify_locations", i, [vp, cp, cp]),
        ("SSL_CTX_set_verify", None, [vp, i, vp]),
        ("SSL_new", vp, [vp]),
        ("SSL_set_fd", i, [vp, i]),
        ("SSL_set1_host", i, [vp, cp]),
        ("SSL_connect", i, [vp]),
        ("SSL_write", i, [vp, cp, i]),
        ("SSL_read", i, [vp, vp, i]),
        ("SSL_shutdown", i, [vp]),
        ("SSL_free", None, [vp]),
        ("SSL_CTX_free", None, [vp]),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, argtypes
    return lib


def read_response(lib: ctypes.CDLL, ssl: int, buf: ctypes.Array) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        n = lib.SSL_read(ssl, buf, len(buf))
        if n <= 0:
            raise OSError(f"SSL_read returned {n} before the response head")
        data += buf.raw[:n]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        n = lib.SSL_read(ssl, buf, len(buf))
        if n <= 0:
            raise OSError(f"SSL_read returned {n} inside the body")
        body += buf.raw[:n]
    return int(lines[0].split()[1]), body


def main() -> None:
    libcrypto, libssl, ca, port, *paths = sys.argv[1:]
    lib = load(libcrypto, libssl)
    print("paused", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    if lib.SSL_CTX_load_verify_locations(ctx, ca.encode(), None) != 1:
        raise SystemExit("cannot load the CA file")
    lib.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, None)
    sock = socket.create_connection(("127.0.0.1", int(port)))
    # OpenSSL does the I/O on the fd itself: keep it blocking (a Python timeout would make it
    # non-blocking) and bound each read in the kernel instead.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    ssl = lib.SSL_new(ctx)
    lib.SSL_set_fd(ssl, sock.fileno())
    lib.SSL_set1_host(ssl, b"localhost")
    if lib.SSL_connect(ssl) != 1:
        raise SystemExit("TLS handshake failed")
    buf = ctypes.create_string_buffer(16384)
    results = []
    for path in paths:
        req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: openssl11-client/1\r\n\r\n".encode()
        if lib.SSL_write(ssl, req, len(req)) != len(req):
            raise SystemExit("SSL_write failed")
        status, body = read_response(lib, ssl, buf)
        results.append({"url": path, "status": status, "bytes": len(body), "local_port": sock.getsockname()[1]})
    lib.SSL_shutdown(ssl)
    lib.SSL_free(ssl)
    lib.SSL_CTX_free(ctx)
    sock.close()
    print(json.dumps(results), flush=True)
    sys.stdin.read()  # stay alive until the test closes stdin


if __name__ == "__main__":
    main()
