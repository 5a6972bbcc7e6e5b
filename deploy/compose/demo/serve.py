"""Run one of otelbpf's test servers in a container: on all addresses and a fixed port.

usage: serve.py PORT SCRIPT [ARGS...]

The test servers bind 127.0.0.1 and a free port (they print "PORT <n>" for the tests to read). In a
container other services must reach them by compose name on a known port, so every bind to 127.0.0.1
becomes a bind to 0.0.0.0, and port 0 becomes PORT. The script itself runs unchanged.
"""

from __future__ import annotations

import runpy
import socketserver
import sys

_server_bind = socketserver.TCPServer.server_bind


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: serve.py PORT SCRIPT [ARGS...]")
    port, script = int(sys.argv[1]), sys.argv[2]

    def server_bind(self: socketserver.TCPServer) -> None:
        host, wanted = self.server_address[:2]
        if host == "127.0.0.1":
            self.server_address = ("0.0.0.0", wanted or port)
        _server_bind(self)

    # Looked up at call time, so HTTPServer.server_bind's call to it lands here.
    socketserver.TCPServer.server_bind = server_bind  # type: ignore[method-assign]
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
