"""`make demo`: start demo services, trace them with otelbpf (terminal output), drive a few requests.

Two things to look at:
- a shop app serving HTTP and HTTPS (a throwaway self-signed certificate) that calls itself;
- three services in a chain, none instrumented: "orders" (python, thread per request) calls "stock"
  (node, event loop) over HTTP, which calls "prices" (python) over HTTPS. Each order comes out as one
  trace tree across the three, linked by thread and by connection.
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
# The chain's services are the ones the trace integration tests run.
SERVICES = ROOT / "tests" / "integration" / "servers"


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


def start_service(argv: list[str], service: str) -> tuple[subprocess.Popen, int]:
    """Start a service that prints "PORT <n>" once it listens; named for the traces by OTEL_SERVICE_NAME."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "OTEL_SERVICE_NAME": service})
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "PORT":
        proc.kill()
        raise SystemExit(f"demo: {service} did not start ({argv[0]} {argv[1]})")
    return proc, int(line[1])


def start_chain(cert: Path, key: Path) -> tuple[list[subprocess.Popen], int]:
    """prices (python HTTPS) <- stock (node) <- orders (python): the processes and the orders port."""
    py = sys.executable
    prices, prices_port = start_service([py, str(SERVICES / "chain_backend.py"), str(cert), str(key)], "prices")
    stock, stock_port = start_service(
        ["node", str(SERVICES / "chain_node.js"), f"https://127.0.0.1:{prices_port}", str(cert)], "stock"
    )
    front = [py, str(SERVICES / "chain_front.py"), f"http://127.0.0.1:{stock_port}"]
    orders, orders_port = start_service(front, "orders")
    return [orders, stock, prices], orders_port


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="otelbpf-demo-") as tmp:
        return demo(*make_cert(Path(tmp)))


def demo(cert: Path, key: Path) -> int:
    port, tls_port = free_port(), free_port()
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo_app.py"), str(port), str(tls_port), str(cert), str(key)],
        env={**os.environ, "OTEL_SERVICE_NAME": "shop"},
    )
    tracer = None
    chain: list[subprocess.Popen] = []
    try:
        wait_port(port)
        wait_port(tls_port)
        print(f"demo: shop app running as pid {app.pid} on 127.0.0.1:{port} (HTTPS on :{tls_port})", file=sys.stderr)
        chain, orders_port = start_chain(cert, key)
        names = ", ".join(f"{n} pid {p.pid}" for n, p in zip(("orders", "stock", "prices"), chain, strict=True))
        print(f"demo: orders -> stock -> prices running ({names})", file=sys.stderr)
        pids = [str(p.pid) for p in [app, *chain]]
        tracer = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "otelbpf"), "run", *[a for pid in pids for a in ("--pid", pid)]],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        for line in tracer.stderr:
            sys.stderr.write(line)
            if line.startswith("otelbpf: ready: "):
                break
        else:
            return tracer.wait() or 1
        print("demo: sending requests with curl ...\n", file=sys.stderr)
        http, https = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}"
        for url in [f"{http}/checkout/1001", f"{https}/inventory/42", f"{http}/checkout/2002", f"{https}/boom",
                    f"{http}/nope", f"{https}/checkout/3003"]:  # fmt: skip
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", str(cert), url], check=False)
        print("demo: two orders through orders -> stock -> prices, at the same time ...\n", file=sys.stderr)
        orders = [
            subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{orders_port}/order/{i}"])
            for i in (7001, 7002)
        ]
        for o in orders:
            o.wait()
        time.sleep(2.0)  # the linker holds spans until their trace has been quiet for 0.5 s
        tracer.send_signal(signal.SIGINT)
        for line in tracer.stderr:
            sys.stderr.write(line)
        return tracer.wait()
    finally:
        if tracer and tracer.poll() is None:
            tracer.kill()
        for proc in [app, *chain]:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (otelbpf loads eBPF programs)")
    sys.exit(main())
