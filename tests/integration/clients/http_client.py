"""An HTTP client process for the integration tests, paused until it reads a line on stdin.

usage: http_client.py [--ca CA_FILE] urllib|session URL...

urllib: one urllib.request call (a new connection) per URL; session: one requests.Session (one
keep-alive connection). https URLs are verified against CA_FILE when given. Prints a JSON list with
one {"url", "status", "error"} per URL on stdout, then stays alive (connections open) until stdin
closes, so its /proc entry outlives the spans.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request


def with_urllib(url: str, context: ssl.SSLContext | None) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            resp.read()
            return {"url": url, "status": resp.status, "error": None}
    except urllib.error.HTTPError as exc:
        exc.read()
        return {"url": url, "status": exc.code, "error": None}
    except Exception as exc:  # e.g. RemoteDisconnected from /close
        return {"url": url, "status": None, "error": type(exc).__name__}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca", metavar="CA_FILE", help="trust this PEM file for https URLs")
    parser.add_argument("mode", choices=["urllib", "session"])
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca) if args.ca else None
    session = None
    if args.mode == "session":
        import requests

        session = requests.Session()
    print("paused", flush=True)
    sys.stdin.readline()  # the test says go once otelbpf is ready
    out = []
    for url in args.urls:
        if session is not None:
            try:
                # verify per request: REQUESTS_CA_BUNDLE in the environment would override session.verify
                resp = session.get(url, timeout=10, verify=args.ca or True)
                out.append({"url": url, "status": resp.status_code, "error": None})
            except Exception as exc:
                out.append({"url": url, "status": None, "error": type(exc).__name__})
        else:
            out.append(with_urllib(url, context))
    print(json.dumps(out), flush=True)
    sys.stdin.read()  # until the test closes stdin


if __name__ == "__main__":
    main()
