"""OpenTelemetry resources for traced processes, read from /proc (and container runtimes) once per process."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping

import psutil

from otelbpf import __version__, service_name
from otelbpf.containers import ContainerMetadata, in_container
from otelbpf.events import ProcessEvent
from otelbpf.kubernetes import KubernetesMetadata, node_name
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
        containers: ContainerMetadata | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._override = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        service = env.get("OTEL_SERVICE_NAME", "").strip()
        if service:
            self._override["service.name"] = service
        self._host = host_name(env)
        if containers is None:
            containers = ContainerMetadata(kubernetes=KubernetesMetadata(node_name=node_name(env, self._host)))
        self._containers = containers
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
        exe_name = cwd = ""
        argv: list[str] = []
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                created = proc.create_time()
                exe = _safe(proc.exe) or ""
                argv = _safe(proc.cmdline) or []
                exe_name = os.path.basename(exe) if exe else (_safe(proc.name) or "")
                own_env = _safe(proc.environ) or {}
                cwd = _safe(proc.cwd) or ""
            if exe:
                attrs["process.executable.path"] = exe
            if exe_name:
                attrs["process.executable.name"] = exe_name
            if argv:
                attrs["process.command_line"] = " ".join(argv)[:_MAX_CMDLINE]
        except psutil.Error as exc:
            logger.debug("process %d could not be read (%s); using what the kernel reported", pid, exc)
            facts = self._exec_facts.get(pid)
            if facts is not None:
                exe_name = os.path.basename(facts.filename) or facts.comm
                argv = facts.argv
                if facts.filename:
                    attrs["process.executable.path"] = facts.filename
                if facts.argv:
                    attrs["process.command_line"] = " ".join(facts.argv)[:_MAX_CMDLINE]
            else:
                exe_name = comm
            if exe_name:
                attrs["process.executable.name"] = exe_name
        attrs["telemetry.sdk.language"] = detect_language(exe_name)
        # Once per process (the resource is cached): a cgroup read, and per new container a bounded lookup.
        container = self._containers.of_pid(pid)
        if container is not None:
            attrs.update(container.attributes)
        # The process's own OpenTelemetry settings describe it best; otelbpf's own env overrides.
        own_attrs = parse_resource_attributes(own_env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        attrs.update(own_attrs)
        attrs["service.name"] = service_name.choose(
            own_service=own_env.get("OTEL_SERVICE_NAME", ""),
            own_attributes=own_attrs,
            workload=container.workload if container else "",
            container=container.name if container else "",
            argv=argv,
            exe_name=exe_name,
            cwd=cwd,
            fallback=f"unknown_service:{pid}",
        )
        attrs.update(self._override)
        return Resource(tuple(sorted(attrs.items()))), created


def host_name(env: Mapping[str, str], proc: str = "/proc") -> str:
    """host.name: OTELBPF_HOST_NAME or K8S_NODE_NAME if set; the host's own name when otelbpf runs in a
    container (with pid: host, /proc/1/root is the host's root); else this machine's host name."""
    for name in ("OTELBPF_HOST_NAME", "K8S_NODE_NAME"):
        value = env.get(name, "").strip()
        if value:
            return value
    if in_container(proc):
        try:
            with open(f"{proc}/1/root/etc/hostname") as f:
                value = f.read().strip()
            if value:
                return value
        except OSError as exc:
            logger.debug("the host's /etc/hostname is not readable (%s): using this container's host name", exc)
    return socket.gethostname()


def _safe(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except psutil.Error:
        return None
