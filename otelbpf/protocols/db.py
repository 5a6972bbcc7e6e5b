"""Database and cache calls: the protocol-neutral result of the DB parsers, and the spans made of it.

Each database protocol module (postgres, mysql, redis) turns one kernel record's request and response
captures into a ``DbCall``; ``DbSpans`` maps it onto the database semantic conventions. Keeping this in
one place means the span naming and attribute rules are written once for every database.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from otelbpf import events
from otelbpf.events import RequestEvent
from otelbpf.protocols.base import BuildStats, Endpoints, Operation
from otelbpf.spans import AttributeValue, SpanKind, StatusCode

# db.system.name values from the semantic conventions.
POSTGRESQL = "postgresql"
MYSQL = "mysql"
MARIADB = "mariadb"
REDIS = "redis"


@dataclass(slots=True)
class DbCall:
    """One database call as its protocol parser understood it; ``None`` fields are unknown."""

    system: str  # db.system.name
    operation: str | None = None  # db.operation.name, e.g. "SELECT", "BATCH INSERT", "SET"
    collection: str | None = None  # db.collection.name (a table), best effort
    query_text: str | None = None  # db.query.text: sanitized (literals as ?) unless raw text was asked for
    namespace: str | None = None  # db.namespace: the database (PostgreSQL, MySQL) or index (Redis)
    status_code: str | None = None  # db.response.status_code: SQLSTATE, MySQL error number, Redis error prefix
    error_message: str = ""  # the server's error text, for the span status message (never query values)
    batch_size: int = 0  # db.operation.batch.size, set when the call carried two or more operations
    truncated: bool = False  # the capture ended mid-request: query text or batch size may be incomplete

    @property
    def is_error(self) -> bool:
        """The server answered with an error."""
        return self.status_code is not None


# ---- spans ----

# Quoted parts of a server's error text ('abc', "abc"): they often hold the very values a query carried.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"")
MAX_STATUS_MESSAGE = 256


class DbSession(Protocol):
    """A database protocol's per-connection parser (postgres.PgSession, mysql.MySqlSession, ...)."""

    def describe(self, req: bytes, resp: bytes, count_hint: int = 0) -> DbCall | None: ...


def redact_message(message: str) -> str:
    """A server error text with its quoted parts hidden, bounded."""
    return _QUOTED.sub("?", message)[:MAX_STATUS_MESSAGE]


def span_name(call: DbCall) -> str:
    """``{db.operation.name} {db.collection.name}`` where known, else the operation, else the system."""
    if call.operation and call.collection:
        return f"{call.operation} {call.collection}"
    return call.operation or call.system


class DbSpans:
    """Database records -> operations with the database semantic conventions; one parser per connection.

    Connections are keyed by process and kernel socket. The table is bounded: the least recently used
    connection's parser (and the prepared statements it remembered) goes first, counted in ``evicted``.
    """

    def __init__(
        self,
        stats: BuildStats,
        new_session: Callable[[], DbSession],
        max_connections: int = 4096,
        capture_raw: bool = False,
    ) -> None:
        self.stats = stats
        self._new_session = new_session
        self._sessions: OrderedDict[tuple[int, int, int, int], DbSession] = OrderedDict()
        self._max = max_connections
        self._capture_raw = capture_raw
        self.evicted = 0

    def _session(self, ev: RequestEvent) -> DbSession:
        key = (ev.pid, ev.sock_id, ev.local_port, ev.peer_port)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._new_session()
            if len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
                self.evicted += 1
        else:
            self._sessions.move_to_end(key)
        return session

    def describe(self, ev: RequestEvent, endpoints: Endpoints) -> Operation | None:
        """The operation for one database record; None when the record carries no database call."""
        if ev.role != events.ROLE_CLIENT:
            return None  # only client calls are traced: a database server's view adds nothing here
        call = self._session(ev).describe(ev.req[ev.req_offset :], ev.resp, ev.count)
        if call is None:
            return None
        attrs: dict[str, AttributeValue] = {"db.system.name": call.system}
        if call.namespace:
            attrs["db.namespace"] = call.namespace
        if call.operation:
            attrs["db.operation.name"] = call.operation
        if call.collection:
            attrs["db.collection.name"] = call.collection
        if call.query_text:
            attrs["db.query.text"] = call.query_text
        name = span_name(call)
        if call.operation:
            # The conventions' carrier for what was read from the query text: it names the span.
            attrs["db.query.summary"] = name
        if call.batch_size >= 2:
            attrs["db.operation.batch.size"] = call.batch_size
        if endpoints.peer:
            attrs["server.address"] = endpoints.peer
        if ev.peer_port:
            attrs["server.port"] = ev.peer_port
        tls = events.TLS_LIBRARIES.get(ev.tls) if ev.tls else None
        if tls:
            attrs["otelbpf.tls.library"] = tls
        status, message = StatusCode.UNSET, ""
        if call.status_code is not None:
            attrs["db.response.status_code"] = call.status_code
            attrs["error.type"] = call.status_code
            status = StatusCode.ERROR
            text = call.error_message if self._capture_raw else redact_message(call.error_message)
            message = text or f"{call.system} error {call.status_code}"
        elif ev.end in (events.END_NO_RESPONSE, events.END_CONN_CLOSED):
            attrs["error.type"] = "connection_closed"
            status, message = StatusCode.ERROR, "connection closed before the response completed"
        return Operation(name=name, kind=SpanKind.CLIENT, attributes=attrs, status=status, status_message=message)
