"""Mapping kernel CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to Unix wall-clock nanoseconds."""

from __future__ import annotations

import time
from collections.abc import Callable


def measure_offset(
    realtime_ns: Callable[[], int] = time.time_ns,
    monotonic_ns: Callable[[], int] = time.monotonic_ns,
    samples: int = 9,
) -> int:
    """Wall minus monotonic, from the tightest of several bracketed readings."""
    best_width = None
    best = 0
    for _ in range(samples):
        m1 = monotonic_ns()
        r = realtime_ns()
        m2 = monotonic_ns()
        width = m2 - m1
        # The realtime reading happened somewhere between m1 and m2; the narrowest bracket pins it best.
        if best_width is None or width < best_width:
            best_width = width
            best = r - (m1 + m2) // 2
    return best


class ClockMap:
    """Converts kernel monotonic timestamps to wall-clock time, re-measuring the offset periodically.

    The offset changes only when the wall clock is stepped or slewed (NTP), so re-measuring every
    few seconds keeps spans on the backend's time axis without per-span cost.
    """

    def __init__(
        self,
        refresh_s: float = 5.0,
        realtime_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._realtime_ns = realtime_ns
        self._monotonic_ns = monotonic_ns
        self._refresh_ns = int(refresh_s * 1e9)
        self.offset_ns = measure_offset(realtime_ns, monotonic_ns)
        self._measured_at = monotonic_ns()

    def maybe_refresh(self) -> None:
        """Re-measure the offset if it is older than the refresh interval."""
        now = self._monotonic_ns()
        if now - self._measured_at >= self._refresh_ns:
            self.offset_ns = measure_offset(self._realtime_ns, self._monotonic_ns)
            self._measured_at = now

    def to_wall(self, monotonic_ns: int) -> int:
        """Unix epoch nanoseconds for a CLOCK_MONOTONIC timestamp."""
        return monotonic_ns + self.offset_ns
