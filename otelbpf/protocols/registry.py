"""Which user-space module handles which protocol: the one table a new protocol adds a line to."""

from __future__ import annotations

from dataclasses import dataclass

from otelbpf import events
from otelbpf.protocols.base import BuildStats, ProtocolSpans
from otelbpf.protocols.db import DbSpans
from otelbpf.protocols.http1 import HttpSpans
from otelbpf.protocols.mysql import MySqlSession
from otelbpf.protocols.postgres import PgSession
from otelbpf.protocols.redis import RedisSession

# Protocol number (enum otelbpf_protocol) -> the name used in logs and summaries.
NAMES: dict[int, str] = {
    events.PROTO_HTTP1: "http1",
    events.PROTO_POSTGRES: "postgresql",
    events.PROTO_REDIS: "redis",
    events.PROTO_MYSQL: "mysql",
}


@dataclass(frozen=True)
class ProtocolOptions:
    """User choices every protocol module may read."""

    capture_query: bool = False  # keep URL query strings (HTTP)
    raw_db_query_text: bool = False  # keep the literals in db.query.text


def protocol_modules(stats: BuildStats, options: ProtocolOptions) -> dict[int, ProtocolSpans]:
    """One instance of each protocol's module, by protocol number."""
    raw = options.raw_db_query_text
    return {
        events.PROTO_HTTP1: HttpSpans(stats, capture_query=options.capture_query),
        events.PROTO_POSTGRES: DbSpans(stats, lambda: PgSession(capture_raw=raw), capture_raw=raw),
        events.PROTO_REDIS: DbSpans(stats, lambda: RedisSession(capture_raw=raw), capture_raw=raw),
        events.PROTO_MYSQL: DbSpans(stats, lambda: MySqlSession(capture_raw=raw), capture_raw=raw),
    }
