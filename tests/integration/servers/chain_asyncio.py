"""The front of the multi-service chain as a pure asyncio server: one thread, one event loop, many connections.

usage: chain_asyncio.py DOWNSTREAM_URL      (e.g. http://127.0.0.1:1234)

Binds 127.0.0.1 on a free port (asyncio.start_server) and prints "PORT <n>" on stdout once listening. One request
per connection: every reply has a Content-Length and "Connection: close", then the connection is closed.

Routes (GET):
  /order/<id>  one downstream GET /stock/<id> over asyncio.open_connection ("Connection: close", response read to
               EOF), then 200 "order <id>: <downstream body>"; any downstream failure (connection error or non-200)
               502
  anything else 404
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 502: "Bad Gateway"}


async def fetch(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()  # to EOF
    finally:
        writer.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or status_line[1] != b"200":
        raise OSError(f"bad downstream response: {head[:80]!r}")
    return body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
    try:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        parts = head.split(b"\r\n", 1)[0].split()
        path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) >= 2 else ""
        if len(parts) < 2:
            status, body = 400, b"bad request\n"
        elif parts[0] == b"GET" and path.startswith("/order/"):
            oid = path[len("/order/") :]
            try:
                status, body = 200, f"order {oid}: ".encode() + await fetch(host, port, f"/stock/{oid}")
            except OSError as exc:
                status, body = 502, f"bad gateway: {exc}\n".encode()
        else:
            status, body = 404, b"not found\n"
        writer.write(
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(downstream: str) -> None:
    url = urlsplit(downstream)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    server = await asyncio.start_server(lambda r, w: handle(r, w, host, port), "127.0.0.1", 0, backlog=128)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    sys.stdout.close()
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: chain_asyncio.py DOWNSTREAM_URL")
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
