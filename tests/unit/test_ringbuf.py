"""walk_records over a synthetic ring: the kernel's record headers, alignment and wrap-around."""

from __future__ import annotations

import struct

from otelbpf.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, walk_records

BASE = 16  # data starts after some unrelated bytes, like the producer page in the real mapping


class Ring:
    """A data area mapped "twice" (as the kernel does) so records may wrap; positions grow forever."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.buf = bytearray(BASE + 2 * size)
        self.prod = 0

    def _write(self, pos: int, data: bytes) -> None:
        for i, b in enumerate(data):
            off = (pos + i) & (self.size - 1)
            self.buf[BASE + off] = b
            self.buf[BASE + self.size + off] = b

    def put(self, payload: bytes, flags: int = 0) -> int:
        """Append one record; return its start position."""
        start = self.prod
        self._write(start, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.prod += (len(payload) + HEADER_SIZE + 7) & ~7
        return start

    def walk(self, cons: int, limit: int = 1000) -> tuple[list[bytes], int]:
        return walk_records(self.buf, BASE, self.size - 1, cons, self.prod, limit)


def test_committed_records_in_order_with_alignment() -> None:
    ring = Ring()
    payloads = [b"a", b"bbbbbbbb", b"ccccccccc", b"", b"0123456"]
    for p in payloads:
        ring.put(p)
    records, cons = ring.walk(0)
    assert [bytes(r) for r in records] == payloads
    # 1 -> 16, 8 -> 16, 9 -> 24, 0 -> 8, 7 -> 16: each record rounds up to 8 bytes with its header.
    assert cons == ring.prod == 16 + 16 + 24 + 8 + 16
    assert cons % 8 == 0


def test_empty_ring() -> None:
    ring = Ring()
    assert ring.walk(0) == ([], 0)


def test_busy_record_stops_the_walk() -> None:
    ring = Ring()
    ring.put(b"first")
    busy = ring.put(b"second", BUSY_BIT)
    ring.put(b"third")
    records, cons = ring.walk(0)
    assert [bytes(r) for r in records] == [b"first"]
    assert cons == busy  # the consumer waits at the reserved record
    # Once the producer commits it, the walk resumes from there.
    ring._write(busy, struct.pack("<I", len(b"second")))
    records, cons = ring.walk(cons)
    assert [bytes(r) for r in records] == [b"second", b"third"]
    assert cons == ring.prod


def test_busy_and_discard_bits_together_still_busy() -> None:
    ring = Ring()
    start = ring.put(b"x", BUSY_BIT | DISCARD_BIT)
    assert ring.walk(0) == ([], start)


def test_discarded_records_are_skipped() -> None:
    ring = Ring()
    ring.put(b"keep1")
    ring.put(b"dropped-record", DISCARD_BIT)
    ring.put(b"keep2")
    ring.put(b"dropped", DISCARD_BIT)
    records, cons = ring.walk(0)
    assert [bytes(r) for r in records] == [b"keep1", b"keep2"]
    assert cons == ring.prod  # discarded space is consumed too


def test_limit() -> None:
    ring = Ring()
    for i in range(5):
        ring.put(bytes([65 + i]) * (i + 1))
    records, cons = ring.walk(0, limit=2)
    assert [bytes(r) for r in records] == [b"A", b"BB"]
    assert cons == 32
    records, cons = ring.walk(cons, limit=2)
    assert [bytes(r) for r in records] == [b"CCC", b"DDDD"]
    records, cons = ring.walk(cons, limit=2)
    assert [bytes(r) for r in records] == [b"EEEEE"]
    assert cons == ring.prod
    assert ring.walk(cons, limit=0) == ([], cons)


def test_limit_does_not_count_discarded() -> None:
    ring = Ring()
    ring.put(b"skip", DISCARD_BIT)
    ring.put(b"one")
    ring.put(b"two")
    records, cons = ring.walk(0, limit=1)
    assert [bytes(r) for r in records] == [b"one"]
    assert cons == 32  # 16 (discarded "skip") + 16 ("one")


def test_wrap_around_positions() -> None:
    ring = Ring(size=64)
    ring.prod = 3 * 64 + 48  # positions keep growing; only the masked offset addresses the buffer
    start = ring.prod
    ring.put(b"wraps-past-the-end")  # 8 + 18 bytes from offset 48 crosses the 64-byte boundary
    ring.put(b"next")
    records, cons = ring.walk(start)
    assert [bytes(r) for r in records] == [b"wraps-past-the-end", b"next"]
    assert cons == ring.prod


def test_works_on_memoryview_and_bytes() -> None:
    ring = Ring()
    ring.put(b"hello")
    for data in (bytes(ring.buf), memoryview(ring.buf)):
        records, cons = walk_records(data, BASE, ring.size - 1, 0, ring.prod, 10)
        assert [bytes(r) for r in records] == [b"hello"]
        assert cons == 16
