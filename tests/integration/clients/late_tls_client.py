"""An HTTPS client that maps libssl only when told to, after otelbpf is already tracing it.

usage: late_tls_client.py CA_FILE URL...

Starts without ssl (nor http.client, urllib.request or requests, which import it), so no libssl is
mapped. Protocol on stdin/stdout: prints "paused"; on "load" imports ssl (the dynamic loader maps
libssl.so.3 and libcrypto.so.3, from LD_LIBRARY_PATH when set) and prints "loaded"; on "go" GETs
each URL over ONE http.client connection verified against CA_FILE, prints a JSON list with one
{"url", "status", "error", "local_port"} per URL, then stays alive until stdin closes.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit


def wait_for(word: str) -> None:
    line = sys.stdin.readline()
    if line.strip() != word:
        sys.exit(f"expected {word!r} on stdin, got {line!r}")


def main() -> None:
    loaded = sorted(m for m in ("ssl", "_ssl", "http.client", "urllib.request", "requests") if m in sys.modules)
    assert not loaded, f"imported before load: {loaded}"
    cafile, urls = sys.argv[1], sys.argv[2:]
    print("paused", flush=True)
    wait_for("load")
    import ssl  # maps libssl now

    context = ssl.create_default_context(cafile=cafile)
    print("loaded", flush=True)
    wait_for("go")
    import http.client

    first = urlsplit(urls[0])
    conn = http.client.HTTPSConnection(first.hostname, first.port, context=context, timeout=10)
    out = []
    for url in urls:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            resp.read()
            out.append({"url": url, "status": resp.status, "error": None, "local_port": conn.sock.getsockname()[1]})
        except Exception as exc:
            out.append({"url": url, "status": None, "error": type(exc).__name__, "local_port": None})
    print(json.dumps(out), flush=True)
    sys.stdin.read()  # until the test closes stdin
    conn.close()


if __name__ == "__main__":
    main()
