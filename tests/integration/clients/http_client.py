"""An HTTP client process for the integration tests, paused until it reads a line on stdin.

usage: http_client.py urllib|session URL...

urllib: one urllib.request call (a new connection) per URL; session: one requests.Session (one
keep-alive connection). Prints a JSON list with one {"url", "status", "error"} per URL on stdout,
then stays alive (connections open) until stdin closes, so its /proc entry outlives the spans.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def with_urllib(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return {"url": url, "status": resp.status, "error": None}
    except urllib.error.HTTPError as exc:
        exc.read()
        return {"url": url, "status": exc.code, "error": None}
    except Exception as exc:  # e.g. RemoteDisconnected from /close
        return {"url": url, "status": None, "error": type(exc).__name__}


def main() -> None:
    mode, urls = sys.argv[1], sys.argv[2:]
    session = None
    if mode == "session":
        import requests

        session = requests.Session()
    print("paused", flush=True)
    sys.stdin.readline()  # the test says go once otelbpf is ready
    out = []
    for url in urls:
        if session is not None:
            try:
                resp = session.get(url, timeout=10)
                out.append({"url": url, "status": resp.status_code, "error": None})
            except Exception as exc:
                out.append({"url": url, "status": None, "error": type(exc).__name__})
        else:
            out.append(with_urllib(url))
    print(json.dumps(out), flush=True)
    sys.stdin.read()  # until the test closes stdin


if __name__ == "__main__":
    main()
