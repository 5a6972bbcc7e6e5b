"""MySQL / MariaDB client/server protocol (client side) turned into ``DbCall`` records.

Each kernel record holds the first bytes the client wrote for one request (``req``, at most 512) and the first
bytes the server answered (``resp``, at most 256); either may stop at any byte. Every packet is ``int<3>``
payload length, ``int<1>`` sequence id, payload. Connections are often older than the tracer, so the startup
handshake (which carries the capability flags) is usually missing: everything here works without it.

Prepared statements: COM_STMT_PREPARE is reported as its own call with operation ``PREPARE`` (collection and
sanitized text from its SQL). It is a real server round trip that can be slow and can fail (syntax errors,
missing tables are reported at prepare time), so dropping it would hide latency and errors; naming it after the
SQL keyword instead would count one SELECT twice. MySQL's own statement instruments call it "Prepare" too.
COM_STMT_EXECUTE takes the operation, collection and text of the remembered statement; an execute whose prepare
was never seen is reported as operation ``EXECUTE``. Other protocol commands (ping, init db, reset ...) use the
command's name without ``COM_``, e.g. ``PING``, ``INIT_DB``. Commands pipelined in one write (COM_QUERY /
COM_STMT_EXECUTE) form one batch call; executes the kernel counted but the capture lost are not guessed, so
such a batch is named plain ``BATCH``. Bound values are never read, and ERR texts that echo row data or query
fragments (duplicate entry, parse error near '...', incorrect value) have the quoted value replaced by ``?``.

Deliberately not handled: the compressed protocol (a session that negotiated it reports nothing), the pre-4.1
HandshakeResponse320, responses after the first packet of a pipelined request, row data, and the batch size of
MariaDB's COM_STMT_BULK_EXECUTE (its rows cannot be counted without the parameter types).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from otelbpf.protocols import db, sql

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB 10.2+

# MariaDB 10.2+: an execute with this id runs the statement prepared just before it (pipelined prepare+execute).
LAST_PREPARED = 0xFFFFFFFF

_KINDS: dict[int, str] = {
    COM_QUIT: "quit",
    COM_INIT_DB: "init_db",
    COM_QUERY: "query",
    COM_FIELD_LIST: "field_list",
    COM_STATISTICS: "statistics",
    COM_PROCESS_KILL: "process_kill",
    COM_DEBUG: "debug",
    COM_PING: "ping",
    COM_CHANGE_USER: "change_user",
    COM_STMT_PREPARE: "stmt_prepare",
    COM_STMT_EXECUTE: "stmt_execute",
    COM_STMT_SEND_LONG_DATA: "stmt_send_long_data",
    COM_STMT_CLOSE: "stmt_close",
    COM_STMT_RESET: "stmt_reset",
    COM_SET_OPTION: "set_option",
    COM_STMT_FETCH: "stmt_fetch",
    COM_RESET_CONNECTION: "reset_connection",
    COM_STMT_BULK_EXECUTE: "stmt_bulk_execute",
}
# Payload sizes fixed by the spec: checking them keeps 5 random bytes from passing as a PING.
_FIXED_PAYLOAD: dict[int, int] = {
    COM_QUIT: 1,
    COM_PING: 1,
    COM_RESET_CONNECTION: 1,
    COM_STATISTICS: 1,
    COM_DEBUG: 1,
    COM_STMT_CLOSE: 5,
    COM_STMT_RESET: 5,
    COM_PROCESS_KILL: 5,
    COM_SET_OPTION: 3,
    COM_STMT_FETCH: 9,
}
_MIN_PAYLOAD: dict[int, int] = {
    COM_STMT_EXECUTE: 10,  # id<4> flags<1> iterations<4>
    COM_STMT_SEND_LONG_DATA: 7,
    COM_STMT_BULK_EXECUTE: 7,
    COM_CHANGE_USER: 2,
    COM_FIELD_LIST: 2,
}
_STMT_ID_COMMANDS = frozenset(
    {COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH, COM_STMT_BULK_EXECUTE}
)
# Commands the server never answers: the kernel pairs them with the next command's response.
_NO_RESPONSE = frozenset({COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA})
_OPERATIONS: dict[int, str] = {
    COM_INIT_DB: "INIT_DB",
    COM_FIELD_LIST: "FIELD_LIST",
    COM_STATISTICS: "STATISTICS",
    COM_PROCESS_KILL: "PROCESS_KILL",
    COM_DEBUG: "DEBUG",
    COM_PING: "PING",
    COM_CHANGE_USER: "CHANGE_USER",
    COM_STMT_RESET: "STMT_RESET",
    COM_SET_OPTION: "SET_OPTION",
    COM_STMT_FETCH: "STMT_FETCH",
    COM_RESET_CONNECTION: "RESET_CONNECTION",
}

CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x200000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HH = struct.Struct("<HH")
_LENENC_SIZES = {0xFC: 2, 0xFD: 3, 0xFE: 8}
# A pipelined capture holds at most 512 // 5 packets; the cap is a second bound independent of the capture size.
_MAX_COMMANDS = 128
_MAX_VERSION_LEN = 100
# libmysqlclient sends at most 32 query attributes; a larger count means the bytes are query text.
_MAX_QUERY_ATTRIBUTES = 32
# Binary protocol value sizes by field type, for skipping query attribute values (never read them).
_FIXED_VALUE_SIZES = {0x01: 1, 0x02: 2, 0x0D: 2, 0x03: 4, 0x09: 4, 0x04: 4, 0x05: 8, 0x08: 8, 0x06: 0}
_TEMPORAL_TYPES = frozenset({0x07, 0x0A, 0x0B, 0x0C, 0x11, 0x12, 0x13})

# Errors whose text echoes row data or query fragments (Duplicate entry 'x', near '...', Incorrect value 'x').
# The first quoted part is the value; the marker finds where it ends even when the value holds quotes.
# None: the value runs to the last quote.
_VALUE_ERRORS: dict[int, str | None] = {
    1062: "' for key",  # ER_DUP_ENTRY
    1586: "' for key",  # ER_DUP_ENTRY_WITH_KEY_NAME
    1064: "' at line",  # ER_PARSE_ERROR
    1366: "' for column",  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    1411: "' for function",  # ER_WRONG_VALUE_FOR_TYPE
    1292: None,  # ER_TRUNCATED_WRONG_VALUE
    1300: None,  # ER_INVALID_CHARACTER_STRING
    1367: None,  # ER_ILLEGAL_VALUE_FOR_TYPE
    1525: None,  # ER_WRONG_VALUE
    1690: None,  # ER_DATA_OUT_OF_RANGE (quotes the expression, literals included)
}


@dataclass(slots=True)
class MySqlCommand:
    """One client packet: a command (seq 0) or a connection-phase HandshakeResponse41 / SSLRequest."""

    kind: str  # "query", "stmt_prepare", "stmt_execute", ... or "handshake_response", "ssl_request"
    command: int  # the command byte; -1 for connection-phase packets
    text: str | None = None  # SQL of query / prepare, table of field_list (as captured, maybe cut)
    stmt_id: int | None = None  # statement id of execute / close / reset / fetch / send_long_data / bulk execute
    schema: str | None = None  # database named by init_db, change_user or the handshake response
    capabilities: int = 0  # client capability flags (handshake response / SSLRequest only)
    truncated: bool = False  # the capture ended before the packet did
    end: int = 0  # offset just past this packet (may exceed the capture when truncated)


@dataclass(slots=True)
class MySqlResponse:
    """The first server packet of a response; ``None`` fields are absent or unknown."""

    # ok, err, eof, resultset, prepare_ok, greeting, auth_switch, local_infile or unknown
    kind: str
    error_code: int | None = None
    sqlstate: str | None = None
    message: str = ""  # ERR text with echoed values replaced by ?
    stmt_id: int | None = None  # prepare_ok
    column_count: int | None = None  # resultset, prepare_ok
    param_count: int | None = None  # prepare_ok
    affected_rows: int | None = None  # ok
    server_version: str | None = None  # greeting; MariaDB's "5.5.5-" replication prefix removed


@dataclass(slots=True)
class _Statement:
    """What one SQL text contributes to a call; prepared statements keep this instead of their raw text."""

    operation: str | None
    collection: str | None
    query_text: str | None
    truncated: bool


def _lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """Return (value, next position); value -1 when the integer is NULL, invalid or cut off."""
    if pos >= len(buf):
        return -1, pos
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = _LENENC_SIZES.get(first)
    if size is None or pos + 1 + size > len(buf):
        return -1, pos
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _decode(raw: bytes, truncated: bool) -> str:
    """Decode as UTF-8; a capture cut inside a multi-byte character loses that character, not the text."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
        return text.rstrip("\ufffd") if truncated else text


def _header(buf: bytes, offset: int) -> tuple[int, int] | None:
    """Return (payload length, sequence id) of the packet at ``offset``; None when the header is cut off."""
    if offset < 0 or offset + 4 > len(buf):
        return None
    return buf[offset] | buf[offset + 1] << 8 | buf[offset + 2] << 16, buf[offset + 3]


def _command_header_ok(buf: bytes, offset: int) -> bool:
    """The packet at ``offset`` has seq 0, a known command byte and a length that command allows."""
    head = _header(buf, offset)
    if head is None or offset + 4 >= len(buf):
        return False
    length, seq = head
    cmd = buf[offset + 4]
    if seq != 0 or cmd not in _KINDS or length == 0:
        return False
    fixed = _FIXED_PAYLOAD.get(cmd)
    if fixed is not None:
        return length == fixed
    return length >= _MIN_PAYLOAD.get(cmd, 1)


def looks_like_command(req: bytes) -> bool:
    """Cheap check that ``req`` starts with a plausible command packet (seq 0, known command, sane length)."""
    if not _command_header_ok(req, 0):
        return False
    end = 4 + (req[0] | req[1] << 8 | req[2] << 16)
    # A packet shorter than the capture must be followed by another command (a close pipelined before a query).
    return end >= len(req) or _command_header_ok(req, end)


def _skip_query_attributes(payload: bytes) -> int:
    """Return where the query text starts in a COM_QUERY payload; -1 when the attribute block is malformed."""
    # With CLIENT_QUERY_ATTRIBUTES (MySQL 8.0.23+) the text follows parameter_count and parameter_set_count
    # (always 1). The handshake that says so is usually unseen, but SQL text never starts with a byte <= 32
    # followed by 0x01, so the two bytes identify the block on their own.
    if len(payload) < 3 or payload[2] != 1 or payload[1] > _MAX_QUERY_ATTRIBUTES:
        return 1
    count = payload[1]
    pos = 3
    if count == 0:
        return pos
    n = len(payload)
    bitmap = payload[pos : pos + (count + 7) // 8]
    pos += (count + 7) // 8
    if pos >= n or payload[pos] != 1:  # new_params_bind_flag is always 1
        return -1
    pos += 1
    types: list[int] = []
    for _ in range(count):
        if pos + 2 > n:
            return -1
        types.append(payload[pos])
        name_len, pos = _lenenc(payload, pos + 2)
        if name_len < 0:
            return -1
        pos += name_len
    for i, field_type in enumerate(types):
        if bitmap[i >> 3] & (1 << (i & 7)):
            continue  # NULL values take no bytes
        size = _FIXED_VALUE_SIZES.get(field_type)
        if size is not None:
            pos += size
        elif field_type in _TEMPORAL_TYPES:
            if pos >= n:
                return -1
            pos += 1 + payload[pos]
        else:
            size, pos = _lenenc(payload, pos)
            if size < 0:
                return -1
            pos += size
        if pos > n:
            return -1
    return pos


def _parse_connection_packet(payload: bytes, truncated: bool, end: int) -> MySqlCommand | None:
    """Parse a HandshakeResponse41 or SSLRequest payload; None for anything else."""
    if len(payload) < 32:
        return None
    caps = _U32.unpack_from(payload, 0)[0]
    # MariaDB puts extended capabilities in the last 4 of the 23 filler bytes; the first 19 are always zero.
    if not caps & CLIENT_PROTOCOL_41 or payload[9:28].count(0) != 19:
        return None
    if len(payload) == 32 and not truncated:
        if not caps & CLIENT_SSL:
            return None
        return MySqlCommand("ssl_request", -1, capabilities=caps, end=end)
    cmd = MySqlCommand("handshake_response", -1, capabilities=caps, truncated=truncated, end=end)
    nul = payload.find(b"\0", 32)
    if nul < 0 or not caps & CLIENT_CONNECT_WITH_DB:
        return cmd
    pos = nul + 1
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size, pos = _lenenc(payload, pos)
        if size < 0:
            return cmd
        pos += size
    elif caps & CLIENT_SECURE_CONNECTION:
        if pos >= len(payload):
            return cmd
        pos += 1 + payload[pos]
    else:
        auth_end = payload.find(b"\0", pos)
        if auth_end < 0:
            return cmd
        pos = auth_end + 1
    db_end = payload.find(b"\0", pos)
    if db_end > pos:
        cmd.schema = _decode(payload[pos:db_end], False)
    return cmd


def _parse_change_user_schema(payload: bytes) -> str | None:
    """Return the schema of a COM_CHANGE_USER payload (assumes CLIENT_SECURE_CONNECTION, as every 4.1+ client)."""
    nul = payload.find(b"\0", 1)
    if nul < 0 or nul + 1 >= len(payload):
        return None
    pos = nul + 2 + payload[nul + 1]
    db_end = payload.find(b"\0", pos)
    if pos > len(payload) or db_end <= pos:
        return None
    return _decode(payload[pos:db_end], False)


def parse_command(req: bytes, offset: int = 0) -> MySqlCommand | None:
    """Parse the client packet at ``offset`` (a command or a connection-phase packet); None if it is neither."""
    head = _header(req, offset)
    if head is None or offset + 4 >= len(req):
        return None
    length, seq = head
    end = offset + 4 + length
    truncated = end > len(req)
    payload = req[offset + 4 : end]
    if seq in (1, 2):
        # HandshakeResponse41 / SSLRequest are seq 1; after TLS starts the handshake response is seq 2.
        return _parse_connection_packet(payload, truncated, end)
    if seq != 0 or not _command_header_ok(req, offset):
        return None
    code = payload[0]
    cmd = MySqlCommand(_KINDS[code], code, truncated=truncated, end=end)
    if code in _STMT_ID_COMMANDS:
        if len(payload) >= 5:
            cmd.stmt_id = _U32.unpack_from(payload, 1)[0]
    elif code == COM_QUERY:
        start = _skip_query_attributes(payload)
        if start >= 0:
            cmd.text = _decode(payload[start:], truncated)
    elif code == COM_STMT_PREPARE:
        cmd.text = _decode(payload[1:], truncated)
    elif code == COM_INIT_DB:
        cmd.schema = _decode(payload[1:], truncated) or None
    elif code == COM_FIELD_LIST:
        nul = payload.find(b"\0", 1)
        cmd.text = _decode(payload[1:nul] if nul > 0 else payload[1:], truncated) or None
    elif code == COM_CHANGE_USER:
        cmd.schema = _parse_change_user_schema(payload)
    return cmd


def _redact(code: int, message: str) -> str:
    """Replace the row value or query fragment some error texts quote with '?'."""
    if code not in _VALUE_ERRORS:
        return message
    start = message.find("'")
    if start < 0:
        return message
    marker = _VALUE_ERRORS[code]
    stop = message.rfind(marker, start + 1) if marker else message.rfind("'", start + 1)
    if stop < 0:
        # The capture cut the message (or the server speaks another language): drop everything after the quote.
        return message[:start] + "'?'"
    return message[:start] + "'?" + message[stop:]


def _parse_err(payload: bytes, truncated: bool) -> MySqlResponse:
    """Parse an ERR packet payload (0xff already checked)."""
    if len(payload) < 3:
        return MySqlResponse("err")
    code = _U16.unpack_from(payload, 1)[0]
    if code == 0xFFFF:
        return MySqlResponse("unknown")  # MariaDB progress report: the command is still running
    if payload[3:4] == b"#" and len(payload) >= 9:
        sqlstate: str | None = payload[4:9].decode("ascii", "replace")
        raw = payload[9:]
    else:
        # Before CLIENT_PROTOCOL_41 is agreed (errors during the handshake) there is no SQLSTATE.
        sqlstate = None
        raw = payload[3:]
    message = _redact(code, _decode(raw, truncated))
    return MySqlResponse("err", error_code=code, sqlstate=sqlstate, message=message)


def _parse_greeting(payload: bytes) -> MySqlResponse:
    """Parse Protocol::HandshakeV10 (0x0a already checked); unknown when the version is not plausible text."""
    nul = payload.find(b"\0", 1, _MAX_VERSION_LEN + 2)
    if nul < 2:
        return MySqlResponse("unknown")
    raw = payload[1:nul]
    if not raw.isascii() or not raw.decode("ascii").isprintable():
        return MySqlResponse("unknown")
    version = raw.decode("ascii")
    if version.startswith("5.5.5-") and "mariadb" in version.lower():
        version = version[6:]
    return MySqlResponse("greeting", server_version=version)


def _followed_by_seq2(resp: bytes, length: int) -> bool:
    """A second packet with seq 2 follows: the parameter or column definitions after a PREPARE_OK."""
    head = _header(resp, 4 + length)
    return head is not None and head[1] == 2


def parse_response(resp: bytes, command: int | None = None) -> MySqlResponse:
    """Classify the first server packet; ``command`` (the request's command byte) settles OK vs PREPARE_OK."""
    head = _header(resp, 0)
    if head is None or len(resp) < 5 or head[0] == 0:
        return MySqlResponse("unknown")
    length, seq = head
    payload = resp[4 : 4 + length]
    truncated = 4 + length > len(resp)
    first = payload[0]
    if first == 0xFF:
        return _parse_err(payload, truncated)
    if first == 0x0A and seq == 0:
        return _parse_greeting(payload)
    if first == 0x00:
        prepare_ok = (
            command == COM_STMT_PREPARE
            if command is not None
            # Unhinted, an OK packet can also be 12 bytes long; only the definitions that follow a PREPARE_OK
            # (seq 2) tell them apart.
            else length in (12, 13) and len(payload) > 9 and payload[9] == 0 and _followed_by_seq2(resp, length)
        )
        if prepare_ok:
            if len(payload) < 9:
                return MySqlResponse("unknown")
            columns, params = _HH.unpack_from(payload, 5)
            stmt_id = _U32.unpack_from(payload, 1)[0]
            return MySqlResponse("prepare_ok", stmt_id=stmt_id, column_count=columns, param_count=params)
        if length >= 5:
            affected, _ = _lenenc(payload, 1)
            return MySqlResponse("ok", affected_rows=affected if affected >= 0 else None)
    if first == 0xFE:
        # An EOF is shorter than 9 bytes; a longer 0xfe first packet is an AuthSwitchRequest.
        return MySqlResponse("eof" if length < 9 else "auth_switch")
    if first == 0xFB:
        return MySqlResponse("local_infile")
    # A result set starts with a packet holding only the column count (lenenc), optionally preceded by the
    # metadata_follows flag (0 or 1) under CLIENT_OPTIONAL_RESULTSET_METADATA.
    count, pos = _lenenc(payload, 0)
    if count > 0 and pos == length:
        return MySqlResponse("resultset", column_count=count)
    if first in (0, 1):
        count, pos = _lenenc(payload, 1)
        if count > 0 and pos == length:
            return MySqlResponse("resultset", column_count=count)
    return MySqlResponse("unknown")


def _use_schema(text: str) -> str | None:
    """Return the schema of a ``USE db`` statement; None for any other text."""
    stripped = text.strip()
    if len(stripped) < 5 or stripped[:3].upper() != "USE" or not (stripped[3].isspace() or stripped[3] == "`"):
        return None
    name = stripped[3:].strip().rstrip(";").strip()
    if len(name) > 1 and name[0] == name[-1] == "`":
        name = name[1:-1]
    return name or None


class MySqlSession:
    """Per-connection state: remembered prepared statements, current schema and server flavour."""

    def __init__(self, max_statements: int = 256, capture_raw: bool = False, system: str = db.MYSQL) -> None:
        """Start with no statements; ``system`` holds until a greeting says MariaDB or MySQL."""
        self.max_statements = max(0, max_statements)
        self.capture_raw = capture_raw
        self.system = system
        self.namespace: str | None = None
        self.server_version: str | None = None
        self.compressed = False
        self.evicted = 0  # statements dropped by the LRU bound
        self.errors = 0  # records a parser bug turned into None (should stay 0)
        self._statements: OrderedDict[int, _Statement] = OrderedDict()
        self._last_prepared: int | None = None

    def __len__(self) -> int:
        """Number of remembered prepared statements."""
        return len(self._statements)

    def describe(self, req: bytes, resp: bytes, count_hint: int = 0) -> db.DbCall | None:
        """Turn one record into a DbCall; None for non-operations (greeting, handshake, quit, close)."""
        try:
            return self._describe(req, resp, count_hint)
        except Exception:
            # Garbage captures must cost one span, never the collector.
            self.errors += 1
            return None

    # --- state -------------------------------------------------------------------------------------------

    def _statement(self, text: str | None, truncated: bool) -> _Statement:
        if not text:
            return _Statement(None, None, None, truncated)
        operation, collection = sql.summarize(text)
        query_text = text if self.capture_raw else sql.sanitize(text, "mysql")
        return _Statement(operation, collection, query_text or None, truncated)

    def _remember(self, stmt_id: int, stmt: _Statement) -> None:
        self._last_prepared = stmt_id
        if self.max_statements == 0:
            return
        self._statements[stmt_id] = stmt
        self._statements.move_to_end(stmt_id)
        while len(self._statements) > self.max_statements:
            self._statements.popitem(last=False)
            self.evicted += 1

    def _lookup(self, stmt_id: int | None) -> _Statement | None:
        if stmt_id == LAST_PREPARED:
            stmt_id = self._last_prepared
        if stmt_id is None:
            return None
        stmt = self._statements.get(stmt_id)
        if stmt is not None:
            self._statements.move_to_end(stmt_id)
        return stmt

    def _forget(self, stmt_id: int | None) -> None:
        if stmt_id is not None:
            self._statements.pop(stmt_id, None)

    def _reset(self) -> None:
        self._statements.clear()
        self._last_prepared = None

    def _learn_greeting(self, resp: bytes) -> None:
        greeting = parse_response(resp)
        if greeting.kind == "greeting" and greeting.server_version:
            self.server_version = greeting.server_version
            self.system = db.MARIADB if "mariadb" in greeting.server_version.lower() else db.MYSQL

    # --- records -----------------------------------------------------------------------------------------

    def _describe(self, req: bytes, resp: bytes, count_hint: int) -> db.DbCall | None:
        if len(resp) > 4 and resp[3] == 0 and resp[4] == 0x0A:
            self._learn_greeting(resp)
        first = parse_command(req)
        if first is None:
            return None
        if first.command < 0:
            if first.kind == "handshake_response":
                # A new session: nothing prepared yet, the database is the one it names (or none).
                self._reset()
                self.namespace = first.schema
                self.compressed = bool(first.capabilities & CLIENT_COMPRESS)
            return None
        if self.compressed:
            return None
        cmds = [first]
        pos = first.end
        while pos < len(req) and len(cmds) < _MAX_COMMANDS:
            nxt = parse_command(req, pos)
            if nxt is None or nxt.command < 0:
                break
            cmds.append(nxt)
            pos = nxt.end
        # Packets the kernel counted but the capture did not hold.
        unseen = max(0, count_hint - len(cmds))

        i = 0
        while i < len(cmds) and cmds[i].command in _NO_RESPONSE:
            if cmds[i].command == COM_STMT_CLOSE:
                self._forget(cmds[i].stmt_id)
            i += 1
        if i == len(cmds):
            return None
        main = cmds[i]
        rest = cmds[i + 1 :]
        code = main.command
        if code == COM_QUIT:
            self._reset()
            return None
        response = parse_response(resp, code)
        failed = response.kind == "err"

        if code == COM_STMT_PREPARE:
            prepared = self._statement(main.text, main.truncated)
            if response.kind == "prepare_ok" and response.stmt_id is not None:
                self._remember(response.stmt_id, prepared)
            if any(c.command in (COM_QUERY, COM_STMT_EXECUTE) for c in rest):
                # MariaDB pipelining: PREPARE + EXECUTE(-1) in one write is one execution of that statement.
                return self._executions(rest, response, unseen, prepared)
            call = self._call(response, "PREPARE", prepared)
        elif code in (COM_QUERY, COM_STMT_EXECUTE):
            call = self._executions(cmds[i:], response, unseen, None)
            if code == COM_QUERY and not failed and main.text:
                schema = _use_schema(main.text)
                if schema is not None:
                    self.namespace = schema
        elif code == COM_STMT_BULK_EXECUTE:
            stmt = self._lookup(main.stmt_id)
            operation = sql.batch_operation([stmt.operation, stmt.operation] if stmt else [None, None])
            call = self._call(response, operation, stmt)
        elif code in (COM_STMT_RESET, COM_STMT_FETCH):
            call = self._call(response, _OPERATIONS[code], self._lookup(main.stmt_id))
        elif code == COM_FIELD_LIST:
            call = self._call(response, "FIELD_LIST", None)
            call.collection = main.text
        elif code in (COM_INIT_DB, COM_CHANGE_USER):
            call = self._call(response, _OPERATIONS[code], None)
            call.namespace = main.schema
            if not failed:
                if code == COM_CHANGE_USER:
                    self._reset()  # the server drops the session's prepared statements
                self.namespace = main.schema
        else:
            call = self._call(response, _OPERATIONS.get(code), None)
            if code == COM_RESET_CONNECTION and not failed:
                self._reset()
        call.truncated = call.truncated or main.truncated
        return call

    def _call(self, response: MySqlResponse, operation: str | None, stmt: _Statement | None) -> db.DbCall:
        call = db.DbCall(system=self.system, operation=operation, namespace=self.namespace)
        if stmt is not None:
            call.collection = stmt.collection
            call.query_text = stmt.query_text
            call.truncated = stmt.truncated
        if response.kind == "err" and response.error_code is not None:
            call.status_code = str(response.error_code)
            call.error_message = response.message
        return call

    def _executions(
        self, cmds: list[MySqlCommand], response: MySqlResponse, unseen: int, pipelined: _Statement | None
    ) -> db.DbCall:
        """One call for the queries / executes in ``cmds`` (a batch when there are two or more)."""
        stmts: list[_Statement] = []
        for c in cmds:
            if c.command == COM_QUERY:
                stmts.append(self._statement(c.text, c.truncated))
            elif c.command == COM_STMT_EXECUTE:
                stmt = pipelined if pipelined is not None and c.stmt_id == LAST_PREPARED else None
                stmt = stmt or self._lookup(c.stmt_id) or _Statement("EXECUTE", None, None, False)
                stmts.append(stmt)
            elif c.command == COM_STMT_CLOSE:
                self._forget(c.stmt_id)
            elif c.command != COM_STMT_SEND_LONG_DATA:
                break  # anything else starts a different kind of request; never seen in practice
        size = len(stmts) + unseen
        if size < 2:
            return self._call(response, stmts[0].operation if stmts else None, stmts[0] if stmts else None)
        # Executes the kernel counted but the capture lost are not guessed: their operation and table are
        # unknown, so the batch is a plain "BATCH" without a collection (one None is enough to say so).
        operations = [s.operation for s in stmts]
        if unseen:
            operations.append(None)
        call = self._call(response, sql.batch_operation(operations), None)
        collections = {s.collection for s in stmts}
        call.collection = collections.pop() if len(collections) == 1 and not unseen else None
        texts = [s.query_text for s in stmts if s.query_text]
        # Semconv: one text when every operation shares it, otherwise all of them joined with "; ".
        call.query_text = (texts[0] if len(set(texts)) == 1 else "; ".join(texts)) if texts else None
        call.batch_size = size
        call.truncated = unseen > 0 or any(s.truncated for s in stmts)
        return call
