"""Runs chain_gunicorn_app.app under gunicorn sync workers; this process is the gunicorn master (arbiter) itself.

usage: chain_gunicorn.py DOWNSTREAM_URL WORKERS      (e.g. http://127.0.0.1:1234 2)

Picks a free port on 127.0.0.1 (binds port 0, reads it, closes), sets CHAIN_DOWNSTREAM and runs gunicorn in-process
(a gunicorn.app.base.BaseApplication subclass) with WORKERS forked sync workers, keepalive 2, no access log. Prints
"PORT <n>" on stdout from the when_ready hook, i.e. once the master is listening (workers may still be booting; the
listen backlog holds early connections). The routes are chain_gunicorn_app's. SIGTERM/SIGINT stop the master and
its workers.
"""

from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chain_gunicorn_app import app  # noqa: E402
from gunicorn.app.base import BaseApplication  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChainApplication(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> object:
        return app


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: chain_gunicorn.py DOWNSTREAM_URL WORKERS")
    downstream, workers = sys.argv[1], int(sys.argv[2])
    os.environ["CHAIN_DOWNSTREAM"] = downstream
    port = free_port()

    def when_ready(server: object) -> None:
        print(f"PORT {port}", flush=True)

    ChainApplication(
        {
            "bind": f"127.0.0.1:{port}",
            "workers": workers,
            "worker_class": "sync",
            "keepalive": 2,
            "accesslog": None,
            "loglevel": "warning",
            "when_ready": when_ready,
        }
    ).run()


if __name__ == "__main__":
    main()
