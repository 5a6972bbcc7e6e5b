"""SQL text helpers shared by the PostgreSQL and MySQL parsers: literal redaction and a cheap query summary.

The text comes from kernel captures, so it may stop at any character (mid-literal, mid-comment) and may be
garbage. Nothing here raises on any ``str``. Both entry points run once per span, so the work is done by a
few precompiled regexes and C-level string methods; the only Python loops step from one literal or comment
to the next (never per character) and are bounded by the text length.

Semantic-convention notes (stable database conventions):
- ``sanitize`` follows "Sanitization of db.query.text": every literal (string, numeric, hex, bit, boolean)
  becomes ``?`` and IN-lists MAY collapse to ``IN (?)``. Placeholders are parameters, not literals, and stay.
- ``summarize`` reads the operation and table from the query text. The stable SQL, PostgreSQL and MySQL
  conventions say db.operation.name / db.collection.name SHOULD NOT be extracted from db.query.text (these
  systems allow several operations and tables in one text); text-derived values are what db.query.summary
  and the span name are built from (``{operation} {target}``). Where the caller puts them is its decision.
- ``batch_operation`` follows db.operation.name for batches: ``BATCH <op>`` when every operation is known to
  be the same, else ``BATCH``.
"""

from __future__ import annotations

import re

__all__ = ["batch_operation", "sanitize", "summarize"]

# Literals are first replaced by this sentinel so the IN-list collapse can tell them from "?" placeholders
# the application wrote, and quoted identifiers are parked as _IDENT_MARK while numbers are replaced. NUL
# and SOH cannot occur in real query text (both servers reject NUL), so input copies are blanked first.
_LIT = "\x00"
_IDENT_MARK = "\x01"

# Quoted tokens and comments. Every branch starts with a literal character so the regex engine skips ahead
# with a character-set scan instead of trying each branch at every position; the branch is told apart by
# its first character. Prefixes (E'', B'', X'', N'', U&'') are handled by looking one or two characters back.
# PostgreSQL: block comments nest (only the opening is matched, see _pg_comment_end); plain '...' strings
# follow standard_conforming_strings=on (the default since 9.1), where only '' escapes a quote; $tag$ bodies
# run to the same tag; "..." is an identifier. Each quoted form also matches when the capture ends inside
# it, so a cut literal is still hidden.
_PG_TOKEN = re.compile(
    r"--[^\r\n]*"
    r"|/\*"
    r"|\$(?<![\w$]\$)((?:[^\W\d]\w*)?)\$.*?(?:\$\1\$|\Z)"
    r"|'(?:[^']++|'')*+(?:'|\Z)"
    r'|"(?:[^"]++|"")*+(?:"|\Z)',
    re.DOTALL,
)
# summarize() is told no dialect: PostgreSQL lexing plus backtick identifiers reads both well enough to find
# keywords and names (a MySQL "string" reads as one quoted name, which never looks like a keyword).
_ANY_TOKEN = re.compile(_PG_TOKEN.pattern + r"|`(?:[^`]++|``)*+(?:`|\Z)", re.DOTALL)
# The body of an E'...' string (from its quote): backslash escapes as well as ''.
_ESCAPED_STR = re.compile(r"'(?:[^'\\]++|\\.|'')*+(?:'|\\?\Z)", re.DOTALL)
# MySQL: backslash escapes in both quote styles (unless NO_BACKSLASH_ESCAPES), "..." is a string (unless
# ANSI_QUOTES), `...` is an identifier, "#" starts a comment and "--" does only before whitespace/control.
_MYSQL_TOKEN = re.compile(
    r"--(?=[\s\x00-\x1f]|\Z)[^\r\n]*"
    r"|\#[^\r\n]*"
    r"|/\*.*?(?:\*/|\Z)"
    r"|'(?:[^'\\]++|\\.|'')*+(?:'|\\?\Z)"
    r'|"(?:[^"\\]++|\\.|"")*+(?:"|\\?\Z)'
    r"|`(?:[^`]++|``)*+(?:`|\Z)",
    re.DOTALL,
)
_PG_PREFIXES = "EeBbXxNn"
_MYSQL_PREFIXES = "BbXxNn"

# Numbers: decimal with optional fraction/exponent, and 0x/0b/0o forms (MySQL; PostgreSQL 16), with the
# digit-group underscores PostgreSQL 16 accepts. The first character is consumed before the lookbehind (so
# the engine can skip ahead by character set); the lookbehind keeps digits inside identifiers (t1, col_2) and
# $1 parameters. There is deliberately no lookahead: "12345abc" loses its digits rather than leaking them.
_NUM = re.compile(
    r"[0-9.](?<![\w$][0-9.])(?:(?<=0)[xX][0-9A-Fa-f_]+|(?<=0)[bB][01_]+|(?<=0)[oO][0-7_]+"
    r"|(?<=\.)[0-9][0-9_]*(?:[eE][+-]?[0-9]+)?|(?<=[0-9])[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?)"
)
_BOOL = re.compile(r"(?<![\w$])(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])(?![\w$])")

# IN-lists of two or more literals (signs allowed), after whitespace was collapsed; a list the capture cut
# off collapses too, left open (one-item lists already read "(?)"). The match starts at "(", found by a cheap
# character scan, and looks back for the IN keyword.
_IN_LIST = re.compile(
    r"\((?:(?<=[^\w$][Ii][Nn] \()|(?<=[^\w$][Ii][Nn]\())"
    r" ?[-+]?\x00(?: ?, ?[-+]?\x00)+(?: ?(\))|(?: ?,)? ?\Z)"
)


def _pg_comment_end(text: str, start: int) -> int:
    """Index just past the PostgreSQL block comment opening at ``start`` (comments nest); len(text) if open."""
    depth = 1
    i = start + 2
    # Each turn consumes one "/*" or "*/", so the loop is bounded by the text length.
    while depth:
        close = text.find("*/", i)
        if close < 0:
            return len(text)
        opening = text.find("/*", i, close)
        if opening >= 0:
            depth += 1
            i = opening + 2
        else:
            depth -= 1
            i = close + 2
    return i


def _is_ident_char(ch: str) -> bool:
    """The character can continue an unquoted identifier."""
    return ch.isalnum() or ch == "_" or ch == "$"


def _lex(text: str, mysql: bool, summary: bool = False) -> tuple[str, list[str]]:
    """Return (text with literals as _LIT, comments as a space, quoted identifiers as _IDENT_MARK; identifiers)."""
    if _LIT in text or _IDENT_MARK in text:
        text = text.replace(_LIT, " ").replace(_IDENT_MARK, " ")
    pattern = _ANY_TOKEN if summary else _MYSQL_TOKEN if mysql else _PG_TOKEN
    prefixes = _MYSQL_PREFIXES if mysql else _PG_PREFIXES
    parts: list[str] = []
    idents: list[str] = []
    pos = 0
    search = pattern.search
    # Every match consumes at least one character, so this runs at most once per literal or comment.
    while (m := search(text, pos)) is not None:
        start = m.start()
        end = m.end()
        c = text[start]
        if c == "'":
            # A one-letter prefix (or U&) belongs to the literal unless it ends an identifier.
            p = text[start - 1] if start > pos else ""
            if p and p in prefixes and (start < 2 or not _is_ident_char(text[start - 2])):
                if p in "Ee" and (em := _ESCAPED_STR.match(text, start)) is not None:
                    end = em.end()  # backslash escapes: the string may end before or after the plain reading
                start -= 1
            elif (
                not mysql
                and p == "&"
                and start - 2 >= pos
                and text[start - 2] in "Uu"
                and (start < 3 or not _is_ident_char(text[start - 3]))
            ):
                start -= 2
            rep = _LIT
        elif c == "-" or c == "#":
            rep = " "
        elif c == "/":
            rep = " "
            if not mysql:
                end = _pg_comment_end(text, start)
        elif c == '"' and (summary or not mysql) or c == "`":
            idents.append(m.group())
            rep = _IDENT_MARK
        else:  # $tag$ body, MySQL "string"
            rep = _LIT
        if start > pos:
            parts.append(text[pos:start])
        parts.append(rep)
        pos = end
    if pos == 0:
        return text, idents
    parts.append(text[pos:])
    return "".join(parts), idents


def _restore(text: str, idents: list[str]) -> str:
    """Put the parked quoted identifiers back in place of their marks."""
    if not idents:
        return text
    pieces = text.split(_IDENT_MARK)
    out = [pieces[0]]
    for ident, piece in zip(idents, pieces[1:], strict=False):
        out.append(ident)
        out.append(piece)
    return "".join(out)


def sanitize(text: str, dialect: str = "postgresql") -> str:
    """Return ``text`` with every literal as ``?``, comments removed and whitespace collapsed."""
    mysql = dialect == "mysql" or dialect == "mariadb"
    out, idents = _lex(text, mysql)
    # Numbers and booleans are replaced only now, with quoted identifiers parked, so "x1" keeps its digit.
    out = _NUM.sub(_LIT, out)
    low = out.lower()
    if "true" in low or "false" in low:
        out = _BOOL.sub(_LIT, out)
    out = " ".join(out.split())
    if _LIT in out:
        if "(" in out:
            out = _IN_LIST.sub("(\x00\\1", out)
        out = out.replace(_LIT, "?")
    return _restore(out, idents)


# ---- summarize ------------------------------------------------------------------------------------------

# First keywords accepted as an operation; anything else is not SQL we recognise (or garbage).
_OPERATIONS: frozenset[str] = frozenset(
    """SELECT INSERT UPDATE DELETE MERGE REPLACE UPSERT VALUES TABLE WITH
    CREATE DROP ALTER TRUNCATE RENAME COMMENT GRANT REVOKE REASSIGN
    BEGIN START COMMIT ROLLBACK END ABORT SAVEPOINT RELEASE XA
    PREPARE EXECUTE EXEC DEALLOCATE DECLARE FETCH MOVE CLOSE CALL DO
    SET RESET SHOW USE DESCRIBE DESC EXPLAIN ANALYZE ANALYSE VACUUM CLUSTER REINDEX REFRESH CHECKPOINT
    COPY LOCK UNLOCK LISTEN UNLISTEN NOTIFY DISCARD LOAD
    OPTIMIZE REPAIR CHECK CHECKSUM FLUSH KILL HANDLER PURGE CHANGE INSTALL UNINSTALL IMPORT""".split()
)
# Operations a WITH clause's body may start with.
_CTE_OPERATIONS: frozenset[str] = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"})
# Words that can never be a table name where one is expected (cut or garbage text).
_RESERVED: frozenset[str] = frozenset(
    """SELECT FROM WHERE INTO VALUES VALUE SET TABLE ONLY IF AS ON USING JOIN GROUP ORDER LIMIT DEFAULT
    RETURNING HAVING WINDOW UNION""".split()
)


def _kw(*words: str) -> str:
    """Regex for any of the uppercase ``words`` as a whole word (first character before the lookbehind)."""
    return "(?:" + "|".join(rf"{w[0]}(?<![\w$]{w[0]}){w[1:]}" for w in words) + r")(?![\w$])"


# The table patterns run on an uppercased copy of the statement (no IGNORECASE scans) in which quoted
# identifiers are parked as _IDENT_MARK and parenthesised groups are blanked to _GROUP runs of equal length,
# so match positions map straight back onto the original text.
_GROUP = "\x02"
_SP = r"(?:\s+|(?=\x01))"  # a keyword may touch a quoted identifier: INTO"users"
_IDENT = r"(?:\x01|[^\W\d][\w$]*)"
_NAME = rf"(?P<name>{_IDENT}(?:\.{_IDENT}){{0,2}})(?![\w$.])"
# Clause keywords that may follow "FROM t [alias]" when t is the only table.
_AFTER_FROM = (
    r"(?:WHERE|GROUP|ORDER|LIMIT|OFFSET|FETCH|FOR|HAVING|WINDOW|LOCK|RETURNING|TABLESAMPLE|PARTITION"
    r"|USE|FORCE|IGNORE)(?![\w$])"
)
_ALIAS = rf"(?:{_SP}(?:AS{_SP})?(?!{_AFTER_FROM}|SET(?![\w$])){_IDENT}(?![\w$.]))?"

_FIRST = re.compile(r"[\s(;]*([A-Za-z]+)(?![\w$])")
_CTE_BODY = re.compile(
    rf"{_SP}(?:RECURSIVE\s+)?{_IDENT}\s*(?:\([^()]*\)\s*)?AS\s*(?:NOT\s+)?(?:MATERIALIZED\s+)?\(\s*([A-Z]+)"
)
# Anything that brings in a second table: a subquery or set operation, a join, a foreign key, DELETE/UPDATE
# with USING, a parent table.
_MULTI = re.compile(_kw("SELECT", "JOIN", "REFERENCES", "USING", "INHERITS"))
_FROM_KW = re.compile(_kw("FROM"))
_INTO_KW = re.compile(_kw("INTO"))
_PAREN_GROUP = re.compile(r"\([^()]*\)")
_MAX_NESTING = 16
_QUOTED_NAME = re.compile(r'"(?:[^"]|"")+"|`(?:[^`]|``)+`', re.DOTALL)

_SELECT_TABLE = re.compile(rf"{_SP}(?:ONLY{_SP})?{_NAME}(?!\s*\x02){_ALIAS}\s*(?=\Z|{_AFTER_FROM})")
_INSERT_TABLE = re.compile(
    rf"{_SP}(?:(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE){_SP})*(?:INTO{_SP})?{_NAME}(?!\s*,)"
)
_UPDATE_TABLE = re.compile(rf"{_SP}(?:(?:ONLY|LOW_PRIORITY|IGNORE){_SP})*{_NAME}{_ALIAS}(?:\s+SET(?![\w$])|\s*\Z)")
_DELETE_TABLE = re.compile(
    rf"{_SP}(?:(?:LOW_PRIORITY|QUICK|IGNORE){_SP})*FROM{_SP}(?:ONLY{_SP})?{_NAME}{_ALIAS}"
    r"\s*(?=\Z|(?:WHERE|RETURNING|ORDER|LIMIT|PARTITION)(?![\w$]))"
)
_DDL_TABLE = re.compile(
    rf"{_SP}(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMPORARY|TEMP|UNLOGGED)\s+)?TABLE{_SP}"
    rf"(?:IF\s+(?:NOT\s+)?EXISTS{_SP})?(?:ONLY{_SP})?{_NAME}(?!\s*,)"
)
_TRUNCATE_TABLE = re.compile(rf"{_SP}(?:TABLE{_SP})?(?:ONLY{_SP})?{_NAME}(?!\s*,)")
_TABLE_PATTERNS: dict[str, re.Pattern[str]] = {
    "INSERT": _INSERT_TABLE,
    "REPLACE": _INSERT_TABLE,
    "UPDATE": _UPDATE_TABLE,
    "DELETE": _DELETE_TABLE,
    "CREATE": _DDL_TABLE,
    "DROP": _DDL_TABLE,
    "ALTER": _DDL_TABLE,
    "TRUNCATE": _TRUNCATE_TABLE,
}
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _upper(text: str) -> str:
    """Uppercase ``text`` without changing its length, so positions in the copy are positions in ``text``."""
    up = text.upper()
    # A few characters grow when uppercased (German sharp s becomes SS); then only ASCII letters are mapped.
    return up if len(up) == len(text) else text.translate(_ASCII_UPPER)


def _blank_group(m: re.Match[str]) -> str:
    """A parenthesised group's replacement: markers of the same length."""
    return _GROUP * (m.end() - m.start())


def _top_level(stmt: str) -> str:
    """``stmt`` with parenthesised groups blanked (same length), cut at a "(" the capture never closed."""
    for _ in range(_MAX_NESTING):
        stmt, n = _PAREN_GROUP.subn(_blank_group, stmt)
        if not n:
            break
    cut = stmt.find("(")
    if cut >= 0:
        stmt = stmt[:cut]
    # A ")" left over closes a "(" before the statement (a parenthesised query): not part of it.
    return stmt.replace(")", " ")


def _name(text: str, start: int, end: int, idents: list[str]) -> str | None:
    """The name at text[start:end] with its parts' quotes removed; None for a keyword or a cut quoted part."""
    parts = text[start:end].split(".")
    if len(parts) == 1 and parts[0].upper() in _RESERVED:
        return None
    k = text.count(_IDENT_MARK, 0, start)
    for i, part in enumerate(parts):
        if part == _IDENT_MARK:
            quoted = idents[k] if k < len(idents) else ""
            k += 1
            if not _QUOTED_NAME.fullmatch(quoted):
                return None  # the capture ended inside the quotes: the name is incomplete
            q = quoted[0]
            parts[i] = quoted[1:-1].replace(q + q, q)
    return ".".join(parts)


def _collection(op: str, rest: str, idents: list[str]) -> str | None:
    """The one table a single statement names, if exactly one; ``rest`` is the text after the operation."""
    select = op == "SELECT"
    pattern = _SELECT_TABLE if select else _TABLE_PATTERNS.get(op)
    if pattern is None:
        return None
    up = _upper(rest)
    if _MULTI.search(up):
        return None
    # Only SELECT and UPDATE look past the table name, where a FROM inside a function call must not count.
    top = _top_level(up) if select or op == "UPDATE" else up
    if select:
        # A second FROM ("IS DISTINCT FROM") or SELECT ... INTO leaves the table ambiguous: give none.
        froms = list(_FROM_KW.finditer(top))
        if len(froms) != 1 or _INTO_KW.search(top):
            return None
        m = pattern.match(top, froms[0].end())
    else:
        # UPDATE ... FROM other (PostgreSQL) names a second table.
        if op == "UPDATE" and _FROM_KW.search(top):
            return None
        m = pattern.match(top)
    if m is None:
        return None
    return _name(rest, m.start("name"), m.end("name"), idents)


def summarize(text: str) -> tuple[str | None, str | None]:
    """Return (operation, single table) read from the query text, best effort; (None, None) for garbage."""
    lexed, idents = _lex(text, False, summary=True)
    m = _FIRST.match(lexed)
    if m is None:
        return None, None
    op = m.group(1).upper()
    if op not in _OPERATIONS:
        return None, None
    rest = lexed[m.end() :]
    if op == "WITH":
        # WITH is a clause, not an operation: the first operation in the text is the first CTE's body.
        body = _CTE_BODY.match(_upper(rest))
        if body is None or body.group(1) not in _CTE_OPERATIONS:
            return None, None
        # A CTE query names the CTE as well as a table, so there is never a single collection.
        return body.group(1), None
    semi = rest.find(";")
    if semi >= 0:
        if rest[semi + 1 :].strip(" \t\r\n;"):
            return op, None  # several statements in one text: several tables
        rest = rest[:semi]
    # _FIRST allows no quoted name before the keyword, so the marks in ``rest`` index ``idents`` from 0.
    return op, _collection(op, rest, idents)


def batch_operation(operations: list[str | None]) -> str:
    """Return db.operation.name for a batch: "BATCH <op>" when all operations are known and equal, else "BATCH"."""
    if not operations:
        return "BATCH"  # an empty batch is still a batch (db.operation.batch.size 0)
    first = operations[0]
    if not first or any(op != first for op in operations):
        return "BATCH"
    # One operation is not a batch per semconv; callers should not ask, but answer with the plain name.
    return first if len(operations) == 1 else f"BATCH {first}"
