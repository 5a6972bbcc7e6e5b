"""Constants hard-coded in bpf/sockets.bpf.c that user space can recompute."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "sockets.bpf.c"

FNV_SEED = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a_lower(name: bytes) -> int:
    """The kernel's hash: 64-bit FNV-1a over each byte OR 0x20 (ASCII lower case for letters)."""
    h = FNV_SEED
    for c in name:
        h = ((h ^ (c | 0x20)) * FNV_PRIME) & MASK64
    return h


def define(name: str) -> int:
    m = re.search(rf"^#define\s+{name}\s+(0x[0-9a-fA-F]+)(?:ULL|ull|UL|ul|U|u)?\b", SOURCE.read_text(), re.M)
    assert m, f"#define {name} not found in {SOURCE.name}"
    return int(m.group(1), 16)


def test_seed_and_prime() -> None:
    assert define("HASH_SEED") == FNV_SEED
    assert define("HASH_PRIME") == FNV_PRIME


def test_fnv1a_reference_vectors() -> None:
    # Published FNV-1a 64 vectors (for inputs that |0x20 leaves unchanged).
    assert fnv1a_lower(b"") == 0xCBF29CE484222325
    assert fnv1a_lower(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_lower(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize(
    ("macro", "header"),
    [("HASH_CONTENT_LENGTH", b"content-length"), ("HASH_TRANSFER_ENCODING", b"transfer-encoding")],
)
def test_header_hashes(macro: str, header: bytes) -> None:
    assert define(macro) == fnv1a_lower(header)
    # Header names are case-insensitive: any capitalisation hashes the same.
    assert fnv1a_lower(header.upper()) == fnv1a_lower(header)
    assert fnv1a_lower(header.title()) == fnv1a_lower(header)


def test_hashes_do_not_collide_with_common_headers() -> None:
    common = [b"host", b"content-type", b"connection", b"accept", b"user-agent", b"traceparent", b"date"]
    special = {define("HASH_CONTENT_LENGTH"), define("HASH_TRANSFER_ENCODING")}
    assert not special & {fnv1a_lower(h) for h in common}
