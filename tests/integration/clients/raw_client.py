"""Raw-socket clients for the integration tests. Each prints a JSON result on stdout.

usage:
  raw_client.py pieces PORT PATH           one request whose head is sent in two pieces, 50 ms apart
  raw_client.py pipeline PORT PATH...      all requests in one send on one connection, then all responses
  raw_client.py binary PORT N              N exchanges of a made-up length-prefixed binary protocol (echoed);
  raw_client.py echo PORT N [lookalike]    N non-HTTP exchanges with an echo server on one connection;
                                           lookalike: every tenth message reads like an HTTP request line
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time


def read_response(f) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Read one Content-Length delimited response; return (status, bytes read)."""
    status_line = f.readline()
    size = len(status_line)
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = f.readline()
        size += len(line)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = f.read(length)
    return status, size + len(body)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def pieces(port: int, path: str) -> dict:
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: raw-client/1\r\nConnection: close\r\n\r\n"
    ).encode()
    split = len(f"GET {path} HTTP/1.1\r\nHo")
    with connect(port) as sock:
        sock.sendall(head[:split])
        time.sleep(0.05)
        sock.sendall(head[split:])
        status, size = read_response(sock.makefile("rb"))
    return {"sent": len(head), "first_piece": split, "status": status, "response_size": size}


def pipeline(port: int, paths: list[str]) -> dict:
    data = b"".join(
        f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: raw-client/1\r\n\r\n".encode() for p in paths
    )
    with connect(port) as sock:
        sock.sendall(data)  # one send: all requests arrive together
        f = sock.makefile("rb")
        results = [read_response(f) for _ in paths]
    return {"sent": len(data), "statuses": [s for s, _ in results], "sizes": [n for _, n in results]}


def echo(port: int, n: int, lookalike: bool) -> dict:
    ok = 0
    with connect(port) as sock:
        f = sock.makefile("rb")
        for i in range(n):
            # Starts as a non-HTTP protocol; with lookalike, later messages read like HTTP (it is not).
            msg = b"GET /not-http HTTP/1.1\n" if lookalike and i % 10 == 5 else b"PING %d\n" % i
            sock.sendall(msg)
            if f.readline() == msg:
                ok += 1
    return {"exchanges": ok}


def binary(port: int, n: int) -> dict:
    """A made-up binary protocol: a 4-byte big-endian length, then that many bytes, echoed back whole."""
    rng = random.Random(7)
    ok = 0
    with connect(port) as sock:
        f = sock.makefile("rb")
        for i in range(n):
            body = bytes(rng.getrandbits(8) for _ in range(8 + i % 40))
            msg = len(body).to_bytes(4, "big") + body + b"\n"  # the echo server answers line by line
            sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = f.readline()
                if not chunk:
                    break
                got += chunk
            ok += got == msg
    return {"exchanges": ok}


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "pieces":
        out = pieces(port, sys.argv[3])
    elif mode == "pipeline":
        out = pipeline(port, sys.argv[3:])
    elif mode == "echo":
        out = echo(port, int(sys.argv[3]), sys.argv[4:] == ["lookalike"])
    elif mode == "binary":
        out = binary(port, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
