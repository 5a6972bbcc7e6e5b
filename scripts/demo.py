"""`make demo`: start the demo app, trace it with otelbpf (terminal output), drive a few requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"demo app did not start on port {port}")


def main() -> int:
    port = free_port()
    app = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo_app.py"), str(port)])
    tracer = None
    try:
        wait_port(port)
        print(f"demo: shop app running as pid {app.pid} on 127.0.0.1:{port}", file=sys.stderr)
        tracer = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "otelbpf"), "run", "--pid", str(app.pid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        for line in tracer.stderr:
            sys.stderr.write(line)
            if "ready" in line:
                break
        else:
            return tracer.wait() or 1
        print("demo: sending requests with curl ...\n", file=sys.stderr)
        for path in ["/checkout/1001", "/inventory/42", "/checkout/2002", "/boom", "/nope", "/checkout/3003"]:
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"], check=False)
        time.sleep(1.5)
        tracer.send_signal(signal.SIGINT)
        for line in tracer.stderr:
            sys.stderr.write(line)
        return tracer.wait()
    finally:
        if tracer and tracer.poll() is None:
            tracer.kill()
        app.terminate()
        app.wait()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (otelbpf loads eBPF programs)")
    sys.exit(main())
