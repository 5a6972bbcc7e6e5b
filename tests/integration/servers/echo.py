"""A raw TCP echo server (not HTTP). Prints "PORT <n>" on stdout once listening on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(64)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    sys.stdout.close()
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
