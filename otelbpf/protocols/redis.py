"""Redis (RESP2/RESP3) client calls parsed from raw kernel captures.

The kernel hands over one record per finished request: the first <=512 bytes the client wrote (one command,
a pipeline, or a MULTI/EXEC block) and the first <=256 bytes the server answered. Either side may be cut at
any byte and may be garbage from a misdetected connection, so nothing here raises on any input, and every
loop is bounded by the capture size (each RESP element takes at least three bytes).

Values never leave this module: a command is summarised as its name, the shape of its key and one "?" per
further argument, in the Redis CLI syntax the semantic conventions ask for (``HMSET myhash ? ? ? ?``).

Conventions followed (OTel database semconv, Redis page):
- db.operation.name is the command name, uppercased so that ``get`` and ``GET`` are one operation. Commands
  that are containers for subcommands (CLIENT, CONFIG, XINFO, ...) are named with both words, space
  separated as in Redis' own documentation: ``CLIENT SETNAME``.
- Several commands in one write are a batch. The Redis page overrides the generic ``BATCH`` prefix: a block
  that opens with MULTI is ``MULTI <cmd>`` (or ``MULTI``), any other pipeline ``PIPELINE <cmd>`` (or
  ``PIPELINE``); the command is named only when every operation is known to be that command. A transaction's
  batch size counts the queued commands, not the MULTI/EXEC wrappers.
- db.namespace is the database index, known only once a SELECT (or RESET, which means 0) was seen on the
  connection; it is the index in force after the record's commands.
- db.response.status_code is the prefix of the first error reply (``-`` or ``!``, also inside an EXEC
  array): ``WRONGTYPE``, ``MOVED``, ``NOAUTH``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from otelbpf.protocols.db import REDIS, DbCall

# parse positions are >= 0; these two say why parsing stopped instead.
_CUT = -1  # the capture ended inside the item
_BAD = -2  # the bytes are not RESP

# A length or count line is at most 20 digits and a sign; a longer line is not RESP.
_MAX_INT_LINE = 24
# Redis refuses bulk strings over 512 MB; a larger declared length marks garbage, not a big value.
_MAX_BULK = 512 * 1024 * 1024
_MAX_NAME = 40  # longest command names (module ones like CMS.INITBYPROB) are well under this
_MAX_DEPTH = 8  # reply nesting deeper than this is treated as garbage: bounds the recursion
_MAX_KEY_IN = 256  # key bytes looked at by key_shape
_MAX_KEY_OUT = 128  # characters of a key that may go out
_MAX_ERROR_MESSAGE = 256
_MAX_QUERY_TEXT = 1024
_MAX_PLACEHOLDERS = 64  # "?" written per command; MSET with 10,000 arguments needs no 20 KB of them

_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CTL_INLINE = bytes(range(0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"  # tab may separate inline arguments
# Every byte outside printable ASCII becomes "?", in one C-level pass, so nothing unprintable goes out.
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x3F for b in range(256))

# Commands whose argument at this index (argv[0] is the name) is a key; others expose no argument at all,
# so an unknown command can never leak a value through its first argument. Channels count as keys.
_KEY_AT_1 = frozenset(
    """
    GET SET SETNX SETEX PSETEX GETSET GETDEL GETEX APPEND STRLEN INCR INCRBY INCRBYFLOAT DECR DECRBY GETRANGE
    SETRANGE SUBSTR MGET MSET MSETNX LCS GETBIT SETBIT BITCOUNT BITPOS BITFIELD BITFIELD_RO
    DEL UNLINK EXISTS EXPIRE PEXPIRE EXPIREAT PEXPIREAT EXPIRETIME PEXPIRETIME TTL PTTL PERSIST TYPE RENAME
    RENAMENX DUMP RESTORE TOUCH MOVE COPY SORT SORT_RO WATCH
    HGET HSET HSETNX HMSET HMGET HDEL HEXISTS HGETALL HKEYS HVALS HLEN HINCRBY HINCRBYFLOAT HSTRLEN HSCAN
    HRANDFIELD HEXPIRE HPEXPIRE HEXPIREAT HPEXPIREAT HTTL HPTTL HPERSIST HEXPIRETIME HPEXPIRETIME HGETDEL
    HGETEX HSETEX
    LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LRANGE LINDEX LSET LINSERT LREM LTRIM LPOS LMOVE RPOPLPUSH BLPOP
    BRPOP BLMOVE BRPOPLPUSH
    SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SMOVE SINTER SINTERSTORE SUNION SUNIONSTORE
    SDIFF SDIFFSTORE SSCAN
    ZADD ZREM ZSCORE ZMSCORE ZINCRBY ZCARD ZCOUNT ZLEXCOUNT ZRANGE ZRANGESTORE ZRANGEBYSCORE ZRANGEBYLEX
    ZREVRANGE ZREVRANGEBYSCORE ZREVRANGEBYLEX ZRANK ZREVRANK ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREMRANGEBYLEX
    ZPOPMIN ZPOPMAX BZPOPMIN BZPOPMAX ZRANDMEMBER ZSCAN ZUNIONSTORE ZINTERSTORE ZDIFFSTORE
    PFADD PFCOUNT PFMERGE
    GEOADD GEODIST GEOHASH GEOPOS GEORADIUS GEORADIUS_RO GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO GEOSEARCH
    GEOSEARCHSTORE
    XADD XLEN XRANGE XREVRANGE XDEL XTRIM XACK XPENDING XCLAIM XAUTOCLAIM XSETID
    PUBLISH SPUBLISH SUBSCRIBE SSUBSCRIBE PSUBSCRIBE KEYS
    SELECT
    """.split()
)
# (key index, numkeys index): the key is there only when numkeys is not 0.
_KEY_AFTER_NUMKEYS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("SINTERCARD", "ZINTER", "ZUNION", "ZDIFF", "ZINTERCARD", "LMPOP", "ZMPOP"), (2, 1)),
    **dict.fromkeys(("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "BLMPOP", "BZMPOP"), (3, 2)),
}
# Commands named together with their subcommand, and which subcommands take a key right after it.
_CONTAINERS = frozenset(
    "ACL CLIENT CLUSTER COMMAND CONFIG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB SCRIPT SLOWLOG XGROUP XINFO".split()
)
_CONTAINER_KEYED = frozenset(
    """
    OBJECT:ENCODING OBJECT:FREQ OBJECT:IDLETIME OBJECT:REFCOUNT MEMORY:USAGE XINFO:STREAM XINFO:GROUPS
    XINFO:CONSUMERS XGROUP:CREATE XGROUP:SETID XGROUP:DESTROY XGROUP:CREATECONSUMER XGROUP:DELCONSUMER
    """.split()
)
_MAX_KEY_AT = 3  # no argument past argv[3] is ever read
_TX_WRAPPERS = frozenset(("MULTI", "EXEC", "DISCARD"))
# Inline commands come from people and health checks (telnet, nc, load balancer probes). Only known names are
# taken, since any line of text would otherwise read as a command.
_INLINE_NAMES = frozenset(
    _KEY_AT_1
    | _CONTAINERS
    | frozenset(_KEY_AFTER_NUMKEYS)
    | frozenset(
        """
        PING ECHO AUTH HELLO INFO QUIT RESET DBSIZE FLUSHDB FLUSHALL MULTI EXEC DISCARD UNWATCH TIME LASTSAVE
        SAVE BGSAVE BGREWRITEAOF SHUTDOWN ROLE SCAN RANDOMKEY WAIT SWAPDB MONITOR SYNC PSYNC REPLICAOF SLAVEOF
        FAILOVER READONLY READWRITE ASKING UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE XREAD XREADGROUP MIGRATE DEBUG
        """.split()
    )
)

_REPLY_KINDS: dict[int, str] = {
    0x2B: "simple",  # +
    0x2D: "error",  # -
    0x3A: "integer",  # :
    0x24: "bulk",  # $
    0x2A: "array",  # *
    0x5F: "null",  # _
    0x23: "boolean",  # #
    0x2C: "double",  # ,
    0x28: "bignum",  # (
    0x21: "blob_error",  # !
    0x3D: "verbatim",  # =
    0x25: "map",  # %
    0x7E: "set",  # ~
    0x3E: "push",  # >
    0x7C: "attribute",  # |
}
_LINE_TYPES = frozenset(b"+-:_#,(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>%")
_DOUBLE_CHARS = b"0123456789+-.eEinfaINFA"
# Redis quotes the arguments of an unknown command in its error text; those are client values.
_ARGS_IN_ERROR = ", with args beginning with:"

# Variable parts of a key: UUIDs, hex tokens (8+ characters with a digit, or 16+), and digit runs.
_KEY_VARIABLE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    rb"|(?<![0-9A-Za-z])(?:[0-9a-fA-F]{16,}|(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,})(?![0-9A-Za-z])"
    rb"|[0-9]+"
)
_REPEATED_MARK = re.compile(rb"\?{2,}")


@dataclass(slots=True, frozen=True)
class RedisCommand:
    """One client command: its name, the key it works on (raw bytes; for SELECT the index) and argc."""

    name: str  # uppercased; "CLIENT SETNAME" for subcommands
    key: bytes | None  # None when the command has no key or the capture ended before it
    argc: int  # arguments including the name words, as declared by the RESP array header


@dataclass(slots=True, frozen=True)
class RedisReply:
    """Summary of one top-level reply: its RESP type and the first error found in it, if any."""

    kind: str  # "simple", "error", "integer", "bulk", "array", "null", "map", ... (see _REPLY_KINDS)
    error_prefix: str | None = None  # "ERR", "WRONGTYPE", ...: the reply is, or contains, an error
    error_message: str = ""  # printable, bounded, without the quoted arguments of an unknown command
    complete: bool = True  # False when the capture ended inside the reply or it was malformed


def looks_like_command(req: bytes) -> bool:
    """Cheap check that the bytes open like a RESP array of bulk strings: ``*<digits>\\r\\n$``."""
    if req[:1] != b"*":
        return False
    eol = req.find(b"\r\n", 1, _MAX_INT_LINE)
    return eol > 1 and req[1:eol].isdigit() and req[eol + 2 : eol + 3] == b"$"


def _is_int(s: bytes) -> bool:
    return s.isdigit() or (s[:1] == b"-" and s[1:].isdigit())


def _int_line(data: bytes, start: int) -> tuple[int, int]:
    """Read a signed integer line at start: (value, position after its CRLF, or _CUT/_BAD)."""
    eol = data.find(b"\r\n", start, start + _MAX_INT_LINE)
    if eol < 0:
        tail = data[start : start + _MAX_INT_LINE]
        if len(data) - start >= _MAX_INT_LINE:
            return 0, _BAD
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        return 0, (_CUT if tail in (b"", b"-") or _is_int(tail) else _BAD)
    s = data[start:eol]
    return (int(s), eol + 2) if _is_int(s) else (0, _BAD)


def _token(raw: bytes) -> str | None:
    """Return the uppercased command word, or None if these bytes cannot be one."""
    if not 0 < len(raw) <= _MAX_NAME or raw[0] not in _LETTERS or raw.translate(None, _NAME_CHARS):
        return None
    return raw.decode("ascii").upper()


def _key_spec(name: str, sub: str | None) -> tuple[int, int]:
    """(key index, numkeys index) in argv for this command; 0 means none."""
    if sub is not None:
        return (2, 0) if f"{name}:{sub}" in _CONTAINER_KEYED else (0, 0)
    if name in _KEY_AT_1 or "." in name:  # module commands (JSON.SET, BF.ADD, TS.ADD) take their key first
        return 1, 0
    return _KEY_AFTER_NUMKEYS.get(name, (0, 0))


class _CommandBuilder:
    """Collects argv items as they are found, keeping only the name, subcommand and key bytes."""

    __slots__ = ("name", "sub", "key", "key_at", "numkeys_at", "container")

    def __init__(self) -> None:
        self.name: str | None = None
        self.sub: str | None = None
        self.key: bytes | None = None
        self.key_at = 0
        self.numkeys_at = 0
        self.container = False

    def wants(self, i: int) -> bool:
        """Whether argv[i] must be looked at; every other argument is skipped unread."""
        return i == 0 or (i == 1 and self.container) or (i > 0 and i in (self.key_at, self.numkeys_at))

    def add(self, i: int, raw: bytes) -> bool:
        """Take argv[i]; False when it shows the bytes are not a command."""
        if i == 0:
            self.name = _token(raw)
            if self.name is None:
                return False
            self.container = self.name in _CONTAINERS
            if not self.container:
                self.key_at, self.numkeys_at = _key_spec(self.name, None)
        elif i == 1 and self.container:
            self.sub = _token(raw)
            if self.sub is not None:
                self.key_at, self.numkeys_at = _key_spec(self.name or "", self.sub)
        elif i == self.numkeys_at:
            if not raw.isdigit() or int(raw) == 0:
                self.key_at = 0
        elif i == self.key_at:
            self.key = raw
        return True

    def build(self, argc: int) -> RedisCommand | None:
        """The command seen so far, or None when not even its name was captured."""
        if self.name is None:
            return None
        name = f"{self.name} {self.sub}" if self.sub is not None else self.name
        return RedisCommand(name, self.key, argc)


def _resp_command(data: bytes, pos: int, n: int) -> tuple[RedisCommand | None, int]:
    """Parse the RESP array command at pos ('*'): (command, next position or _CUT/_BAD)."""
    argc, p = _int_line(data, pos + 1)
    if p < 0:
        return None, p
    if argc <= 0:
        return None, p  # Redis skips an empty multibulk; so do we
    cmd = _CommandBuilder()
    find = data.find
    # Each argument costs at least 4 bytes ("$0\r\n"), so this loop ends within n/4 rounds. The common
    # path reads the length line inline: this loop is the parser's hot spot.
    for i in range(argc):
        if p >= n:
            return cmd.build(argc), _CUT
        if data[p] != 0x24:  # '$'
            return None, _BAD
        eol = find(b"\r\n", p + 1, p + _MAX_INT_LINE)
        digits = data[p + 1 : eol]
        if eol < 0 or not digits.isdigit():
            length, q = _int_line(data, p + 1)  # the slow path sorts a cut line from a bad one
            if q == _CUT:
                return cmd.build(argc), _CUT
            return None, _BAD
        end = eol + 2 + int(digits)
        if end + 2 > n:
            # A value cut by the capture: the command is known, its tail is not. A value that is whole
            # (only its CRLF is cut) is still taken: it may be the name or the key.
            if end > n:
                return cmd.build(argc), _CUT
            if data[end:n] not in (b"", b"\r"):
                return None, _BAD
            if i <= _MAX_KEY_AT and cmd.wants(i) and not cmd.add(i, data[eol + 2 : end]):
                return None, _BAD
            return cmd.build(argc), _CUT
        if data[end] != 0x0D or data[end + 1] != 0x0A:
            return None, _BAD
        if i <= _MAX_KEY_AT and cmd.wants(i) and not cmd.add(i, data[eol + 2 : end]):
            return None, _BAD
        p = end + 2
    return cmd.build(argc), p


def _inline_command(data: bytes, pos: int, n: int) -> tuple[RedisCommand | None, int]:
    """Parse an inline command line at pos ("PING\\r\\n"): (command, next position or _CUT/_BAD)."""
    eol = data.find(b"\n", pos)
    line = data[pos : eol if eol >= 0 else n]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) != len(line.translate(None, _CTL_INLINE)):
        return None, _BAD
    parts = line.split()
    if eol < 0 and len(parts) < 2:
        return None, _CUT  # the name itself may be cut
    if _token(parts[0]) not in _INLINE_NAMES:
        return None, _BAD  # any text line would pass the token check: take only commands people type
    cmd = _CommandBuilder()
    for i, part in enumerate(parts if eol >= 0 else parts[:-1]):  # a cut line's last word may be partial
        if cmd.wants(i) and not cmd.add(i, part):
            return None, _BAD
    return cmd.build(len(parts)), (eol + 1 if eol >= 0 else _CUT)


def parse_commands(req: bytes, limit: int = 64) -> tuple[list[RedisCommand], bool]:
    """Parse up to ``limit`` commands from a client capture: (commands, truncated)."""
    cmds: list[RedisCommand] = []
    n = len(req)
    pos = 0
    while pos < n:
        if len(cmds) >= limit:
            return cmds, True
        b = req[pos]
        if b == 0x2A:  # '*'
            cmd, nxt = _resp_command(req, pos, n)
        elif b in _LETTERS:
            cmd, nxt = _inline_command(req, pos, n)
        elif b in (0x0D, 0x0A):
            pos += 1  # Redis ignores empty inline lines between commands
            continue
        else:
            break
        if cmd is not None:
            cmds.append(cmd)
        if nxt == _CUT:
            return cmds, True
        if nxt < 0:
            break
        pos = nxt
    return cmds, False


def _printable(raw: bytes, limit: int) -> str:
    return raw[:limit].translate(_PRINTABLE).decode("ascii")


def _error(raw: bytes) -> tuple[str, str]:
    """Split error text into (prefix, message): the first word names the error kind by Redis convention."""
    raw = raw[: _MAX_ERROR_MESSAGE + _MAX_NAME + 1]
    if raw.endswith(b"\r"):  # the capture ended between CR and LF
        raw = raw[:-1]
    word, _, rest = raw.partition(b" ")
    if 0 < len(word) <= _MAX_NAME and not word.translate(None, _NAME_CHARS):
        prefix, message = word.decode("ascii"), _printable(rest, _MAX_ERROR_MESSAGE)
    else:
        prefix, message = "ERR", _printable(raw, _MAX_ERROR_MESSAGE)  # no usable kind: the generic one
    cut = message.find(_ARGS_IN_ERROR)
    return prefix, (message[:cut] if cut >= 0 else message)


def _skip(data: bytes, pos: int, depth: int, errors: list[tuple[str, str]]) -> int:
    """Skip one RESP value at pos, noting the first error met; the position after it, or _CUT/_BAD."""
    n = len(data)
    # Attributes decorate the value after them and stand in its place at the same depth; a loop, not
    # recursion, so a run of them cannot exhaust the stack.
    while pos < n and data[pos] == 0x7C:  # '|'
        pos = _attribute_end(data, pos, depth)
        if pos < 0:
            return pos
    if pos >= n:
        return _CUT
    t = data[pos]
    if t in _LINE_TYPES:
        eol = data.find(b"\r\n", pos + 1)
        body = data[pos + 1 : eol if eol >= 0 else n]
        if t == 0x2D:  # '-': keep even a cut error, it is what the span needs most
            if not errors:
                errors.append(_error(body))
        elif eol >= 0 and not _line_ok(t, body):
            return _BAD
        return eol + 2 if eol >= 0 else _CUT
    if t in _BLOB_TYPES:
        if t == 0x24 and data[pos + 1 : pos + 2] == b"?":
            return _stream(data, pos)
        length, p = _int_line(data, pos + 1)
        if p < 0:
            return p
        if length < 0:
            return p if length == -1 and t == 0x24 else _BAD  # $-1 is RESP2's null
        if length > _MAX_BULK:
            return _BAD
        end = p + length
        if t == 0x21 and not errors:  # '!' blob error: keep even a cut one
            errors.append(_error(data[p : min(end, n)]))
        if end + 2 > n:
            return _CUT
        return end + 2 if data[end : end + 2] == b"\r\n" else _BAD
    if t in _AGGREGATE_TYPES:
        if data[pos + 1 : pos + 4] == b"?\r\n":
            return _BAD if depth >= _MAX_DEPTH else _streamed_aggregate(data, pos + 4, depth, errors)
        count, p = _int_line(data, pos + 1)
        if p < 0:
            return p
        if count < 0:
            return p if count == -1 and t == 0x2A else _BAD  # *-1 is RESP2's null array
        if count and depth >= _MAX_DEPTH:  # only a non-empty aggregate goes a level deeper
            return _BAD
        if t == 0x25:  # '%' map: key/value pairs
            count *= 2
        # Each element takes at least 3 bytes, so the loop ends within n/3 rounds whatever count says.
        for _ in range(count):
            p = _skip(data, p, depth + 1, errors)
            if p < 0:
                return p
        return p
    return _BAD


def _line_ok(t: int, body: bytes) -> bool:
    if t == 0x3A or t == 0x28:  # ':' integer, '(' big number
        return _is_int(body) or (t == 0x3A and body[:1] == b"+" and body[1:].isdigit())
    if t == 0x5F:  # '_' null
        return body == b""
    if t == 0x23:  # '#' boolean
        return body in (b"t", b"f")
    if t == 0x2C:  # ',' double, including inf, -inf and nan
        return body != b"" and not body.translate(None, _DOUBLE_CHARS)
    return b"\r" not in body and b"\n" not in body


def _stream(data: bytes, pos: int) -> int:
    """Skip a streamed string ("$?" then ";len" chunks up to ";0"): the position after it, or _CUT/_BAD."""
    n = len(data)
    if data[pos + 2 : pos + 4] != b"\r\n":
        return _CUT if data[pos + 2 : pos + 4] in (b"", b"\r") else _BAD
    p = pos + 4
    while p < n:  # each chunk takes at least 4 bytes
        if data[p] != 0x3B:  # ';'
            return _BAD
        length, q = _int_line(data, p + 1)
        if q < 0:
            return q
        if length == 0:
            return q
        if not 0 < length <= _MAX_BULK:
            return _BAD
        end = q + length
        if end + 2 > n:
            return _CUT
        if data[end : end + 2] != b"\r\n":
            return _BAD
        p = end + 2
    return _CUT


def _streamed_aggregate(data: bytes, p: int, depth: int, errors: list[tuple[str, str]]) -> int:
    """Skip the elements of "*?"-style aggregates up to the ".\\r\\n" end mark."""
    n = len(data)
    while p < n:  # each element moves p on by at least 3 bytes
        if data[p] == 0x2E:  # '.'
            if data[p + 1 : p + 3] == b"\r\n":
                return p + 3
            return _CUT if n - p < 3 and data[p + 1 : n] in (b"", b"\r") else _BAD
        p = _skip(data, p, depth + 1, errors)
        if p < 0:
            return p
    return _CUT


def _attribute_end(data: bytes, pos: int, depth: int) -> int:
    """Skip an attribute's key/value pairs (not the value it decorates): the position after them."""
    count, p = _int_line(data, pos + 1)
    if p < 0 or count < 0:
        return _BAD if p >= 0 else p
    if count and depth >= _MAX_DEPTH:
        return _BAD
    sink: list[tuple[str, str]] = []  # an error inside metadata is not the command's error
    for _ in range(count * 2):  # each element takes at least 3 bytes
        p = _skip(data, p, depth + 1, sink)
        if p < 0:
            return p
    return p


def parse_replies(resp: bytes, limit: int = 64) -> list[RedisReply]:
    """Summarise up to ``limit`` top-level replies from a server capture; a cut reply ends the list."""
    out: list[RedisReply] = []
    n = len(resp)
    pos = 0
    while pos < n and len(out) < limit:
        if resp[pos] == 0x7C:  # '|': the reply is the value after the attribute, report that one's type
            nxt = _attribute_end(resp, pos, 0)
            if nxt < 0 or nxt >= n:
                out.append(RedisReply("attribute", complete=False))
                break
            pos = nxt
            continue
        kind = _REPLY_KINDS.get(resp[pos])
        if kind is None:
            break
        errors: list[tuple[str, str]] = []
        nxt = _skip(resp, pos, 0, errors)
        prefix, message = errors[0] if errors else (None, "")
        out.append(RedisReply(kind, prefix, message, nxt >= 0))
        if nxt < 0:
            break
        pos = nxt
    return out


def key_shape(key: bytes) -> str:
    """Return the key with digit runs, UUIDs and long hex tokens as "?", printable and bounded."""
    shaped = _KEY_VARIABLE.sub(b"?", key[:_MAX_KEY_IN]).translate(_PRINTABLE)
    return _REPEATED_MARK.sub(b"?", shaped)[:_MAX_KEY_OUT].decode("ascii")


def _placeholders(count: int) -> str:
    if count <= 0:
        return ""
    return " ?" * min(count, _MAX_PLACEHOLDERS) + (" ..." if count > _MAX_PLACEHOLDERS else "")


def _operation(prefix: str, names: list[str], all_known: bool) -> str:
    """Batch operation name: "<prefix> <cmd>" when every operation is known to be cmd, else the prefix."""
    if all_known and names and all(name == names[0] for name in names):
        return f"{prefix} {names[0]}"
    return prefix


class RedisSession:
    """What one Redis connection has shown so far: the selected database index."""

    __slots__ = ("capture_raw", "namespace", "evicted", "failures")

    def __init__(self, capture_raw: bool = False) -> None:
        self.capture_raw = capture_raw  # keep real keys (never values) in db.query.text
        self.namespace: str | None = None  # db.namespace: the index from the last successful SELECT
        # Redis needs no per-connection table (no prepared statements), so nothing is ever evicted; the
        # counter is here so the caller reports every database session the same way.
        self.evicted = 0
        self.failures = 0  # records dropped because describing them raised (a bug, never expected)

    def shape(self, cmd: RedisCommand) -> str:
        """The command in Redis CLI syntax with every value as "?": ``SET user:? ?``."""
        name, _, sub = cmd.name.partition(" ")
        key_at, _ = _key_spec(name, sub or None)
        words = 2 if sub else 1
        if cmd.key is None:
            return cmd.name + _placeholders(cmd.argc - words)
        key = _printable(cmd.key, _MAX_KEY_OUT) if self.capture_raw else key_shape(cmd.key)
        return cmd.name + _placeholders(key_at - words) + " " + (key or '""') + _placeholders(cmd.argc - key_at - 1)

    def describe(self, req: bytes, resp: bytes, count_hint: int = 0) -> DbCall | None:
        """Turn one record into a DbCall; None when the request holds no Redis command."""
        try:
            return self._describe(req, resp, count_hint)
        except Exception:  # a parser bug must cost one span, never the collector
            self.failures += 1
            return None

    def _describe(self, req: bytes, resp: bytes, count_hint: int) -> DbCall | None:
        cmds, truncated = parse_commands(req)
        if not cmds:
            return None
        replies = [r for r in parse_replies(resp) if r.kind != "push"]  # pushes answer no command
        self._track_namespace(cmds, replies)
        call = DbCall(system=REDIS, namespace=self.namespace, truncated=truncated)
        for reply in replies:
            if reply.error_prefix is not None:
                call.status_code, call.error_message = reply.error_prefix, reply.error_message
                break
        names = [c.name for c in cmds]
        hint = count_hint if truncated else 0
        if len(cmds) == 1 and hint <= 1:
            call.operation = names[0]
            call.query_text = self.shape(cmds[0])[:_MAX_QUERY_TEXT]
            return call
        if names[0] == "MULTI":
            inner = [name for name in names if name not in _TX_WRAPPERS]
            seen_exec = "EXEC" in names or "DISCARD" in names
            count = max(len(inner), hint - 2)  # the kernel's count includes MULTI and EXEC
            all_seen = seen_exec and count == len(inner)
            call.operation = _operation("MULTI", inner, all_seen)
        else:
            count = max(len(cmds), hint)
            all_seen = count == len(cmds)
            call.operation = _operation("PIPELINE", names, all_seen)
        call.batch_size = count if count >= 2 else 0
        call.query_text = self._batch_text(cmds, all_seen)
        return call

    def _batch_text(self, cmds: list[RedisCommand], all_seen: bool) -> str:
        """Shapes joined by "; ", or the one shape when all operations are known to share it, bounded."""
        shapes = [self.shape(c) for c in cmds]
        if all_seen and all(s == shapes[0] for s in shapes):
            return shapes[0][:_MAX_QUERY_TEXT]
        text = shapes[0][:_MAX_QUERY_TEXT]
        for s in shapes[1:]:
            if len(text) + 2 + len(s) > _MAX_QUERY_TEXT:
                return text + "; ..."
            text += "; " + s
        return text

    def _track_namespace(self, cmds: list[RedisCommand], replies: list[RedisReply]) -> None:
        """Follow SELECT and RESET, unless their own reply was an error (an unseen reply counts as OK)."""
        for i, cmd in enumerate(cmds):
            if cmd.name not in ("SELECT", "RESET"):
                continue
            if i < len(replies) and replies[i].kind in ("error", "blob_error"):
                continue
            if cmd.name == "RESET":
                self.namespace = "0"
            elif cmd.key is not None and cmd.key.isdigit() and len(cmd.key) <= 10:
                self.namespace = str(int(cmd.key))
