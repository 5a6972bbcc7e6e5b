"""No blind start: a node client started after otelbpf is ready, making its HTTPS requests at once, is
traced from its first request, however it is selected.

node has OpenSSL linked in, so nothing is hooked for it until it runs: otelbpf must check and hook each new
node process (per process when the selection names processes) between its exec and its first TLS call.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    NODE,
    PYTHON,
    PausedClient,
    by_pid,
    clean_env,
    settle,
)

pytestmark = pytest.mark.integration

LAUNCHES = 20
REQUESTS = 8


def node_argv(server, ca) -> list[str]:
    urls = [server.url(f"/items/{i}") for i in range(REQUESTS)]
    return [NODE, str(CLIENTS / "node_https_client.js"), "--at-once", str(ca), *urls]


@pytest.mark.parametrize("mode", ["everything", "exe", "pid and exe"])
def test_node_started_later_is_traced_from_its_first_request(mode, py_tls_server, tls_cert, otelbpf, receiver):
    """LAUNCHES node processes started one after another, REQUESTS requests each: every request is a span."""
    argv = node_argv(py_tls_server, tls_cert.cert)
    parent = None
    if mode == "everything":
        run = otelbpf(receiver=receiver)
    elif mode == "exe":
        run = otelbpf("--exe", "node", receiver=receiver)
    else:
        # A traced parent that spawns node: the child is traced by fork, and by exec name too.
        parent = PausedClient(argv=[PYTHON, str(CLIENTS / "spawner.py"), *argv])
        run = otelbpf("--pid", str(parent.pid), "--exe", "node", receiver=receiver)
    pids = []
    try:
        for _ in range(LAUNCHES):
            if parent is not None:
                done = json.loads(parent.say("go"))
            else:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env=clean_env(),
                )  # fmt: skip
                stdout, stderr = proc.communicate(timeout=60)
                done = {"pid": proc.pid, "returncode": proc.returncode, "stdout": stdout, "stderr": stderr}
            assert done["returncode"] == 0, done["stderr"]
            assert [r["status"] for r in json.loads(done["stdout"])] == [200] * REQUESTS, done["stdout"]
            pids.append(done["pid"])
        settle(receiver, LAUNCHES * REQUESTS)
        res = run.stop()
    finally:
        if parent is not None:
            parent.stop()

    assert res.returncode == 0, res.stderr
    assert res.summary.get("events lost") == 0, res.stderr
    spans = receiver.spans()
    per_launch = {pid: [s for s in by_pid(spans, pid) if s.kind == CLIENT] for pid in pids}
    missing = {pid: REQUESTS - len(got) for pid, got in per_launch.items() if len(got) != REQUESTS}
    assert not missing, f"launches with requests not traced (pid: how many): {missing}\n{res.stderr}"
    base = f"https://127.0.0.1:{py_tls_server.port}"
    for got in per_launch.values():
        assert sorted(s.attributes["url.full"] for s in got) == sorted(f"{base}/items/{i}" for i in range(REQUESTS))
        assert {s.attributes["otelbpf.tls.library"] for s in got} == {"openssl"}
