"""Low-cardinality routes and span names guessed from raw HTTP paths.

Without the framework's route template, span names must come from the path itself; ids in it would give
every request its own span name. ``route_of`` replaces segments that look like identifiers with "{id}".
The rules are deliberately conservative: a word-like segment is kept even if it might be an id, because a
wrongly collapsed route hides real endpoints while a missed id only costs some cardinality, which the
segment and length caps bound anyway.

Replaced segments: all ASCII digits; UUIDs (8-4-4-4-12 hex, any case); hex strings of length >= 8 with at
least one digit (Mongo object ids, git shas; a 7-character short sha such as "3f2a9c1" is kept, as it is
indistinguishable from short words like "cafe123"); and opaque tokens of length >= 16 over [A-Za-z0-9_-]
with both digits and letters (base64 ids), unless they read as a dash/underscore-separated slug of words
("release-notes-2024"). Prefixed ids ("u123", "v1", "2fa") are kept.
"""

from __future__ import annotations

import string

# The methods OTel semantic conventions treat as known (RFC 9110 plus PATCH from RFC 5789).
KNOWN_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

MAX_ROUTE_LEN = 128
MAX_SEGMENTS = 16
ID = "{id}"

_HEX = frozenset(string.hexdigits)
_TOKEN = frozenset(string.ascii_letters + string.digits + "-_")
_MIN_HEX_ID = 8
_MIN_TOKEN_ID = 16


def route_of(path: str) -> str:
    """Return ``path`` with id-like segments replaced by "{id}", capped in segments and length."""
    # A query or fragment never belongs in a route, even if a caller passes the whole target.
    for sep in "?#":
        i = path.find(sep)
        if i >= 0:
            path = path[:i]
    if not path or path == "/":
        return "/"
    out: list[str] = []
    truncated = False
    for seg in path.split("/"):
        if not seg:
            continue  # leading, trailing and duplicate slashes; "//a" and "/a" are one route
        if len(out) == MAX_SEGMENTS:
            truncated = True
            break
        out.append(ID if _is_id(seg) else seg)
    route = ("/" if path[0] == "/" else "") + "/".join(out)
    if truncated:
        route += "/..."
    elif out and path[-1] == "/":
        route += "/"  # "/users/" and "/users" can be different endpoints
    if not route:
        return "/"
    if len(route) > MAX_ROUTE_LEN:
        # Cut at a segment boundary when possible so the result still reads as a route.
        cut = route.rfind("/", 0, MAX_ROUTE_LEN - 3)
        route = route[:cut] + "/..." if cut > 0 else route[: MAX_ROUTE_LEN - 3] + "..."
    return route


def span_name(method: str, path: str | None) -> str:
    """Return the span name "METHOD route"; unknown methods use "HTTP" and a missing path drops the route."""
    name = method if method in KNOWN_METHODS else "HTTP"
    if not path:
        return name
    return f"{name} {route_of(path)}"


def _is_id(seg: str) -> bool:
    if seg.isalpha():
        return False  # the common case: a plain word
    n = len(seg)
    if seg.isdigit():
        return seg.isascii()  # str.isdigit also accepts e.g. superscripts, which are not ids
    if n == 36 and _is_uuid(seg):
        return True
    # Not all letters, so an all-hex segment has a digit.
    if n >= _MIN_HEX_ID and _HEX.issuperset(seg):
        return True
    if n >= _MIN_TOKEN_ID and _TOKEN.issuperset(seg):
        core = seg.replace("-", "").replace("_", "")
        return not core.isalpha() and not core.isdigit() and not _is_slug(seg)
    return False


def _is_uuid(seg: str) -> bool:
    if seg[8] != "-" or seg[13] != "-" or seg[18] != "-" or seg[23] != "-":
        return False
    hexpart = seg.replace("-", "")
    return len(hexpart) == 32 and _HEX.issuperset(hexpart)


def _is_slug(seg: str) -> bool:
    """Whether a token reads as separated words ("release-notes-2024", "oauth2-callback"), not an id."""
    parts = seg.replace("_", "-").split("-")
    if len(parts) < 2:
        return False
    return all(map(_is_slug_part, parts))


def _is_slug_part(part: str) -> bool:
    # Words, short numbers (years, versions) and short alphanumerics ("oauth2", "h264") make a slug; a long
    # digit run or a long mixed run is an id.
    if part.isalpha():
        return True
    if part.isdigit():
        return len(part) <= 4
    return len(part) <= 6
