"""The load governor: back off while CPUs are saturated, recover when they are not (no root)."""

from __future__ import annotations

import pytest

from otelbpf.governor import UNLIMITED, LoadGovernor, ProcessLoad, read_cpu_times, read_process_cpu


class FakeCpu:
    def __init__(self) -> None:
        self.busy = 0
        self.total = 0

    def advance(self, busy_fraction: float, jiffies: int = 200) -> None:
        self.busy += int(jiffies * busy_fraction)
        self.total += jiffies

    def __call__(self) -> tuple[int, int]:
        return self.busy, self.total


def make(max_rate: int = 20000, min_rate: int = 1000) -> tuple[LoadGovernor, FakeCpu, list[int]]:
    cpu, applied = FakeCpu(), []
    idle_apps = ProcessLoad(read=lambda pid: None)
    gov = LoadGovernor(applied.append, max_rate, min_rate, cpu_times=cpu, process_load=idle_apps, own_load=lambda: 0.05)
    return gov, cpu, applied


def test_starts_at_the_maximum_and_leaves_idle_machines_alone() -> None:
    gov, cpu, applied = make()
    assert applied == [20000]
    for _ in range(5):
        cpu.advance(0.4)
        gov.tick(10_000)
    assert applied == [20000] and gov.stats.seconds_reduced == 0


def test_halves_from_the_traced_rate_down_to_the_floor_then_recovers() -> None:
    gov, cpu, applied = make()
    for _ in range(4):
        cpu.advance(0.99)
        gov.tick(min(gov.limit, 18_000))
    assert applied == [20000, 4500, 1125, 1000]
    assert gov.stats.lowest_limit == 1000
    for _ in range(6):
        cpu.advance(0.5)
        gov.tick(gov.limit)
    assert applied[-5:] == [2000, 4000, 8000, 16000, 20000]
    assert gov.limit == 20000


def test_between_thresholds_holds_steady() -> None:
    gov, cpu, applied = make()
    cpu.advance(0.95)
    gov.tick(20000)
    cpu.advance(0.75)  # between 65 % and 80 %: neither back off nor recover
    gov.tick(5000)
    assert applied == [20000, 5000]


def test_unlimited_backs_off_and_returns_to_unlimited() -> None:
    gov, cpu, applied = make(max_rate=UNLIMITED)
    cpu.advance(1.0)
    gov.tick(100_000)
    assert applied == [UNLIMITED, 25_000]
    for _ in range(6):
        cpu.advance(0.1)
        gov.tick(gov.limit)
    assert gov.limit == UNLIMITED


def test_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="below"):
        make(max_rate=500, min_rate=1000)
    with pytest.raises(ValueError, match="positive"):
        make(min_rate=0)
    with pytest.raises(ValueError, match="threshold"):
        LoadGovernor(lambda _: None, 20000, 1000, saturated=0.0, cpu_times=FakeCpu())


def test_reads_this_machines_cpu_times() -> None:
    busy, total = read_cpu_times()
    assert 0 <= busy <= total and total > 0


def test_process_load_is_share_of_usable_cpus() -> None:
    samples = {1: (0.0, 1), 2: (0.0, 8), 3: (0.0, 1)}
    clock = [0.0]
    load = ProcessLoad(read=lambda pid: samples.get(pid), clock=lambda: clock[0], ncpu=2)
    assert load.busiest([1, 2, 3]) == 0.0  # first look: nothing to compare with
    clock[0] = 1.0
    samples[1] = (0.95, 1)  # single-threaded, 95 % of its one CPU: CPU-bound
    samples[2] = (1.0, 8)  # 8 threads on 2 CPUs, 1 CPU-second: half of what it could use
    del samples[3]  # exited
    assert load.busiest([1, 2, 3]) == pytest.approx(0.95)
    clock[0] = 2.0
    samples[2] = (2.9, 8)
    assert load.busiest([2]) == pytest.approx(0.95)


def test_cpu_bound_traced_process_backs_off_on_an_idle_machine() -> None:
    cpu = FakeCpu()
    app = FakeLoad(0.97)
    applied: list[int] = []
    gov = LoadGovernor(
        applied.append,
        20000,
        1000,
        cpu_times=cpu,
        process_load=app,
        own_load=lambda: 0.05,  # type: ignore[arg-type]
    )
    cpu.advance(0.6)
    gov.tick(20000, [42])
    assert applied == [20000, 5000]
    app.value = 0.1
    cpu.advance(0.3)
    gov.tick(5000, [42])
    assert applied == [20000, 5000, 10000]


class FakeLoad:
    def __init__(self, value: float) -> None:
        self.value = value

    def busiest(self, pids: object) -> float:
        return self.value


def test_reads_a_real_busy_process() -> None:
    """The reading matches psutil's for the same interval, however busy the machine is."""
    import subprocess
    import sys
    import time

    import psutil

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(child.pid)
        load = ProcessLoad()
        t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
        load.busiest([child.pid])
        while sum(proc.cpu_times()[:2]) - c0 < 0.3:  # a known amount of work, not a fixed time
            time.sleep(0.01)
        got = load.busiest([child.pid])
        expected = (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        assert got > 0 and got == pytest.approx(expected, abs=0.1)
        assert read_process_cpu(2**22 + 7) is None
    finally:
        child.kill()
        child.wait()


def test_expensive_tracing_on_a_busy_machine_backs_off() -> None:
    cpu, applied, own = FakeCpu(), [], [0.30]
    gov = LoadGovernor(applied.append, 20000, 1000, cpu_times=cpu, process_load=FakeLoad(0.5), own_load=lambda: own[0])  # type: ignore[arg-type]
    cpu.advance(0.72)  # busy, but below the 80 % threshold
    gov.tick(20000, [1])
    assert applied == [20000, 5000]
    own[0] = 0.30
    cpu.advance(0.30)  # the same collector cost on a quiet machine is fine
    gov.tick(5000, [1])
    assert applied == [20000, 5000, 10000]
