"""Table-driven and fuzz tests for the shared SQL text helpers (sanitize, summarize, batch_operation)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbpf.protocols.sql import batch_operation, sanitize, summarize

FUZZ = settings(max_examples=10_000, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# ---- sanitize: PostgreSQL ------------------------------------------------------------------------------

PG_CASES = [
    ("SELECT * FROM users WHERE id = 42", "SELECT * FROM users WHERE id = ?"),
    ("SELECT * FROM users WHERE name = 'O''Brien' AND id=7", "SELECT * FROM users WHERE name = ? AND id=?"),
    # standard_conforming_strings: a backslash is an ordinary character in '...', an escape in E'...'.
    ("SELECT E'it\\'s' || 'C:\\'", "SELECT ? || ?"),
    ("SELECT e'a''b\\\\', 1", "SELECT ?, ?"),
    ("SELECT $$it's$$, $fn$ body $$ inner $fn$", "SELECT ?, ?"),
    ("SELECT $a1$x$a$y$a1$ FROM t", "SELECT ? FROM t"),
    ("SELECT * FROM t WHERE a = $1 AND b = $2", "SELECT * FROM t WHERE a = $1 AND b = $2"),
    ("INSERT INTO t (a, b) VALUES (%s, %(name)s)", "INSERT INTO t (a, b) VALUES (%s, %(name)s)"),
    ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = ?"),
    ('SELECT t1.col_2, "x1", "we""ird 9" FROM t1', 'SELECT t1.col_2, "x1", "we""ird 9" FROM t1'),
    ("SELECT a$1 FROM t", "SELECT a$1 FROM t"),
    ("SELECT 1, -2.5, .5e-3, 1e10, 7., 0x1F, 0b101, 0o17, 1_000_000", "SELECT ?, -?, ?, ?, ?, ?, ?, ?, ?"),
    ("SELECT B'1010', X'1F', U&'d\\0061t', N'abc', u&'x'", "SELECT ?, ?, ?, ?, ?"),
    ("UPDATE t SET on = TRUE WHERE off = false AND is_true", "UPDATE t SET on = ? WHERE off = ? AND is_true"),
    ("SELECT '2024-01-01'::date, interval '1 day'", "SELECT ?::date, interval ?"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3) AND s NOT IN ('a','b')",
     "SELECT * FROM t WHERE id IN (?) AND s NOT IN (?)"),
    ("SELECT * FROM t WHERE id in(-1,+2)", "SELECT * FROM t WHERE id in(?)"),
    ("SELECT * FROM t WHERE id IN ($1, $2) OR id IN (?, ?)", "SELECT * FROM t WHERE id IN ($1, $2) OR id IN (?, ?)"),
    ("SELECT * FROM t WHERE id IN (1, $1)", "SELECT * FROM t WHERE id IN (?, $1)"),
    ("SELECT * FROM t WHERE pin (1, 2)", "SELECT * FROM t WHERE pin (?, ?)"),
    ("/* user=alice password=hunter2 */ SELECT 1 -- secret tail", "SELECT ?"),
    ("SELECT /* a /* nested */ still hidden */ x", "SELECT x"),
    ("SELECT a/**/FROM t", "SELECT a FROM t"),
    ("SELECT\n\t a ,\r\n  b   FROM  t  ", "SELECT a , b FROM t"),
    ("SELECT '--no comment', '/*', \"a--b\"", 'SELECT ?, ?, "a--b"'),
    ('SELECT "password" FROM t', 'SELECT "password" FROM t'),
    ("SELECT 12345abc", "SELECT ?abc"),
    # The capture may end anywhere: a cut literal still ends in "?".
    ("SELECT * FROM t WHERE name = 'hunt", "SELECT * FROM t WHERE name = ?"),
    ("SELECT * FROM t WHERE name = 'it''", "SELECT * FROM t WHERE name = ?"),
    ("SELECT * FROM t WHERE name = E'abc\\", "SELECT * FROM t WHERE name = ?"),
    ("SELECT * FROM t WHERE name = $q$abc $q", "SELECT * FROM t WHERE name = ?"),
    ("SELECT * FROM t WHERE id = 1234", "SELECT * FROM t WHERE id = ?"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3", "SELECT * FROM t WHERE id IN (?"),
    ("SELECT * FROM t WHERE id IN (1, 2,", "SELECT * FROM t WHERE id IN (?"),
    ("SELECT 1 /* secret", "SELECT ?"),
    ('SELECT "unterminated id', 'SELECT "unterminated id'),
    ("", ""),
    ("-- only a comment", ""),
    ("SELECT \x00 1", "SELECT ?"),
]


@pytest.mark.parametrize(("text", "expected"), PG_CASES)
def test_sanitize_postgresql(text: str, expected: str) -> None:
    assert sanitize(text) == expected
    assert sanitize(text, "postgresql") == expected


# ---- sanitize: MySQL -----------------------------------------------------------------------------------

MYSQL_CASES = [
    ("SELECT * FROM users WHERE name = \"bob\" AND pw = 'it\\'s'", "SELECT * FROM users WHERE name = ? AND pw = ?"),
    ("SELECT 'a\\\\', 'b'", "SELECT ?, ?"),
    ("SELECT 'a''b', \"c\"\"d\"", "SELECT ?, ?"),
    ("# leading comment\nSELECT 1", "SELECT ?"),
    ("SELECT 1 -- comment\n, 2", "SELECT ? , ?"),
    ("SELECT a--1 FROM t", "SELECT a--? FROM t"),
    ("SELECT 1 --\n+ 2", "SELECT ? + ?"),
    ("SELECT `col1`, `we``ird` FROM `db`.`t2`", "SELECT `col1`, `we``ird` FROM `db`.`t2`"),
    ("INSERT INTO t VALUES (?, ?)", "INSERT INTO t VALUES (?, ?)"),
    ("SELECT X'4D', 0x4D, b'01', 0b01, N'x'", "SELECT ?, ?, ?, ?, ?"),
    ("SELECT * FROM t WHERE s IN (\"a\", \"b\", 'c')", "SELECT * FROM t WHERE s IN (?)"),
    ("/*!40101 SET NAMES utf8 */", ""),
    ("SELECT $$x$$", "SELECT $$x$$"),  # no dollar quoting in MySQL: "$" is an identifier character
    ("SELECT \"unterminated \\\" still", "SELECT ?"),
    ("SELECT 'cut \\", "SELECT ?"),
    ("SELECT 1 /* cut", "SELECT ?"),
]


@pytest.mark.parametrize(("text", "expected"), MYSQL_CASES)
def test_sanitize_mysql(text: str, expected: str) -> None:
    assert sanitize(text, "mysql") == expected
    assert sanitize(text, "mariadb") == expected


def test_dialects_differ_on_double_quotes() -> None:
    text = 'SELECT "secret-value" FROM t'
    assert sanitize(text, "postgresql") == text  # an identifier
    assert sanitize(text, "mysql") == "SELECT ? FROM t"  # a string


# ---- summarize ------------------------------------------------------------------------------------------

SUMMARY_CASES = [
    ("SELECT * FROM users", ("SELECT", "users")),
    ("select id from Users where id = $1", ("SELECT", "Users")),
    ("SELECT * FROM public.users u WHERE u.id = 1", ("SELECT", "public.users")),
    ("SELECT * FROM users AS u ORDER BY id LIMIT 10 FOR UPDATE", ("SELECT", "users")),
    ('SELECT * FROM "Order Items"', ("SELECT", "Order Items")),
    ('SELECT * FROM "my""quoted"', ("SELECT", 'my"quoted')),
    ('SELECT * FROM "app"."Users"', ("SELECT", "app.Users")),
    ("SELECT * FROM `shop`.`orders`", ("SELECT", "shop.orders")),
    ("SELECT 'x FROM y' FROM z", ("SELECT", "z")),
    ("SELECT extract(year FROM created) FROM events", ("SELECT", "events")),
    ("SELECT a, b FROM t1, t2", ("SELECT", None)),
    ("SELECT * FROM a JOIN b ON a.id = b.id", ("SELECT", None)),
    ("SELECT * FROM a WHERE id IN (SELECT id FROM b)", ("SELECT", None)),
    ("SELECT a FROM t UNION SELECT a FROM u", ("SELECT", None)),
    ("SELECT * FROM t WHERE a IS DISTINCT FROM b", ("SELECT", None)),
    ("SELECT * INTO backup FROM t", ("SELECT", None)),
    ("SELECT * FROM generate_series(1, 10)", ("SELECT", None)),
    ("SELECT 1", ("SELECT", None)),
    ("SELECT now()", ("SELECT", None)),
    ("INSERT INTO users (id, name) VALUES ($1, $2)", ("INSERT", "users")),
    ('INSERT INTO"users"("id") VALUES (1)', ("INSERT", "users")),
    ("INSERT INTO users(id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2", ("INSERT", "users")),
    ("INSERT INTO archive SELECT * FROM users", ("INSERT", None)),
    ("INSERT IGNORE INTO `t` SET a = 1", ("INSERT", "t")),
    ("REPLACE INTO kv VALUES (?, ?)", ("REPLACE", "kv")),
    ("UPDATE users SET name = $1 WHERE id = $2", ("UPDATE", "users")),
    ("UPDATE ONLY public.users u SET x = 1", ("UPDATE", "public.users")),
    ("UPDATE a SET x = b.x FROM b WHERE a.id = b.id", ("UPDATE", None)),
    ("UPDATE a, b SET a.x = b.x", ("UPDATE", None)),
    ("DELETE FROM sessions WHERE expires < now()", ("DELETE", "sessions")),
    ("DELETE FROM users;", ("DELETE", "users")),
    ("DELETE FROM a USING b WHERE a.id = b.id", ("DELETE", None)),
    ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", ("DELETE", None)),
    ("CREATE TABLE IF NOT EXISTS app.events (id bigint PRIMARY KEY)", ("CREATE", "app.events")),
    ("CREATE TEMPORARY TABLE tmp_x (a int)", ("CREATE", "tmp_x")),
    ("CREATE TABLE orders (user_id int REFERENCES users (id))", ("CREATE", None)),
    ("CREATE TABLE t2 AS SELECT * FROM t1", ("CREATE", None)),
    ("CREATE INDEX idx ON t (a)", ("CREATE", None)),
    ("DROP TABLE IF EXISTS old_data", ("DROP", "old_data")),
    ("DROP TABLE a, b", ("DROP", None)),
    ("ALTER TABLE users ADD COLUMN age int", ("ALTER", "users")),
    ("TRUNCATE TABLE logs", ("TRUNCATE", "logs")),
    ("TRUNCATE a, b", ("TRUNCATE", None)),
    ("BEGIN", ("BEGIN", None)),
    ("commit", ("COMMIT", None)),
    ("ROLLBACK TO SAVEPOINT s1", ("ROLLBACK", None)),
    ("SET search_path TO app", ("SET", None)),
    ("SHOW server_version", ("SHOW", None)),
    # WITH is a clause: the first operation found in the text is the first CTE body's.
    ("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", ("SELECT", None)),
    ("WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t) SELECT * FROM t", ("VALUES", None)),
    ("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", ("DELETE", None)),
    ("WITH x AS", (None, None)),
    ("/* app:web */ -- note\n  (SELECT * FROM users)", ("SELECT", "users")),
    ("SELECT 1; DELETE FROM users", ("SELECT", None)),
    # Cut or garbage text.
    ('SELECT * FROM "us', ("SELECT", None)),
    ("SELECT * FROM", ("SELECT", None)),
    ("INSERT INTO", ("INSERT", None)),
    ("TRUNCATE TABLE", ("TRUNCATE", None)),
    ("hello world", (None, None)),
    ("", (None, None)),
    ("\x00\x01 garbage", (None, None)),
    ("'str' SELECT", (None, None)),
    ('"t" SELECT * FROM t', (None, None)),
    ("123 SELECT", (None, None)),
]


@pytest.mark.parametrize(("text", "expected"), SUMMARY_CASES)
def test_summarize(text: str, expected: tuple[str | None, str | None]) -> None:
    assert summarize(text) == expected


def test_summarize_reads_sanitized_text_the_same() -> None:
    for text, expected in SUMMARY_CASES[:40]:
        assert summarize(sanitize(text)) == expected, text


# ---- batch_operation ------------------------------------------------------------------------------------

BATCH_CASES = [
    (["INSERT", "INSERT"], "BATCH INSERT"),
    (["INSERT", "INSERT", "INSERT"], "BATCH INSERT"),
    (["INSERT", "UPDATE"], "BATCH"),
    (["INSERT", None], "BATCH"),  # a lost operation is not known to be the same
    ([None, None], "BATCH"),
    (["", ""], "BATCH"),
    ([], "BATCH"),  # an empty batch is still a batch
    (["SELECT"], "SELECT"),  # one operation is not a batch
    ([None], "BATCH"),
]


@pytest.mark.parametrize(("operations", "expected"), BATCH_CASES)
def test_batch_operation(operations: list[str | None], expected: str) -> None:
    assert batch_operation(operations) == expected


# ---- text cut from real wire messages ---------------------------------------------------------------------
# PostgreSQL Query: Byte1('Q') Int32(length, counting itself) String(NUL-terminated query).
# PostgreSQL Parse: Byte1('P') Int32(length) String(statement) String(query) Int16(#types) Int32[](type OIDs).
# MySQL COM_QUERY: int<3>(payload length, little-endian) int<1>(sequence id) then payload 0x03 + query.
PG_QUERY_BYTES = b"Q\x00\x00\x00\x26SELECT * FROM users WHERE id = 42\x00"
PG_PARSE_BYTES = (
    b"P\x00\x00\x00\x30\x00SELECT name FROM users WHERE id = $1\x00\x00\x01\x00\x00\x00\x17"
)
MYSQL_QUERY_BYTES = b"\x26\x00\x00\x00\x03SELECT * FROM t WHERE name = 'bob\\'s'"
CAPTURE_LIMIT = 512


def pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def mysql_packet(payload: bytes, seq: int = 0) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def pg_query_text(capture: bytes) -> str:
    """The query in a (possibly cut) Query message, decoded as the parsers do."""
    assert capture[:1] == b"Q"
    (length,) = struct.unpack("!I", capture[1:5])
    body = capture[5 : 1 + length]
    return body.split(b"\x00", 1)[0].decode("utf-8", "replace")


def pg_parse_text(capture: bytes) -> str:
    assert capture[:1] == b"P"
    (length,) = struct.unpack("!I", capture[1:5])
    body = capture[5 : 1 + length]
    _name, _, rest = body.partition(b"\x00")
    return rest.split(b"\x00", 1)[0].decode("utf-8", "replace")


def mysql_query_text(capture: bytes) -> str:
    length = int.from_bytes(capture[:3], "little")
    assert capture[4] == 0x03  # COM_QUERY
    return capture[5 : 4 + length].decode("utf-8", "replace")


def test_wire_builders_are_byte_exact() -> None:
    assert pg_message(b"Q", b"SELECT * FROM users WHERE id = 42\x00") == PG_QUERY_BYTES
    parse_body = b"\x00SELECT name FROM users WHERE id = $1\x00" + struct.pack("!hI", 1, 23)
    assert pg_message(b"P", parse_body) == PG_PARSE_BYTES
    assert mysql_packet(b"\x03SELECT * FROM t WHERE name = 'bob\\'s'") == MYSQL_QUERY_BYTES


def test_postgres_query_message() -> None:
    text = pg_query_text(PG_QUERY_BYTES)
    assert sanitize(text) == "SELECT * FROM users WHERE id = ?"
    assert summarize(text) == ("SELECT", "users")


def test_postgres_parse_message_keeps_parameters() -> None:
    text = pg_parse_text(PG_PARSE_BYTES)
    assert sanitize(text) == "SELECT name FROM users WHERE id = $1"
    assert summarize(text) == ("SELECT", "users")


def test_mysql_com_query() -> None:
    text = mysql_query_text(MYSQL_QUERY_BYTES)
    assert sanitize(text, "mysql") == "SELECT * FROM t WHERE name = ?"
    assert summarize(text) == ("SELECT", "t")


def test_capture_cut_mid_literal() -> None:
    rows = ", ".join(f"({i}, 'secret-row-{i:04d}')" for i in range(40))
    frame = pg_message(b"Q", f"INSERT INTO audit_log (id, note) VALUES {rows}".encode() + b"\x00")
    capture = frame[:CAPTURE_LIMIT]
    text = pg_query_text(capture)
    assert len(text) == CAPTURE_LIMIT - 5  # the length field promises more than the capture holds
    out = sanitize(text)
    assert "secret" not in out
    assert out.endswith("?")
    assert out.startswith("INSERT INTO audit_log (id, note) VALUES (?, ?), (?, ?), ")
    assert summarize(text) == ("INSERT", "audit_log")


def test_capture_cut_mid_utf8_character() -> None:
    frame = mysql_packet("\x03SELECT * FROM t WHERE name = 'h\u00e9llo'".encode())
    cut = frame[: frame.index(b"\xc3") + 1]  # ends inside the two-byte e-acute
    assert sanitize(mysql_query_text(cut), "mysql") == "SELECT * FROM t WHERE name = ?"


# ---- fuzz: arbitrary input --------------------------------------------------------------------------------
# Hypothesis draws a seed and Python's random builds the structured cases from it: generating the same
# shapes through strategies costs ten times more per example, and 10,000 examples per test must stay cheap.

DIALECTS = ("postgresql", "mysql")


def check_everything(text: str) -> None:
    for dialect in DIALECTS:
        out = sanitize(text, dialect)
        assert isinstance(out, str)
        assert len(out) <= len(text)
        assert "\x00" not in out and "\x01" not in out
    op, table = summarize(text)
    assert op is None or (op.isascii() and op.isupper())
    assert table is None or (op is not None and table)
    words: list[str | None] = [w or None for w in text.split(" ", 6)]
    name = batch_operation(words)
    assert name == "BATCH" or name.startswith("BATCH ") or (len(words) == 1 and name == words[0])


@FUZZ
@given(data=st.binary(max_size=600), encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_fuzz_arbitrary_bytes(data: bytes, encoding: str) -> None:
    check_everything(data.decode(encoding, "surrogateescape" if encoding == "utf-8" else "strict"))


SQL_ALPHABET = "SELECTFROMWHEREINselectfrom tx1_.,;()*=<>-+/#$'\"`\\\n\tEeBbXxUu&0123456789?%:\x00é"
CORPUS = [c[0] for c in PG_CASES + MYSQL_CASES + SUMMARY_CASES]


@FUZZ
@given(base=st.sampled_from(CORPUS), seed=st.integers(0, 2**64 - 1))
def test_fuzz_mutated_sql(base: str, seed: int) -> None:
    rnd = random.Random(seed)
    text = base
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randint(0, len(text))
        insert = "".join(rnd.choices(SQL_ALPHABET, k=rnd.randint(0, 6)))
        text = text[:at] + insert + text[at + rnd.randint(0, 8) :]
    check_everything(text)
    check_everything(text[: rnd.randint(0, len(text))])


@FUZZ
@given(operations=st.lists(st.sampled_from(["SELECT", "INSERT", "", None]), max_size=4))
def test_fuzz_batch_operation(operations: list[str | None]) -> None:
    name = batch_operation(operations)
    known = {op for op in operations}
    if len(operations) >= 2 and len(known) == 1 and operations[0]:
        assert name == f"BATCH {operations[0]}"
    elif len(operations) == 1 and operations[0]:
        assert name == operations[0]
    else:
        assert name == "BATCH"


# ---- fuzz: no literal value survives ------------------------------------------------------------------------

SECRET_CHARS = "abcXYZ019 '\"\\$-*/#;(),\n\t%?_é"
COMMENT_CHARS = "abcXYZ019 '\"$-#;"  # no "*", "/" or newline: the comment must stay one comment
TAGS = ["", "q", "fn_1", "Tag"]


def pg_string(value: str, style: int, tag: str) -> str:
    """A PostgreSQL literal whose value is ``value``, in one of its quoting styles."""
    if style == 0:
        return "'" + value.replace("'", "''") + "'"
    if style == 1:
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if style == 2:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return f"${tag}$" + value + f"${tag}$"


def mysql_string(value: str, style: int, _tag: str) -> str:
    """A MySQL literal whose value is ``value``, in one of its quoting styles."""
    escaped = value.replace("\\", "\\\\")
    if style == 0:
        return "'" + escaped.replace("'", "\\'") + "'"
    if style == 1:
        return "'" + escaped.replace("'", "''") + "'"
    if style == 2:
        return '"' + escaped.replace('"', '\\"') + '"'
    return '"' + escaped.replace('"', '""') + '"'


def number(value: str, style: int) -> str:
    if style == 0:
        return value
    if style == 1:
        return f"{value}.{value[::-1]}"
    if style == 2:
        return f"{value}e-12"
    return "0x" + value  # decimal digits are hex digits too


TEMPLATES = [
    "SELECT * FROM users WHERE name = {s0} AND id = {n0}",
    'UPDATE t1 SET col_2 = {s0}, "x1" = {n0} WHERE id IN ({n1}, {n0}, {s1})',
    "INSERT INTO t (a, b, c) VALUES ({s0}, {n0}, {s1}) /* {c} */",
    "SELECT {s0}::text, -{n0} -- {c}\nFROM t WHERE a IN ({s1},{s0})",
    "  select\t{n1} ,{s1}||{s0} from x where y={n0}",
]


@FUZZ
@given(template=st.sampled_from(TEMPLATES), dialect=st.sampled_from(DIALECTS), seed=st.integers(0, 2**64 - 1))
def test_fuzz_no_literal_survives(template: str, dialect: str, seed: int) -> None:
    rnd = random.Random(seed)
    quote = pg_string if dialect == "postgresql" else mysql_string
    tag = rnd.choice(TAGS)
    close = f"${tag}$"
    secrets = ["".join(rnd.choices(SECRET_CHARS, k=rnd.randint(6, 24))) for _ in range(2)]
    numbers = [str(rnd.randint(10_000, 10**15)) for _ in range(2)]
    comment = "".join(rnd.choices(COMMENT_CHARS, k=rnd.randint(6, 20)))
    literals = []
    for value in secrets:
        style = rnd.randint(0, 3)
        if dialect == "postgresql" and style == 3 and (value + close).find(close) != len(value):
            style = 0  # this value would close its own dollar quote early
        literals.append(quote(value, style, tag))
    s0, s1 = literals
    n0, n1 = (number(v, rnd.randint(0, 3)) for v in numbers)
    text = template.format(s0=s0, s1=s1, n0=n0, n1=n1, c=comment)
    # The same query with other values: the output must not depend on the values at all.
    baseline = sanitize(template.format(s0="'v'", s1="'w'", n0="1", n1="2", c="c"), dialect)
    hidden = [h for h in (*secrets, *numbers, comment) if h[:6] not in baseline]
    out = sanitize(text, dialect)
    assert out == baseline
    for h in hidden:
        assert h not in out
    # Cut anywhere: whatever part of a value made it into the capture stays hidden.
    cut_out = sanitize(text[: rnd.randint(0, len(text))], dialect)
    for h in hidden:
        assert h[:6] not in cut_out
