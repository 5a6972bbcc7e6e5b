"""OpenTelemetry resources for traced processes, read from /proc once per process."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping

import psutil

from otelbpf import __version__
from otelbpf.events import ProcessEvent
from otelbpf.kvlist import parse_kv_list
from otelbpf.spans import AttributeValue, Resource

logger = logging.getLogger(__name__)

# Executable names that tell the runtime; anything else is reported as native code.
_LANGUAGES = {
    "python": "python",
    "node": "nodejs",
    "nodejs": "nodejs",
    "java": "java",
    "ruby": "ruby",
    "php": "php",
    "php-fpm": "php",
    "dotnet": "dotnet",
    "erl": "erlang",
    "beam.smp": "erlang",
}
_MAX_CMDLINE = 1024


def parse_resource_attributes(value: str) -> dict[str, str]:
    """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k1=v1,k2=v2``, values percent-encoded); bad entries are skipped."""
    return parse_kv_list(value, strict=False, what="OTEL_RESOURCE_ATTRIBUTES")


def detect_language(exe_name: str) -> str:
    """The telemetry.sdk.language value for an executable name."""
    base = exe_name.lower()
    for prefix, lang in _LANGUAGES.items():
        if base == prefix or base.startswith(prefix) and base[len(prefix) :].lstrip("0123456789.") == "":
            return lang
    return "native"


class ResourceCache:
    """Builds and caches one Resource per traced process.

    Bounded: at most ``capacity`` processes are remembered (least recently used fall out). Entries
    are re-validated after ``revalidate_s`` against the process start time, because pids are reused.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        capacity: int = 4096,
        revalidate_s: float = 30.0,
    ) -> None:
        env = os.environ if env is None else env
        self._override = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        service = env.get("OTEL_SERVICE_NAME", "").strip()
        if service:
            self._override["service.name"] = service
        self._host = socket.gethostname()
        self._capacity = capacity
        self._revalidate_s = revalidate_s
        self._cache: OrderedDict[int, tuple[Resource, float, float]] = OrderedDict()
        # What the kernel told us at exec, for processes that exit before /proc can be read.
        self._exec_facts: OrderedDict[int, ProcessEvent] = OrderedDict()
        self.evicted = 0

    def remember_exec(self, ev: ProcessEvent) -> None:
        """Record a new program in a process; any resource cached for the pid described the old one."""
        self._cache.pop(ev.pid, None)
        self._exec_facts[ev.pid] = ev
        self._exec_facts.move_to_end(ev.pid)
        if len(self._exec_facts) > self._capacity:
            self._exec_facts.popitem(last=False)

    def get(self, pid: int, comm: str = "") -> Resource:
        """The resource for ``pid``; from exec facts or ``comm`` if the process is already gone."""
        entry = self._cache.get(pid)
        now = time.monotonic()
        if entry is not None:
            resource, created, checked = entry
            if now - checked < self._revalidate_s or self._same_process(pid, created):
                self._cache[pid] = (resource, created, now)
                self._cache.move_to_end(pid)
                return resource
        resource, created = self._build(pid, comm)
        self._cache[pid] = (resource, created, now)
        self._cache.move_to_end(pid)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
            self.evicted += 1
        return resource

    @staticmethod
    def _same_process(pid: int, created: float) -> bool:
        try:
            return psutil.Process(pid).create_time() == created
        except psutil.Error:
            return True  # gone: keep describing it as it was

    def _build(self, pid: int, comm: str) -> tuple[Resource, float]:
        attrs: dict[str, AttributeValue] = {
            "process.pid": pid,
            "host.name": self._host,
            "telemetry.sdk.name": "otelbpf",
            "telemetry.sdk.version": __version__,
        }
        created = 0.0
        own_env: dict[str, str] = {}
        exe_name = ""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                created = proc.create_time()
                exe = _safe(proc.exe) or ""
                cmdline = _safe(proc.cmdline) or []
                exe_name = os.path.basename(exe) if exe else (_safe(proc.name) or "")
                own_env = _safe(proc.environ) or {}
            if exe:
                attrs["process.executable.path"] = exe
            if exe_name:
                attrs["process.executable.name"] = exe_name
            if cmdline:
                attrs["process.command_line"] = " ".join(cmdline)[:_MAX_CMDLINE]
        except psutil.Error as exc:
            logger.debug("process %d could not be read (%s); using what the kernel reported", pid, exc)
            facts = self._exec_facts.get(pid)
            if facts is not None:
                exe_name = os.path.basename(facts.filename) or facts.comm
                if facts.filename:
                    attrs["process.executable.path"] = facts.filename
                if facts.argv:
                    attrs["process.command_line"] = " ".join(facts.argv)[:_MAX_CMDLINE]
            else:
                exe_name = comm
            if exe_name:
                attrs["process.executable.name"] = exe_name
        attrs["telemetry.sdk.language"] = detect_language(exe_name)
        # The process's own OpenTelemetry settings describe it best; otelbpf's own env overrides.
        attrs["service.name"] = exe_name or f"unknown_service:{pid}"
        attrs.update(parse_resource_attributes(own_env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
        own_service = own_env.get("OTEL_SERVICE_NAME", "").strip()
        if own_service:
            attrs["service.name"] = own_service
        attrs.update(self._override)
        return Resource(tuple(sorted(attrs.items()))), created


def _safe(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except psutil.Error:
        return None
