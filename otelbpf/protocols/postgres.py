"""PostgreSQL wire protocol v3, client side, parsed from kernel request/response captures.

The kernel pairs each request on a connection with its response and hands over the first bytes of each: at
most 512 of what the client wrote and 256 of what the server answered, both starting at a message boundary
but cut anywhere. Connections are often older than tracing, so the startup handshake (and with it the
database name) may never be seen, and named prepared statements may have been parsed before we watched.

``parse_frontend`` and ``parse_backend`` are pure; ``PgSession`` keeps the little per-connection state that
turns a Bind/Execute of an earlier-prepared statement back into its query text. Nothing here raises on any
input: a misdetected connection feeds us arbitrary bytes. Parsing steps from message to message by the length
fields and searches strings with ``bytes.find``, so the work per record is bounded by the capture size, not
by Python loops over its bytes. Parameter values (Bind) and passwords ('p') are never read.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from otelbpf.protocols import sql
from otelbpf.protocols.db import POSTGRESQL, DbCall

# FrontendMessage.kind for the messages that have no type byte; typed messages use their type letter.
STARTUP = "startup"
SSL_REQUEST = "ssl_request"
GSSENC_REQUEST = "gssenc_request"
CANCEL_REQUEST = "cancel_request"

_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")

_SSL_CODE = 80877103
_GSSENC_CODE = 80877104
_CANCEL_CODE = 80877102
_PROTOCOL_MAJOR = 3  # 3.0 (196608) and 3.2 (196610, PostgreSQL 18) share the major number
_MAX_STARTUP_LEN = 10_000  # the server refuses longer startup packets
_MIN_CANCEL_LEN, _MAX_CANCEL_LEN = 8 + 4 + 1, 8 + 4 + 256  # protocol 3.2 made the secret 1..256 bytes
_MAX_LEN = 0x3FFFFFFF  # no message may exceed 1 GB; a larger length means we are not at a message boundary
_DETECT_MAX_LEN = 1 << 24  # detection is stricter: a real first message this big is rare, ASCII text is not

# Smallest legal length field (it counts itself) per frontend type; anything shorter means garbage.
_FRONTEND_MIN_LEN: dict[int, int] = {
    ord("Q"): 5,  # query\0
    ord("P"): 8,  # name\0 query\0 int16
    ord("B"): 12,  # portal\0 stmt\0 int16 int16 int16
    ord("D"): 6,  # 'S'|'P' name\0
    ord("E"): 9,  # portal\0 int32
    ord("C"): 6,  # 'S'|'P' name\0
    ord("S"): 4,
    ord("H"): 4,
    ord("X"): 4,
    ord("p"): 4,  # password / SASL / GSS response
    ord("d"): 4,  # CopyData
    ord("c"): 4,  # CopyDone
    ord("f"): 5,  # CopyFail
    ord("F"): 14,  # FunctionCall
}
_FIXED_LEN = frozenset(b"SHXc")  # these carry no body: length is exactly 4
# The kernel detector only classifies a connection by the messages a client starts a request with.
_DETECT_TYPES = frozenset(b"QPBDECSHXp")

# Backend message types; parsing stops at any other byte because the capture is then not PostgreSQL.
_BACKEND_TYPES = frozenset(b"RKSZTDCEN123nstIAGHWdcvV")

MAX_MESSAGES = 128  # a 512-byte capture holds at most 102 messages; this bounds larger inputs too
_MAX_TAGS = 32
_MAX_ERROR_MESSAGE = 512
_MAX_BATCH_TEXT = 1024  # db.query.text of a batch: whole statements are kept until this many characters
_MAX_STARTUP_PARAMS = 64
_QUERY_KINDS = frozenset("QPBE")


@dataclass(slots=True)
class FrontendMessage:
    """One client message; string fields cut off by the capture are ``None`` (names) or partial (query)."""

    kind: str  # type letter ("Q", "P", "B", "E", ...) or STARTUP / SSL_REQUEST / GSSENC_REQUEST / CANCEL_REQUEST
    name: str | None = ""  # Parse: statement; Bind/Execute: portal; Close/Describe: statement or portal
    statement: str | None = ""  # Bind: the prepared statement the portal is made from
    target: str = ""  # Close/Describe: "S" (statement) or "P" (portal)
    query: str | None = None  # Query/Parse text, partial when truncated
    max_rows: int = 0  # Execute: row limit, 0 for all
    params: dict[str, str] | None = None  # StartupMessage parameters ("user", "database", ...)
    truncated: bool = False  # the capture ended inside this message


@dataclass(slots=True)
class PgResponse:
    """What the first bytes of the server's answer say about the outcome."""

    error_code: str | None = None  # SQLSTATE of the first ErrorResponse, e.g. "42P01"
    error_message: str = ""  # its 'M' field
    error_severity: str | None = None  # its 'V' field (never localized), else 'S'
    has_error: bool = False  # an ErrorResponse was seen, even one cut before its SQLSTATE
    command_tags: list[str] = field(default_factory=list)  # complete CommandComplete tags, e.g. "INSERT 0 1"
    ready_for_query: bool = False
    transaction_status: str | None = None  # ReadyForQuery status: "I" idle, "T" in transaction, "E" failed
    ssl_answer: str | None = None  # the one-byte answer to SSLRequest ("S"/"N") or GSSENCRequest ("G"/"N")
    truncated: bool = False  # the capture ended inside a message


def _cstr(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    """A NUL-terminated name at ``pos``; None when the capture cut it (a partial name matches nothing)."""
    z = data.find(b"\0", pos, end)
    if z < 0:
        return None, end
    return data[pos:z].decode("utf-8", "replace"), z + 1


def _text(data: bytes, pos: int, end: int) -> tuple[str, int, bool]:
    """A NUL-terminated text at ``pos``, partial when cut; returns (text, next position, complete)."""
    z = data.find(b"\0", pos, end)
    if z < 0:
        # A cut multi-byte character decodes to U+FFFD; it is an artefact of the cut, not of the query.
        return data[pos:end].decode("utf-8", "replace").rstrip("\ufffd"), end, False
    return data[pos:z].decode("utf-8", "replace"), z + 1, True


def _untyped(req: bytes) -> FrontendMessage | None:
    """Classify a message without a type byte (startup, SSL/GSSENC/cancel request) at the start of ``req``."""
    n = len(req)
    if n < 8:
        return None
    length, code = _U32_PAIR.unpack_from(req, 0)
    if code == _SSL_CODE or code == _GSSENC_CODE:
        return FrontendMessage(SSL_REQUEST if code == _SSL_CODE else GSSENC_REQUEST) if length == 8 else None
    if code == _CANCEL_CODE:
        # The process id and secret key are never kept: nothing in a span needs them.
        if not _MIN_CANCEL_LEN <= length <= _MAX_CANCEL_LEN:
            return None
        return FrontendMessage(CANCEL_REQUEST, truncated=n < length)
    if code >> 16 != _PROTOCOL_MAJOR or not 8 < length <= _MAX_STARTUP_LEN:
        return None
    end = min(length, n)
    parts = req[8:end].split(b"\0", 2 * _MAX_STARTUP_PARAMS + 1)
    # The last part follows the last NUL: empty when the list terminator was seen, a cut-off string otherwise.
    parts.pop()
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        key = parts[i]
        if not key:
            break
        params[key.decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
    return FrontendMessage(STARTUP, params=params, truncated=n < length)


def _frontend_body(t: int, data: bytes, pos: int, end: int) -> FrontendMessage:
    """Decode the fields tracing needs from one typed message's body ``data[pos:end]``."""
    kind = chr(t)
    if t == 0x51:  # Q
        text, _, _ = _text(data, pos, end)
        return FrontendMessage(kind, query=text)
    if t == 0x50:  # P
        name, pos = _cstr(data, pos, end)
        if name is None:
            return FrontendMessage(kind, name=None)
        text, _, _ = _text(data, pos, end)
        return FrontendMessage(kind, name=name, query=text)
    if t == 0x42:  # B: the parameter values that follow the names are deliberately never read
        portal, pos = _cstr(data, pos, end)
        stmt = None if portal is None else _cstr(data, pos, end)[0]
        return FrontendMessage(kind, name=portal, statement=stmt)
    if t == 0x45:  # E
        portal, pos = _cstr(data, pos, end)
        rows = _U32.unpack_from(data, pos)[0] if portal is not None and pos + 4 <= end else 0
        return FrontendMessage(kind, name=portal, max_rows=rows)
    if t == 0x44 or t == 0x43:  # D, C
        if pos >= end:
            return FrontendMessage(kind, name=None)
        return FrontendMessage(kind, target=chr(data[pos]), name=_cstr(data, pos + 1, end)[0])
    return FrontendMessage(kind)


def parse_frontend(req: bytes) -> list[FrontendMessage]:
    """Parse the client messages in ``req`` (up to MAX_MESSAGES); the last is marked if the capture cut it."""
    n = len(req)
    if n == 0:
        return []
    if req[0] == 0:
        # Only the first message of a connection lacks a type byte, and a typed message never starts with NUL.
        msg = _untyped(req)
        return [msg] if msg is not None else []
    out: list[FrontendMessage] = []
    pos = 0
    while pos < n and len(out) < MAX_MESSAGES:
        t = req[pos]
        min_len = _FRONTEND_MIN_LEN.get(t)
        if min_len is None:
            break
        if pos + 5 > n:
            out.append(FrontendMessage(chr(t), name=None, statement=None, truncated=True))
            break
        length = _U32.unpack_from(req, pos + 1)[0]
        if length < min_len or length > _MAX_LEN or (t in _FIXED_LEN and length != 4):
            break
        end = pos + 1 + length
        msg = _frontend_body(t, req, pos + 5, min(end, n))
        out.append(msg)
        if end > n:
            msg.truncated = True
            break
        pos = end
    return out


def looks_like_frontend(req: bytes) -> bool:
    """Cheaply tell whether ``req`` starts with a plausible PostgreSQL client message."""
    if len(req) < 5:
        return False
    t = req[0]
    if t == 0:
        return _untyped(req) is not None
    if t not in _DETECT_TYPES:
        return False
    length = _U32.unpack_from(req, 1)[0]
    if t in _FIXED_LEN:
        return length == 4
    return _FRONTEND_MIN_LEN[t] <= length <= _DETECT_MAX_LEN


def _error_fields(out: PgResponse, data: bytes, pos: int, end: int) -> None:
    """Fill ``out`` from an ErrorResponse body: (code byte, NUL-terminated string)* then a NUL."""
    severity_s: str | None = None
    while pos < end:
        code = data[pos]
        if code == 0:
            break
        z = data.find(b"\0", pos + 1, end)
        if z < 0:
            if code == 0x4D:  # a cut message is still worth showing; a cut SQLSTATE is not a SQLSTATE
                out.error_message = data[pos + 1 : end].decode("utf-8", "replace")[:_MAX_ERROR_MESSAGE]
            break
        if code == 0x43:  # C
            state = data[pos + 1 : z]
            if len(state) == 5 and state.isalnum():
                out.error_code = state.decode("ascii")
        elif code == 0x4D:  # M
            out.error_message = data[pos + 1 : z].decode("utf-8", "replace")[:_MAX_ERROR_MESSAGE]
        elif code == 0x56:  # V
            out.error_severity = data[pos + 1 : z].decode("utf-8", "replace")
        elif code == 0x53:  # S
            severity_s = data[pos + 1 : z].decode("utf-8", "replace")
        pos = z + 1
    if out.error_severity is None:
        out.error_severity = severity_s


def parse_backend(resp: bytes) -> PgResponse:
    """Summarize the server messages in ``resp``: first error, command tags, ReadyForQuery, SSL answer."""
    out = PgResponse()
    n = len(resp)
    if n == 1 and resp in (b"S", b"N", b"G"):
        # The only unframed server answer: one byte after SSLRequest or GSSENCRequest.
        out.ssl_answer = resp.decode("ascii")
        return out
    pos = 0
    count = 0
    while pos + 5 <= n and count < MAX_MESSAGES:
        t = resp[pos]
        if t not in _BACKEND_TYPES:
            return out
        length = _U32.unpack_from(resp, pos + 1)[0]
        if length < 4 or length > _MAX_LEN:
            return out
        end = pos + 1 + length
        body_end = min(end, n)
        if t == 0x45:  # E
            if not out.has_error:
                out.has_error = True
                _error_fields(out, resp, pos + 5, body_end)
        elif t == 0x43:  # C
            z = resp.find(b"\0", pos + 5, body_end)
            if z >= 0 and len(out.command_tags) < _MAX_TAGS:
                out.command_tags.append(resp[pos + 5 : z].decode("utf-8", "replace"))
        elif t == 0x5A:  # Z
            out.ready_for_query = True
            if pos + 5 < body_end:
                out.transaction_status = chr(resp[pos + 5])
        if end > n:
            out.truncated = True
            return out
        pos = end
        count += 1
    if 0 < n - pos < 5 and resp[pos] in _BACKEND_TYPES:
        out.truncated = True
    return out


@dataclass(slots=True)
class _Statement:
    """A prepared statement's text, reduced once at Parse time to what every later execution reports."""

    operation: str | None
    collection: str | None
    query_text: str | None
    partial: bool  # the text was cut by the capture
    raw: str  # the text as parsed, to recognize a re-Parse of the same text


class PgSession:
    """Per-connection state: the database name and the prepared statements and portals seen so far."""

    __slots__ = ("max_statements", "capture_raw", "namespace", "evicted", "failures", "_statements", "_portals")

    def __init__(self, max_statements: int = 256, capture_raw: bool = False) -> None:
        self.max_statements = max(1, max_statements)
        self.capture_raw = capture_raw
        self.namespace: str | None = None  # db.namespace, learned from the StartupMessage
        self.evicted = 0  # statements and portals dropped from the full tables
        self.failures = 0  # records dropped because describing them raised (a bug, never expected)
        self._statements: OrderedDict[str, _Statement] = OrderedDict()
        self._portals: OrderedDict[str, _Statement] = OrderedDict()

    def describe(self, req: bytes, resp: bytes, count_hint: int = 0) -> DbCall | None:
        """Turn one request/response record into a DbCall; None when it carries no database operation."""
        try:
            return self._describe(req, resp, count_hint)
        except Exception:
            # sql.py is another module and the bytes are untrusted: one lost span beats a dead collector.
            self.failures += 1
            return None

    def _remember(self, table: OrderedDict[str, _Statement], key: str, value: _Statement) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self.max_statements:
            table.popitem(last=False)
            self.evicted += 1

    @staticmethod
    def _lookup(table: OrderedDict[str, _Statement], key: str | None) -> _Statement | None:
        if key is None:
            return None
        st = table.get(key)
        if st is not None:
            table.move_to_end(key)
        return st

    def _statement(self, text: str | None, partial: bool, name: str | None = None) -> _Statement:
        text = text or ""
        if name is not None:
            # Drivers re-Parse the unnamed statement on every execution, mostly with the same text.
            old = self._statements.get(name)
            if old is not None and old.raw == text and old.partial == partial:
                return old
        if not text or text.isspace():
            return _Statement(None, None, None, partial, text)
        operation, collection = sql.summarize(text)
        # Semconv leaves parameterized text unsanitized; sanitizing anyway costs nothing for a text holding only
        # $n placeholders (it comes back unchanged) and still hides literals written inline next to them.
        query_text = text if self.capture_raw else sql.sanitize(text, "postgresql")
        return _Statement(operation, collection, query_text, partial, text)

    def _close(self, msg: FrontendMessage) -> None:
        if msg.name is None:
            return
        if msg.target == "S":
            st = self._statements.pop(msg.name, None)
            if st is not None:
                # Closing a statement closes the portals made from it.
                for key in [k for k, v in self._portals.items() if v is st]:
                    del self._portals[key]
        elif msg.target == "P":
            self._portals.pop(msg.name, None)

    def _describe(self, req: bytes, resp: bytes, count_hint: int) -> DbCall | None:
        msgs = parse_frontend(req)
        if not msgs:
            return None
        first = msgs[0].kind
        if first == STARTUP:
            params = msgs[0].params or {}
            # The server defaults the database to the user name when the client names none.
            name = params.get("database") or params.get("user")
            if name:
                self.namespace = name
            return None
        if first in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST):
            return None

        ops: list[_Statement | None] = []  # one per Execute or Query, in order
        queries = False  # the request holds a Query or an extended-protocol step
        parsed: list[_Statement] = []  # every Parse in this request
        tail: list[_Statement] = []  # Parses after the last Execute: their Executes may have been cut off
        last_bound: _Statement | None = None
        for msg in msgs:
            kind = msg.kind
            if kind in _QUERY_KINDS:
                queries = True
            if kind == "E":
                # Drivers Bind then Execute: an Execute cut before its portal name runs the portal bound last.
                ops.append(self._lookup(self._portals, msg.name) if msg.name is not None else last_bound)
                tail.clear()
            elif kind == "B":
                st = last_bound = self._lookup(self._statements, msg.statement)
                if msg.name is not None:
                    if st is not None:
                        self._remember(self._portals, msg.name, st)
                    else:
                        self._portals.pop(msg.name, None)  # now made from a statement we never saw
            elif kind == "P":
                st = self._statement(msg.query, msg.truncated, msg.name)
                parsed.append(st)
                tail.append(st)
                if msg.name is not None and msg.query is not None:
                    self._remember(self._statements, msg.name, st)
            elif kind == "Q":
                ops.append(self._statement(msg.query, msg.truncated))
                tail.clear()
            elif kind == "C":
                self._close(msg)

        truncated = msgs[-1].truncated
        # A hint on a record holding no query step (a lone Sync, a password) is a kernel miscount.
        hint = count_hint if queries and count_hint > 0 else 0
        if hint > len(ops):
            truncated = True  # the kernel counted Executes the capture does not hold
        if truncated:
            ops.extend(tail)
        size = max(len(ops), hint)
        answer = parse_backend(resp)
        if size == 0:
            # Prepare-only (Parse/Describe/Sync), lone Sync, password, Terminate: no operation ran, unless
            # the Parse itself failed, which the application sees as the query failing.
            if not (answer.has_error and parsed):
                return None
            ops = list(parsed)
            size = len(ops)

        call = DbCall(system=POSTGRESQL, namespace=self.namespace, truncated=truncated)
        if answer.has_error:
            call.status_code = answer.error_code
            call.error_message = answer.error_message
        if any(st is not None and st.partial for st in ops):
            call.truncated = True
        if size == 1:
            st = ops[0] if ops else None
            if st is not None:
                call.operation, call.collection, call.query_text = st.operation, st.collection, st.query_text
            return call
        call.batch_size = size
        self._describe_batch(call, ops, size)
        return call

    @staticmethod
    def _describe_batch(call: DbCall, ops: list[_Statement | None], size: int) -> None:
        names = [st.operation if st is not None else None for st in ops]
        if names and len(names) < size:
            # The capture lost the last Executes; executemany repeats one statement, so assume the cut-off ones
            # repeat the last one seen (the call is marked truncated). One more element is enough to say so.
            names.append(names[-1])
        call.operation = sql.batch_operation(names)
        known = [st for st in ops if st is not None]
        if not known:
            return
        complete = len(known) == len(ops)
        collections = {st.collection for st in known}
        if complete and len(collections) == 1:
            call.collection = known[0].collection
        texts = [st.query_text for st in known if st.query_text]
        # Semconv: one text when every operation has the same text, else all texts joined with "; ".
        if complete and texts and len(texts) == len(known) and len(set(texts)) == 1:
            call.query_text = texts[0]
            return
        kept: list[str] = []
        total = 0
        for text in texts:
            total += len(text) + (2 if kept else 0)
            if kept and total > _MAX_BATCH_TEXT:
                break
            kept.append(text)
        call.query_text = "; ".join(kept) if kept else None
