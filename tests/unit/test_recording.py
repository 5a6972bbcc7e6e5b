"""The recording format on its own: round trip, a file cut short, files that are not recordings (no root)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from otelbpf.cli import main
from otelbpf.clock import ClockMap
from otelbpf.recording import MAGIC, VERSION, Entry, Kind, Recorder, RecordingError, RecordingReader
from otelbpf.spans import Resource

# A string array among them: JSON gives it back as a list, the reader must give back the tuple.
RESOURCE = Resource(
    (
        ("container.image.tags", ("1.2",)),
        ("process.pid", 7),
        ("service.name", "nginx"),
        ("telemetry.sdk.language", "native"),
    )
)
META = {
    "seed": 99, "capture_bytes": 512, "resp_capture_bytes": 256, "capture_query": False,
    "raw_db_query_text": False, "link_window": 0.5, "link_max_hold": 10.0, "link_max_spans": 100000,
}  # fmt: skip
BATCHES = [[b"\x01" * 200, b"\x03", b"\x02abc"], [bytes(range(256)) * 3], []]


class FixedClock(ClockMap):
    def __init__(self, offset: int) -> None:
        super().__init__(realtime_ns=lambda: offset, monotonic_ns=lambda: 0)


class Kernel:
    def read_stats(self) -> dict[str, int]:
        return {"requests": 23, "events": 21, "lost_ringbuf_full": 2}

    def in_flight_requests(self) -> int:
        return 0


def write_sample(path: Path) -> list[Entry]:
    """A recording with one entry of every kind; return the entries it should read back as."""
    times = iter([10.25, 10.5, 11.0])
    rec = Recorder(path, monotonic=lambda: next(times))
    rec.start(META, FixedClock(1_700_000_000_000_000_000))
    rec.tap(BATCHES[0])
    assert rec.clock() == 10.25
    rec.write_resource(1, 7, RESOURCE)
    rec.tap(BATCHES[1])
    rec.clock()
    rec.write_resource(3, 7, RESOURCE)
    rec.clock()
    rec.kernel(Kernel()).read_stats()
    rec.close()
    assert not rec.error
    assert (rec.records, rec.batches) == (4, 2)
    return [
        Entry(Kind.META, META),
        Entry(Kind.CLOCK, 1_700_000_000_000_000_000),
        Entry(Kind.BATCH, BATCHES[0]),
        Entry(Kind.TIME, 10.25),
        Entry(Kind.RESOURCE, (1, 7, RESOURCE)),
        Entry(Kind.BATCH, BATCHES[1]),
        Entry(Kind.TIME, 10.5),
        Entry(Kind.RESOURCE, (3, 7, RESOURCE)),
        Entry(Kind.TIME, 11.0),
        Entry(Kind.END, {"stats": Kernel().read_stats(), "in_flight": 0}),
    ]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    expected = write_sample(path)
    with RecordingReader(path) as reader:
        got = list(reader)
    assert got == expected
    assert not reader.truncated
    assert path.read_bytes().startswith(MAGIC + struct.pack("<H", VERSION))


def test_a_batch_keeps_its_records_and_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    rec = Recorder(path)
    for batch in BATCHES:
        rec.tap(batch)
    rec.close()
    with RecordingReader(path) as reader:
        assert [e.value for e in reader] == BATCHES
    assert all(type(r) is bytes for batch in BATCHES for r in batch)


def test_a_file_cut_anywhere_reads_back_its_whole_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.rec"
    expected = write_sample(path)
    data = path.read_bytes()
    # Where each entry ends: a cut there loses nothing that was whole.
    ends = []
    with RecordingReader(path) as reader:
        for _ in reader:
            ends.append(reader._file.tell())
    header = len(MAGIC) + 2
    cut = tmp_path / "cut.rec"
    for size in range(header, len(data)):
        cut.write_bytes(data[:size])
        caplog.clear()
        with caplog.at_level(logging.WARNING), RecordingReader(cut) as reader:
            got = list(reader)
        whole = sum(1 for end in ends if end <= size)
        assert got == expected[:whole], size
        assert reader.truncated == (size not in ends and size != header), size
        warnings = [r.getMessage() for r in caplog.records]
        if reader.truncated:
            assert warnings == [f"{cut} is cut short after {whole} whole entries (otelbpf stopped mid-write): "
                                "replaying those"]  # fmt: skip
        else:
            assert warnings == []


@pytest.mark.parametrize(
    "content",
    [b"", b"OTELBPF", b"GET / HTTP/1.1\r\n\r\n" * 3, b"\x7fELF" + bytes(60)],
    ids=["empty", "short", "text", "elf"],
)
def test_not_a_recording(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.rec"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=r"^.*x\.rec is not an otelbpf recording$"):
        RecordingReader(path)


def test_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "future.rec"
    path.write_bytes(MAGIC + struct.pack("<H", VERSION + 1) + bytes(20))
    with pytest.raises(RecordingError, match=rf"recording of format {VERSION + 1}; this otelbpf reads {VERSION}$"):
        RecordingReader(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a recording at all", "is not an otelbpf recording"),
        (MAGIC + struct.pack("<H", 9), f"is an otelbpf recording of format 9; this otelbpf reads {VERSION}"),
        (None, "cannot read"),
    ],
    ids=["magic", "version", "missing"],
)
def test_replay_refuses_with_one_line_and_exit_2(tmp_path: Path, capsys, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.rec"
    if content is not None:
        path.write_bytes(content)
    assert main(["replay", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("otelbpf: error: ") and message in err, err


def test_a_corrupt_length_is_an_error_not_a_huge_read(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.rec"
    path.write_bytes(MAGIC + struct.pack("<H", VERSION) + struct.pack("<BI", Kind.BATCH, 0xFFFFFFF0))
    with RecordingReader(path) as reader:
        assert list(reader) == []
    assert reader.error == f"{path}: entry 1 claims 4294967280 bytes: corrupt"


def test_a_corrupt_entry_ends_the_entries_with_an_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "corrupt.rec"
    write_sample(path)
    with open(path, "ab") as f:
        f.write(struct.pack("<BI", Kind.BATCH, 6) + struct.pack("<I", 3) + b"xy")
    with RecordingReader(path) as reader:
        assert len(list(reader)) == 10
    assert reader.error.startswith(f"{path}: entry 11 is corrupt: batch entry: ")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"otelbpf: error: {reader.error} (the 10 entries before it were replayed)"


def test_a_failed_write_stops_the_recording_not_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    """/dev/full refuses every write with ENOSPC once the buffer is flushed."""
    rec = Recorder("/dev/full", buffer_bytes=4096)
    with caplog.at_level(logging.ERROR):
        for _ in range(10):
            rec.tap([b"x" * 1000] * 4)  # no exception reaches the collector
            rec.clock()
    rec.close()
    assert rec.error == "recording to /dev/full stopped: No space left on device"
    assert [r.getMessage() for r in caplog.records] == [
        rec.error + "; tracing goes on, the recording ends at its last whole entry"
    ]
    assert rec.batches < 10


def test_what_a_killed_recorder_leaves_replays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header is on disk once recording starts, and buffered entries follow within the flush interval."""
    path = tmp_path / "killed.rec"
    rec = Recorder(path)
    rec.start(META, FixedClock(5))
    with RecordingReader(path) as reader:  # read while the recorder is still open, as after a SIGKILL
        assert [e.kind for e in reader] == [Kind.META, Kind.CLOCK]
    rec.tap(BATCHES[1])
    monkeypatch.setattr("otelbpf.recording.FLUSH_INTERVAL_S", 0.0)
    rec.clock()
    with RecordingReader(path) as reader:
        assert [e.kind for e in reader] == [Kind.META, Kind.CLOCK, Kind.BATCH, Kind.TIME]
    rec.close()
