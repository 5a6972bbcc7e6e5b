"""Keeps tracing from starving the traced applications: lower the trace rate while CPUs are saturated.

The collector's CPU and the kernel's per-request work are taken from the machine the applications
run on. When the machine has idle CPU, every request is traced (up to --max-spans-per-second).
Saturated means any of:
- the machine's CPUs are --saturated-cpu-percent busy (80 by default);
- a traced process is CPU-bound: it uses that share of the CPUs it can use (its threads, at most
  every CPU). A single-threaded server at full load pins one core while the machine still shows
  idle time, and the kernel's per-request work runs on that very core;
- the machine is fairly busy (20 points below that threshold) and tracing itself is expensive: the
  collector uses more than --max-collector-cpu-percent of one CPU (15 by default).
While saturated, tracing backs off towards --min-spans-per-second, dividing by four each second; it
comes back by doubling each second once both measures are 15 points below the threshold. Everything shed is
counted in the kernel and reported as lost with its reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

UNLIMITED = 0


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs since boot."""
    with open(path) as f:
        fields = f.readline().split()
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_NCPU = os.cpu_count() or 1


def read_process_cpu(pid: int) -> tuple[float, int] | None:
    """(CPU seconds used so far, thread count) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    utime, stime, threads = int(fields[11]), int(fields[12]), int(fields[17])
    return (utime + stime) / _CLK_TCK, threads


class ProcessLoad:
    """How CPU-bound the busiest of the given processes was since the last call (0.0 to 1.0)."""

    def __init__(
        self,
        read: Callable[[int], tuple[float, int] | None] = read_process_cpu,
        clock: Callable[[], float] | None = None,
        ncpu: int = _NCPU,
    ) -> None:
        import time

        self._read = read
        self._clock = clock or time.monotonic
        self._ncpu = ncpu
        self._last: dict[int, tuple[float, float]] = {}

    def busiest(self, pids: Iterable[int]) -> float:
        """The highest share of its usable CPU that any of ``pids`` used since it was last measured."""
        now = self._clock()
        seen: dict[int, tuple[float, float]] = {}
        top = 0.0
        for pid in pids:
            sample = self._read(pid)
            if sample is None:
                continue
            cpu_s, threads = sample
            seen[pid] = (cpu_s, now)
            last = self._last.get(pid)
            if last is None or now <= last[1]:
                continue
            usable = max(1, min(threads, self._ncpu))
            top = max(top, (cpu_s - last[0]) / (now - last[1]) / usable)
        self._last = seen  # bounded by the pids asked about this time
        return top


@dataclass
class GovernorStats:
    """How the governor acted during the run."""

    seconds_reduced: int = 0
    lowest_limit: int = 0


class LoadGovernor:
    """Adjusts the in-kernel trace rate once per tick from the machine's CPU busy fraction."""

    def __init__(
        self,
        apply: Callable[[int], None],
        max_rate: int,
        min_rate: int,
        saturated: float = 0.80,
        relaxed: float | None = None,
        cpu_times: Callable[[], tuple[int, int]] = read_cpu_times,
        process_load: ProcessLoad | None = None,
        collector_cpu: float = 0.15,
        own_load: Callable[[], float] | None = None,
    ) -> None:
        if min_rate <= 0:
            raise ValueError(f"the minimum trace rate must be positive, got {min_rate}")
        if max_rate != UNLIMITED and max_rate < min_rate:
            raise ValueError(f"--max-spans-per-second {max_rate} is below --min-spans-per-second {min_rate}")
        self._apply = apply
        self._max = max_rate
        self._min = min_rate
        if not 0.0 < saturated <= 1.0:
            raise ValueError(f"the CPU saturation threshold must be within (0, 100] percent, got {saturated * 100:g}")
        self._saturated = saturated
        self._relaxed = saturated - 0.15 if relaxed is None else relaxed
        self._cpu_times = cpu_times
        self._last = cpu_times()
        self._process_load = process_load or ProcessLoad()
        self._collector_cpu = collector_cpu
        if own_load is None:
            own = ProcessLoad(ncpu=1)  # share of one CPU, whatever the thread count
            pid = os.getpid()

            def own_load() -> float:
                return own.busiest([pid])

        self._own_load = own_load
        self.limit = max_rate  # UNLIMITED (0) means no limit
        self.stats = GovernorStats()
        apply(self.limit)

    def _busy_fraction(self) -> float | None:
        busy, total = self._cpu_times()
        last_busy, last_total = self._last
        self._last = (busy, total)
        if total <= last_total:
            return None
        return (busy - last_busy) / (total - last_total)

    def tick(self, traced_per_second: float, active_pids: Iterable[int] = ()) -> None:
        """Called about once a second with the traced request rate and the processes producing it."""
        machine = self._busy_fraction()
        if machine is None:
            return
        app = self._process_load.busiest(active_pids)
        own = self._own_load()
        busy = max(machine, app)
        # Expensive tracing on a fairly busy machine: the CPU the collector takes is the apps' to lose.
        costly = machine >= self._saturated - 0.20 and own > self._collector_cpu
        logger.debug(
            "governor: machine %.0f%% busy, busiest traced process %.0f%%, collector %.0f%% of a CPU, "
            "%d requests/s traced, limit %d",
            machine * 100,
            app * 100,
            own * 100,
            traced_per_second,
            self.limit,
        )
        new = self.limit
        if busy >= self._saturated or costly:
            # Cut from what is actually traced, not from the limit: an unused limit protects nothing.
            current = traced_per_second if self.limit == UNLIMITED else min(self.limit, traced_per_second)
            new = max(self._min, int(current / 4))
        elif busy < self._relaxed and self.limit != self._max:
            doubled = self.limit * 2
            new = self._max if self._max != UNLIMITED and doubled >= self._max else doubled
            if self._max == UNLIMITED and doubled >= 1_000_000:
                new = UNLIMITED
        if new != self.limit:
            if self.limit == self._max:
                logger.info(
                    "CPUs saturated (machine %.0f%%, busiest traced process %.0f%%, collector %.0f%% of a CPU): "
                    "tracing at most %d requests/s",
                    machine * 100,
                    app * 100,
                    own * 100,
                    new,
                )
            self.limit = new
            self._apply(new)
        if self.limit != self._max:
            self.stats.seconds_reduced += 1
            low = self.stats.lowest_limit
            self.stats.lowest_limit = self.limit if not low else min(low, self.limit)
