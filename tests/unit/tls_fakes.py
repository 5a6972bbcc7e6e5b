"""A stand-in for KernelProbes' TLS side, shared by the TLS watcher and per-process probe tests."""

from __future__ import annotations


class FakeTlsKernel:
    """Records attaches (pid -1: file-wide), removals and exit reports as KernelProbes would take them."""

    def __init__(self) -> None:
        self.attached: list[tuple[str, int, tuple[int, ...]]] = []
        self.detached: list[tuple[str, int]] = []
        self.exits: dict[int, bool] = {}

    def attach(self, path: str, kind: str, symbols: tuple[str, ...], pid: int = -1, addresses=()) -> int:
        self.attached.append((path, pid, tuple(addresses)))
        return 2 * len(symbols)

    def detach(self, path: str, pid: int) -> int:
        self.detached.append((path, pid))
        return 4

    def report_exit(self, pid: int, wanted: bool) -> None:
        self.exits[pid] = wanted

    @property
    def per_process(self) -> list[tuple[str, int]]:
        return [(path, pid) for path, pid, _ in self.attached if pid != -1]

    @property
    def file_wide(self) -> list[str]:
        return [path for path, pid, _ in self.attached if pid == -1]
