"""K HTTPS connections at once, M rounds of one request each, interleaved on the server.

Usage: tls_concurrent_client.py CA_FILE PORT K M

Every connection is opened (and its handshake done) before any request, then each round sends one
request on every connection before reading any response, so the server's event loop juggles all K
at once. The path names the connection: /c<k>/r<i>. Prints JSON {"ports": {k: local port},
"statuses": [...]}.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys


def main() -> None:
    ca, port, k, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ctx = ssl.create_default_context(cafile=ca)
    conns = [http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10) for _ in range(k)]
    for c in conns:
        c.connect()
    ports = {i: c.sock.getsockname()[1] for i, c in enumerate(conns)}
    statuses = []
    for r in range(m):
        for i, c in enumerate(conns):
            c.putrequest("GET", f"/c{i}/r{r}")
            c.endheaders()
        for c in conns:
            resp = c.getresponse()
            resp.read()
            statuses.append(resp.status)
    for c in conns:
        c.close()
    print(json.dumps({"ports": ports, "statuses": statuses}))


if __name__ == "__main__":
    main()
