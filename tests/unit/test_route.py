"""Table-driven tests for the route heuristic and span names."""

from __future__ import annotations

import random

import pytest

from otelbpf.protocols.route import MAX_ROUTE_LEN, MAX_SEGMENTS, route_of, span_name


@pytest.mark.parametrize(
    ("path", "route"),
    [
        # Required examples.
        ("/users/123/orders/9f8e7d6c-1a2b-3c4d-5e6f-0123456789ab", "/users/{id}/orders/{id}"),
        ("/", "/"),
        ("", "/"),
        ("/api/v1/items", "/api/v1/items"),
        ("/obj/5f1d7a9e3b2c4d0012345678", "/obj/{id}"),
        ("/static/app.js", "/static/app.js"),
        # Short (7-char) shas stay: the hex rule starts at 8 characters.
        ("/commit/3f2a9c1", "/commit/3f2a9c1"),
        ("/commit/3f2a9c1d", "/commit/{id}"),
        ("/commit/3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39", "/commit/{id}"),
        # Digits.
        ("/users/0", "/users/{id}"),
        ("/users/123/", "/users/{id}/"),
        ("/2024/05/01/post", "/{id}/{id}/{id}/post"),
        ("/x/\u00b2", "/x/\u00b2"),  # a superscript is not an ASCII number
        # UUIDs in any case.
        ("/u/9F8E7D6C-1A2B-3C4D-5E6F-0123456789AB", "/u/{id}"),
        ("/u/00000000-0000-0000-0000-000000000000", "/u/{id}"),
        # Not UUIDs (wrong separator or grouping), and not tokens either because of the dots.
        ("/u/9f8e7d6c.1a2b.3c4d.5e6f.0123456789ab", "/u/9f8e7d6c.1a2b.3c4d.5e6f.0123456789ab"),
        ("/u/9f8e7d6c1.a2b.3c4d.5e6f.0123456789ab", "/u/9f8e7d6c1.a2b.3c4d.5e6f.0123456789ab"),
        # Near-UUIDs made of token characters are still caught by the opaque-token rule.
        ("/u/9f8e7d6c-1a2b-3c4d-5e6f-0123456789ag", "/u/{id}"),
        # Hex ids need a digit; an all-letter hex word stays.
        ("/blob/deadbeef01", "/blob/{id}"),
        ("/blob/DEADBEEF01", "/blob/{id}"),
        ("/blob/deadbeef", "/blob/deadbeef"),
        ("/blob/facade", "/blob/facade"),
        # Opaque tokens.
        ("/s/dGhpcyBpcyBhIHRlc3Q1", "/s/{id}"),
        ("/s/aB3_xY9-Qw7ZkLm2Np", "/s/{id}"),
        ("/s/ch_3NqLxK2eZvKYlo2C0abc", "/s/{id}"),
        ("/s/order-1234567890", "/s/{id}"),
        ("/s/abcdefghijklmnopqrstu", "/s/abcdefghijklmnopqrstu"),  # letters only
        ("/s/getUserProfileById", "/s/getUserProfileById"),
        ("/s/abc123", "/s/abc123"),  # mixed but short
        # Slugs of words stay.
        ("/blog/release-notes-2024", "/blog/release-notes-2024"),
        ("/auth/oauth2-callback-handler", "/auth/oauth2-callback-handler"),
        ("/a/very_long_snake_case_name_v2", "/a/very_long_snake_case_name_v2"),
        # Normal words and prefixed numbers stay.
        ("/healthz", "/healthz"),
        ("/api/v2/users", "/api/v2/users"),
        ("/settings/2fa", "/settings/2fa"),
        ("/users/u123", "/users/u123"),
        ("/index.html", "/index.html"),
        ("/assets/app.3f2a9c1d8e.js", "/assets/app.3f2a9c1d8e.js"),
        ("/caf\u00e9", "/caf\u00e9"),
        # Slashes: duplicates collapse, a trailing slash is kept.
        ("//a//b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//", "/"),
        ("///", "/"),
        # Queries and fragments never reach the route.
        ("/a/1?token=secret", "/a/{id}"),
        ("/a#frag", "/a"),
        ("/?q", "/"),
        # Non-origin paths.
        ("*", "*"),
    ],
)
def test_route_of(path: str, route: str) -> None:
    assert route_of(path) == route


def test_segment_cap() -> None:
    path = "/" + "/".join(f"s{i}" for i in range(40))
    route = route_of(path)
    assert route == "/" + "/".join(f"s{i}" for i in range(MAX_SEGMENTS)) + "/..."
    exactly = "/" + "/".join(f"s{i}" for i in range(MAX_SEGMENTS))
    assert route_of(exactly) == exactly


def test_length_cap_cuts_at_segment_boundary() -> None:
    path = "/" + "/".join(["abcdefghij"] * 15)
    route = route_of(path)
    assert len(route) <= MAX_ROUTE_LEN
    assert route.endswith("/abcdefghij/...")


def test_length_cap_single_long_segment() -> None:
    route = route_of("/" + "x" * 500)
    assert len(route) == MAX_ROUTE_LEN
    assert route.endswith("x...")


def test_route_is_bounded_and_stable_for_random_paths() -> None:
    rng = random.Random(7)
    alphabet = "abcXYZ0123456789-_./%~"
    for _ in range(5000):
        path = "/" + "".join(rng.choice(alphabet + "/") for _ in range(rng.randrange(0, 400)))
        route = route_of(path)
        assert route.startswith("/")
        assert len(route) <= MAX_ROUTE_LEN
        assert route.count("/") <= MAX_SEGMENTS + 2
        assert "?" not in route


def test_ids_collapse_to_one_route() -> None:
    rng = random.Random(99)
    routes = {route_of(f"/users/{rng.randrange(10**9)}/orders/{rng.randbytes(12).hex()}") for _ in range(500)}
    assert routes == {"/users/{id}/orders/{id}"}


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/users/42", "GET /users/{id}"),
        ("POST", "/api/v1/items?debug=1", "POST /api/v1/items"),
        ("DELETE", "/", "DELETE /"),
        ("GET", None, "GET"),
        ("GET", "", "GET"),
        ("CONNECT", "", "CONNECT"),
        ("OPTIONS", "*", "OPTIONS *"),
        ("PROPFIND", "/dav/", "HTTP /dav/"),
        ("PROPFIND", None, "HTTP"),
        ("get", "/x", "HTTP /x"),
    ],
)
def test_span_name(method: str, path: str | None, name: str) -> None:
    assert span_name(method, path) == name
