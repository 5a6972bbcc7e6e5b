"""A BPF ring-buffer consumer that reads the shared memory directly.

bcc's ring_buffer_poll calls back into Python through ctypes once per record (about 70k records/s
on one core here). Mapping the ring and walking the records in one loop costs a fraction of that
and hands the pipeline a batch at a time.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (the only page user space may
write), page 1 the producer position, then the data pages mapped twice so a record that wraps is
still contiguous. Each record starts with an 8-byte header: u32 length with BUSY and DISCARD bits,
and u32 page offset. x86-64 keeps stores in order, so plain loads and stores suffice here, as long as each position is
read and written with one 8-byte access (see RingBufferReader.__init__).
"""

from __future__ import annotations

import ctypes
import mmap
import select
import struct

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
_U32 = struct.Struct("<I")


def walk_records(
    data: bytes | bytearray | memoryview | mmap.mmap, base: int, mask: int, cons: int, prod: int, limit: int
) -> tuple[list[bytes], int]:
    """Collect committed records between the two positions; return them and the new consumer position."""
    out: list[bytes] = []
    unpack = _U32.unpack_from
    while cons < prod and len(out) < limit:
        off = base + (cons & mask)
        (length,) = unpack(data, off)
        if length & BUSY_BIT:
            break  # the producer has reserved but not yet committed this record
        size = length & ~(BUSY_BIT | DISCARD_BIT)
        if not length & DISCARD_BIT:
            out.append(data[off + HEADER_SIZE : off + HEADER_SIZE + size])
        cons += (size + HEADER_SIZE + 7) & ~7
    return out, cons


class RingBufferReader:
    """Drains one BPF_MAP_TYPE_RINGBUF map by file descriptor."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size must be a power of two, got {size}")
        page = mmap.PAGESIZE
        self._size = size
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        # struct.pack_into stores a '<Q' one byte at a time, and the kernel may read the consumer
        # position mid-store: a torn value across a carry makes the ring look full. An aligned
        # 8-byte store through ctypes is one instruction, atomic on x86-64.
        self._consumer_pos = ctypes.c_uint64.from_buffer(self._consumer)
        # The data mapping is read-only, so ctypes cannot view it; a native 'Q' memoryview reads the
        # producer position with one 8-byte load too.
        self._producer_pos = memoryview(self._data)[:8].cast("Q")
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    def drain(self, limit: int = 65536) -> list[bytes]:
        """Take up to ``limit`` committed records and release their space to the kernel."""
        cons = self._consumer_pos.value
        prod = self._producer_pos[0]
        records, cons = walk_records(self._data, self._page, self._size - 1, cons, prod, limit)
        self._consumer_pos.value = cons
        return records

    def wait(self, timeout_s: float) -> None:
        """Sleep until the kernel signals data or the timeout passes."""
        try:
            self._epoll.poll(timeout_s)
        except InterruptedError:
            pass

    def close(self) -> None:
        """Unmap the ring."""
        # Both views pin their mappings; drop them first.
        del self._consumer_pos
        self._producer_pos.release()
        self._epoll.close()
        self._data.close()
        self._consumer.close()
