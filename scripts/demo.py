"""`make demo`: start the demo app, trace it with otelbpf (terminal output), drive a few requests.

The app serves HTTP and HTTPS (a throwaway self-signed certificate), so the output shows both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
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


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="otelbpf-demo-") as tmp:
        return demo(*make_cert(Path(tmp)))


def demo(cert: Path, key: Path) -> int:
    port, tls_port = free_port(), free_port()
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo_app.py"), str(port), str(tls_port), str(cert), str(key)]
    )
    tracer = None
    try:
        wait_port(port)
        wait_port(tls_port)
        print(f"demo: shop app running as pid {app.pid} on 127.0.0.1:{port} (HTTPS on :{tls_port})", file=sys.stderr)
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
        http, https = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}"
        for url in [f"{http}/checkout/1001", f"{https}/inventory/42", f"{http}/checkout/2002", f"{https}/boom",
                    f"{http}/nope", f"{https}/checkout/3003"]:  # fmt: skip
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", str(cert), url], check=False)
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
