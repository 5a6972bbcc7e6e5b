"""One keep-alive connection making POST requests, reporting the kernel's own TCP counters for its socket.

usage: tcp_client.py PORT REQUESTS BODY_BYTES

Prints "paused"; on "go" connects to 127.0.0.1:PORT, sends REQUESTS POST /echo requests of BODY_BYTES
each, one at a time, reading each response; then prints one JSON object with the socket's TCP_INFO
(total_retrans, rtt_us: what `ss -ti` shows) and the responses, and keeps the connection open until stdin
closes, so that no retransmit of its close is counted.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

# struct tcp_info (linux/tcp.h): tcpi_rtt at byte 68, tcpi_total_retrans at byte 100.
_RTT, _TOTAL_RETRANS = 68, 100


def read_response(f) -> bytes:
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return f.read(length)


def main() -> None:
    port, requests, size = (int(a) for a in sys.argv[1:4])
    print("paused", flush=True)
    sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    body = b"x" * size
    answers = []
    for _ in range(requests):
        head = f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n\r\n".encode()
        sock.sendall(head + body)
        answers.append(read_response(f).decode())
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    (rtt,) = struct.unpack_from("<I", info, _RTT)
    (retrans,) = struct.unpack_from("<I", info, _TOTAL_RETRANS)
    print(json.dumps({"total_retrans": retrans, "rtt_us": rtt, "answers": answers}), flush=True)
    sys.stdin.read()
    sock.close()


if __name__ == "__main__":
    main()
