"""The ``k1=v1,k2=v2`` lists of OTel environment variables (headers, resource attributes)."""

from __future__ import annotations

import logging
import urllib.parse

logger = logging.getLogger(__name__)


def parse_kv_list(text: str, strict: bool, what: str) -> dict[str, str]:
    """Parse a comma-separated, percent-encoded key=value list; ``strict`` raises on a bad entry."""
    out: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            if strict:
                raise ValueError(f"invalid {what} entry {entry.strip()!r}: expected key=value")
            logger.warning("ignoring malformed %s entry %r", what, entry)
            continue
        out[key] = urllib.parse.unquote(value.strip())
    return out
