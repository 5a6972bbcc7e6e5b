"""Constants in the HTTP/1.x state machine (bpf/include/otelbpf/http1.bpf.h) that user space can recompute."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "include" / "otelbpf" / "http1.bpf.h"


def define(name: str) -> int:
    m = re.search(rf"^#define\s+{name}\s+(0x[0-9a-fA-F]+)(?:ULL|ull|UL|ul|U|u)?\b", SOURCE.read_text(), re.M)
    assert m, f"#define {name} not found in {SOURCE.name}"
    return int(m.group(1), 16)


def word(text: bytes) -> int:
    """Eight bytes as the little-endian u64 the kernel loads (shorter text: zero-filled high bytes)."""
    return struct.unpack("<Q", text.ljust(8, b"\0"))[0]


@pytest.mark.parametrize(
    ("macro", "text"),
    [("W_CONTENT_", b"content-"), ("W_LENGTH_", b"length:"), ("W_TRANSFER", b"transfer"), ("W__ENCODIN", b"-encodin")],
)
def test_header_name_words(macro: str, text: bytes) -> None:
    assert define(macro) == word(text)


def test_lower_casing_leaves_the_names_unchanged() -> None:
    """The kernel ORs each byte with 0x20; the lower-case names (and ':' and '-') must survive that."""
    lower = define("LOWER_8")
    assert lower == 0x2020202020202020
    for text in (b"content-", b"transfer", b"-encodin"):
        assert word(text) | lower == word(text)
    assert (word(b"length: ") | lower) & define("LOW_7") == define("W_LENGTH_")
    # ...and upper-case spellings map onto them.
    assert word(b"CONTENT-") | lower == word(b"content-")
    assert (word(b"LENGTH: ") | lower) & define("LOW_7") == define("W_LENGTH_")
