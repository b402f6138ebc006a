"""Strict SOQL subset for the Salesforce stand-in: tokenizer, parser and compiled evaluator."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .org import FieldDef, ObjectDef

Record = dict[str, Any]
Tables = Mapping[str, Mapping[str, Record]]

TEXT_TYPES = frozenset({"string", "email", "phone", "url", "picklist", "textarea", "combobox"})
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})

_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_UPPER_BITS = str.maketrans(
    {c: "1" for c in string.ascii_uppercase} | {c: "0" for c in string.ascii_lowercase + string.digits}
)

KEYWORDS = frozenset(
    {
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "ORDER",
        "BY",
        "ASC",
        "DESC",
        "NULLS",
        "FIRST",
        "LAST",
        "LIMIT",
        "OFFSET",
        "NULL",
        "TRUE",
        "FALSE",
        # Valid SOQL we do not support: reaching them is a MALFORMED_QUERY "unexpected token".
        "GROUP",
        "HAVING",
        "WITH",
        "FOR",
        "USING",
        "TYPEOF",
        "INCLUDES",
        "EXCLUDES",
        "ROLLUP",
        "CUBE",
        "UPDATE",
        "VIEW",
        "REFERENCE",
        "ALL",
        "ROWS",
        "SCOPE",
        "END",
        "WHEN",
        "THEN",
        "ELSE",
    }
)


class SoqlError(Exception):
    """A query Salesforce would refuse; ``code`` is the Salesforce errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------
# Ids and datetimes (shared with the org)
# --------------------------------------------------------------------------------------------


def id_suffix(id15: str) -> str:
    """The 3-character case-safe checksum Salesforce appends to a 15-character id."""
    bits = id15.translate(_UPPER_BITS)
    return (
        _SUFFIX_ALPHABET[int(bits[4::-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[9:4:-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[14:9:-1], 2)]
    )


@lru_cache(maxsize=1 << 16)
def normalize_id(value: str) -> str | None:
    """Canonical 18-character id for a 15- or 18-character id, or None when malformed."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    if len(value) == 15:
        return value + id_suffix(value)
    if id_suffix(value[:15]) == value[15:]:
        return value
    base, suffix = value[:15], value[15:].upper()
    chars = list(base)
    for chunk, flag_char in enumerate(suffix):
        flags = _SUFFIX_ALPHABET.find(flag_char)
        if flags < 0:
            return None
        for bit in range(5):
            pos = chunk * 5 + bit
            chars[pos] = chars[pos].upper() if flags & (1 << bit) else chars[pos].lower()
    # Digits are unaffected by case; letters now carry the case the checksum describes.
    base = "".join(chars)
    return base + id_suffix(base)


def format_datetime(value: datetime) -> str:
    """Render like Salesforce: ``2024-05-01T12:34:56.000+0000`` (UTC, milliseconds)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
        f"{value.second:02d}.{value.microsecond // 1000:03d}+0000"
    )


def parse_datetime(text: str) -> datetime:
    """Parse an ISO-8601 datetime (``Z``, ``+00:00`` or ``+0000``); naive values are UTC."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def canonical_datetime(text: str) -> str:
    """Salesforce rendering of any accepted datetime text; raises ValueError when unparseable."""
    return format_datetime(parse_datetime(text))


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    |(?P<date>\d{4}-\d{2}-\d{2})(?![\dT])
    |(?P<number>-?\d+(?:\.\d+)?)(?![A-Za-z_])
    |(?P<string>'(?:[^'\\]|\\.)*')
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<op><=|>=|!=|<>|=|<|>)
    |(?P<lparen>\()
    |(?P<rparen>\))
    |(?P<comma>,)
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


@dataclass(slots=True)
class Token:
    """One lexical token with its position in the query text."""

    kind: str
    text: str
    pos: int
    value: Any = None
    like_regex: str | None = None


def _unescape(raw: str, pos: int, query: str) -> tuple[str, str]:
    """Decode a string literal body; returns (value, LIKE regex)."""
    value: list[str] = []
    regex: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\":
            nxt = raw[i + 1]
            if nxt in _ESCAPES:
                value.append(_ESCAPES[nxt])
                regex.append(re.escape(_ESCAPES[nxt]))
                i += 2
            elif nxt in "%_":
                value.append("\\" + nxt)
                regex.append(re.escape(nxt))
                i += 2
            elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", raw[i + 2 : i + 6]):
                decoded = chr(int(raw[i + 2 : i + 6], 16))
                value.append(decoded)
                regex.append(re.escape(decoded))
                i += 6
            else:
                raise SoqlError("MALFORMED_QUERY", _locate(query, pos + i + 1, "Invalid string literal"))
        else:
            value.append(char)
            regex.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
            i += 1
    return "".join(value), "".join(regex)


def tokenize(query: str) -> list[Token]:
    """Split a SOQL string into tokens; anything outside the subset is MALFORMED_QUERY."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(query):
        match = _TOKEN_RE.match(query, pos)
        if match is None:
            if query[pos] == "'":
                raise SoqlError("MALFORMED_QUERY", _locate(query, pos, "unterminated string literal"))
            raise SoqlError("MALFORMED_QUERY", _locate(query, pos, f"unexpected token: '{query[pos]}'"))
        kind = match.lastgroup or ""
        text = match.group(0)
        if kind != "ws":
            token = Token(kind, text, pos)
            if kind == "string":
                token.value, token.like_regex = _unescape(text[1:-1], pos + 1, query)
            elif kind == "number":
                token.value = float(text) if "." in text else int(text)
            elif kind == "datetime":
                try:
                    token.value = canonical_datetime(text)
                except ValueError as exc:
                    raise SoqlError(
                        "MALFORMED_QUERY", _locate(query, pos, f"invalid datetime: {text}")
                    ) from exc
            elif kind == "date":
                try:
                    token.value = datetime.strptime(text, "%Y-%m-%d").date().isoformat()
                except ValueError as exc:
                    raise SoqlError("MALFORMED_QUERY", _locate(query, pos, f"invalid date: {text}")) from exc
            tokens.append(token)
        pos = match.end()
    tokens.append(Token("eof", "", len(query)))
    return tokens


def _locate(query: str, pos: int, message: str) -> str:
    """Salesforce-style error text: the query line, a caret, row/column, then the message."""
    before = query[:pos]
    row = before.count("\n") + 1
    line_start = before.rfind("\n") + 1
    line_end = query.find("\n", pos)
    line = query[line_start : line_end if line_end >= 0 else len(query)]
    column = pos - line_start
    return f"\n{line}\n{' ' * column}^\nERROR at Row:{row}:Column:{column + 1}\n{message}"


# --------------------------------------------------------------------------------------------
# Resolved field paths
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hop:
    """One parent-relationship step: read ``ref_field`` and look the id up in ``target``."""

    ref_field: str
    relationship: str
    target: str


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A resolved (possibly dotted) field reference in canonical casing."""

    text: str
    hops: tuple[Hop, ...]
    field: FieldDef

    @property
    def name(self) -> str:
        return self.field.name


def resolve_field(schema: Mapping[str, ObjectDef], sobject: str, dotted: str) -> FieldPath:
    """Resolve ``Account.Owner.Name`` against the schema (case-insensitive); raises SoqlError."""
    obj = schema[sobject]
    parts = dotted.split(".")
    if len(parts) > 1 and parts[0].lower() == obj.name.lower() and parts[0].lower() not in obj.relationships:
        parts = parts[1:]
    hops: list[Hop] = []
    canonical: list[str] = []
    for part in parts[:-1]:
        ref = obj.relationships.get(part.lower())
        if ref is None:
            raise SoqlError(
                "INVALID_FIELD",
                f"Didn't understand relationship '{part}' in field path. If you are attempting to use a "
                "custom relationship, be sure to append the '__r' after the custom relationship name. "
                "Please reference your WSDL or the describe call for the appropriate names.",
            )
        assert ref.reference_to is not None and ref.relationship_name is not None
        hops.append(Hop(ref.name, ref.relationship_name, ref.reference_to))
        canonical.append(ref.relationship_name)
        obj = schema[ref.reference_to]
    fdef = obj.by_lower.get(parts[-1].lower())
    if fdef is None:
        raise SoqlError(
            "INVALID_FIELD",
            f"No such column '{parts[-1]}' on entity '{obj.name}'. If you are attempting to use a custom "
            "field, be sure to append the '__c' after the custom field name. Please reference your WSDL "
            "or the describe call for the appropriate names.",
        )
    canonical.append(fdef.name)
    return FieldPath(".".join(canonical), tuple(hops), fdef)


# --------------------------------------------------------------------------------------------
# Parser → compiled query
# --------------------------------------------------------------------------------------------

Predicate = Callable[[Record], bool]


@dataclass(slots=True)
class OrderKey:
    """One ORDER BY term."""

    path: FieldPath
    descending: bool
    nulls_first: bool


@dataclass
class CompiledQuery:
    """A parsed, schema-checked query ready to run over the org's tables."""

    sobject: str
    is_count: bool
    select: list[FieldPath]
    where: Predicate | None
    order: list[OrderKey]
    limit: int | None
    offset: int
    rel_paths: list[tuple[Hop, ...]] = field(default_factory=list)
    rel_index: dict[tuple[Hop, ...], int] = field(default_factory=dict)

    # -- execution ------------------------------------------------------------------------

    def run(self, tables: Tables, include_deleted: bool) -> Snapshot:
        """Filter, sort, offset and limit; parents are resolved now so the result is a snapshot.

        Records are never mutated in place (writes replace them), so holding references is a snapshot.
        Nothing is allocated per row beyond list slots: large results stay cheap for the GC.
        """
        where = self.where
        values = tables[self.sobject].values()
        if include_deleted:
            rows = list(values) if where is None else [rec for rec in values if where(rec)]
        elif where is None:
            rows = [rec for rec in values if not rec["IsDeleted"]]
        else:
            rows = [rec for rec in values if not rec["IsDeleted"] and where(rec)]
        for key in reversed(self.order):  # stable sorts, least significant key first
            rows = _sorted(rows, key, tables)
        if self.offset:
            rows = rows[self.offset :]
        if self.limit is not None:
            rows = rows[: self.limit]
        width = len(self.rel_paths)
        if width == 0:
            return Snapshot(rows, [], 0)
        plan = [
            (self.rel_index[path[:-1]] if len(path) > 1 else -1, path[-1].ref_field, tables[path[-1].target])
            for path in self.rel_paths
        ]
        if width == 1:
            lookup, ref_field = plan[0][2].get, plan[0][1]
            return Snapshot(rows, [lookup(rec.get(ref_field)) for rec in rows], 1)  # type: ignore[arg-type]
        parents: list[Record | None] = []
        append = parents.append
        for rec in rows:
            base_row = len(parents)
            for base_index, ref_field, table in plan:
                base = rec if base_index < 0 else parents[base_row + base_index]
                parent_id = None if base is None else base.get(ref_field)
                append(None if parent_id is None else table.get(parent_id))
        return Snapshot(rows, parents, width)

    def count(self, tables: Tables, include_deleted: bool) -> int:
        """Row count for ``SELECT COUNT()``."""
        where = self.where
        total = 0
        for rec in tables[self.sobject].values():
            if (include_deleted or not rec["IsDeleted"]) and (where is None or where(rec)):
                total += 1
        total = max(0, total - self.offset)
        return total if self.limit is None else min(total, self.limit)

    def renderer(self, snapshot: Snapshot, url_prefix: str) -> Callable[[int], dict[str, Any]]:
        """A function rendering row ``i`` of ``snapshot`` in the REST JSON shape (nested parents)."""
        tree = _build_tree(self.select, self.rel_index)
        sobject = self.sobject
        rows, parents, width = snapshot.rows, snapshot.parents, snapshot.width

        def render_node(rec: Record, sobj: str, node: list[Any], base: int) -> dict:
            out: dict[str, Any] = {"attributes": {"type": sobj, "url": f"{url_prefix}{sobj}/{rec['Id']}"}}
            for name, rel in node:
                if rel is None:
                    out[name] = rec.get(name)
                else:
                    target, slot, child = rel
                    parent = parents[base + slot]
                    out[name] = None if parent is None else render_node(parent, target, child, base)
            return out

        def render(i: int) -> dict[str, Any]:
            return render_node(rows[i], sobject, tree, i * width)

        return render

    def column_getters(self, snapshot: Snapshot) -> list[Callable[[int], Any]]:
        """One getter per selected field, reading row ``i`` of ``snapshot`` (for CSV output)."""
        rows, parents, width = snapshot.rows, snapshot.parents, snapshot.width
        getters: list[Callable[[int], Any]] = []
        for path in self.select:
            name = path.field.name
            if not path.hops:

                def field(i: int, name: str = name) -> Any:
                    return rows[i].get(name)

                getters.append(field)
            else:
                slot = self.rel_index[path.hops]

                def get(i: int, name: str = name, slot: int = slot) -> Any:
                    parent = parents[i * width + slot]
                    return None if parent is None else parent.get(name)

                getters.append(get)
        return getters


@dataclass(slots=True)
class Snapshot:
    """Query result rows plus, per row, ``width`` resolved parent records (flattened)."""

    rows: list[Record]
    parents: list[Record | None]
    width: int

    def __len__(self) -> int:
        return len(self.rows)


def _sorted(rows: list[Record], key: OrderKey, tables: Tables) -> list[Record]:
    """Stable sort on one key; nulls are kept apart so no per-row key tuples are allocated."""
    getter = _getter(key.path, tables)
    nulls = [rec for rec in rows if getter(rec) is None]
    present = [rec for rec in rows if getter(rec) is not None] if nulls else list(rows)
    if key.path.field.type in TEXT_TYPES:  # SOQL sorts text case-insensitively
        present.sort(key=lambda rec: getter(rec).lower(), reverse=key.descending)
    else:
        present.sort(key=getter, reverse=key.descending)
    return nulls + present if key.nulls_first else present + nulls


def _build_tree(select: list[FieldPath], rel_index: dict[tuple[Hop, ...], int]) -> list[Any]:
    """Nested render plan: (field, None) items and (relationship, (target, parent slot, children)) items."""
    root: list[Any] = []
    nodes: dict[tuple[Hop, ...], list[Any]] = {(): root}
    for path in select:
        node = root
        for depth in range(len(path.hops)):
            prefix = path.hops[: depth + 1]
            if prefix not in nodes:
                hop = prefix[-1]
                children: list[Any] = []
                node.append((hop.relationship, (hop.target, rel_index[prefix], children)))
                nodes[prefix] = children
            node = nodes[prefix]
        node.append((path.field.name, None))
    return root


def _getter(path: FieldPath, tables: Tables) -> Callable[[Record], Any]:
    name = path.field.name
    if not path.hops:
        return lambda rec: rec.get(name)
    hops = [(hop.ref_field, tables[hop.target]) for hop in path.hops]

    def get(rec: Record) -> Any:
        current = rec
        for ref_field, table in hops:
            parent_id = current.get(ref_field)
            if parent_id is None:
                return None
            parent = table.get(parent_id)
            if parent is None:
                return None
            current = parent
        return current.get(name)

    return get


class _Parser:
    def __init__(self, query: str, schema: Mapping[str, ObjectDef], tables: Tables) -> None:
        self.query = query
        self.schema = schema
        self.tables = tables
        self.tokens = tokenize(query)
        self.pos = 0
        self.sobject = ""

    # -- token helpers --------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def keyword(self, tok: Token | None = None) -> str | None:
        tok = tok or self.tok
        if tok.kind == "ident" and tok.text.upper() in KEYWORDS:
            return tok.text.upper()
        return None

    def error(self, tok: Token | None = None, message: str | None = None) -> SoqlError:
        tok = tok or self.tok
        if message is None:
            message = "unexpected token: <EOF>" if tok.kind == "eof" else f"unexpected token: '{tok.text}'"
        return SoqlError("MALFORMED_QUERY", _locate(self.query, tok.pos, message))

    def expect_keyword(self, *words: str) -> str:
        word = self.keyword()
        if word not in words:
            raise self.error()
        self.pos += 1
        return word

    def accept_keyword(self, *words: str) -> str | None:
        word = self.keyword()
        if word in words:
            self.pos += 1
            return word
        return None

    def expect(self, kind: str) -> Token:
        tok = self.tok
        if tok.kind != kind:
            raise self.error()
        self.pos += 1
        return tok

    def field_name(self) -> Token:
        tok = self.tok
        if tok.kind != "ident" or self.keyword(tok) is not None:
            raise self.error()
        self.pos += 1
        return tok

    # -- grammar --------------------------------------------------------------------------

    def parse(self) -> CompiledQuery:
        self.expect_keyword("SELECT")
        select_tokens: list[Token] = []
        is_count = False
        while True:
            tok = self.tok
            if (
                tok.kind == "ident"
                and tok.text.upper() == "COUNT"
                and self.tokens[self.pos + 1].kind == "lparen"
            ):
                self.pos += 1
                self.expect("lparen")
                if self.tok.kind != "rparen":
                    raise self.error(message="only COUNT() without a field is supported")
                self.expect("rparen")
                is_count = True
            else:
                select_tokens.append(self.field_name())
                if self.tok.kind == "lparen":
                    raise self.error()
            if self.tok.kind != "comma":
                break
            self.pos += 1
        if is_count and select_tokens:
            raise self.error(select_tokens[0], "COUNT() cannot be combined with other fields")
        self.expect_keyword("FROM")
        obj_tok = self.tok
        if obj_tok.kind != "ident" or "." in obj_tok.text or self.keyword(obj_tok) is not None:
            raise self.error()
        self.pos += 1
        sobject = self._object_name(obj_tok)
        self.sobject = sobject

        select: list[FieldPath] = []
        seen: set[str] = set()
        for tok in select_tokens:
            path = self.resolve(tok)
            if path.text.lower() in seen:
                raise self.error(tok, f"duplicate field selected: {path.text}")
            seen.add(path.text.lower())
            select.append(path)

        where = None
        if self.accept_keyword("WHERE"):
            where = self.condition()
        order: list[OrderKey] = []
        if self.accept_keyword("ORDER"):
            self.expect_keyword("BY")
            while True:
                path = self.resolve(self.field_name())
                descending = self.accept_keyword("ASC", "DESC") == "DESC"
                nulls_first = True
                if self.accept_keyword("NULLS"):
                    nulls_first = self.expect_keyword("FIRST", "LAST") == "FIRST"
                order.append(OrderKey(path, descending, nulls_first))
                if self.tok.kind != "comma":
                    break
                self.pos += 1
        limit = None
        if self.accept_keyword("LIMIT"):
            limit = self.non_negative_int()
        offset = 0
        if self.accept_keyword("OFFSET"):
            tok = self.tok
            offset = self.non_negative_int()
            if offset > 2000:
                raise SoqlError(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    _locate(self.query, tok.pos, "Maximum SOQL offset allowed is 2000"),
                )
        if self.tok.kind != "eof":
            raise self.error()

        compiled = CompiledQuery(sobject, is_count, select, where, order, limit, offset)
        for path in select:
            for depth in range(len(path.hops)):
                prefix = path.hops[: depth + 1]
                if prefix not in compiled.rel_index:
                    compiled.rel_index[prefix] = len(compiled.rel_paths)
                    compiled.rel_paths.append(prefix)
        return compiled

    def _object_name(self, tok: Token) -> str:
        for name in self.schema:
            if name.lower() == tok.text.lower():
                return name
        raise SoqlError(
            "INVALID_TYPE",
            _locate(
                self.query,
                tok.pos,
                f"sObject type '{tok.text}' is not supported. If you are attempting to use a custom object, "
                "be sure to append the '__c' after the entity name. Please reference your WSDL or the "
                "describe call for the appropriate names.",
            ),
        )

    def resolve(self, tok: Token) -> FieldPath:
        try:
            return resolve_field(self.schema, self.sobject, tok.text)
        except SoqlError as exc:
            raise SoqlError(exc.code, _locate(self.query, tok.pos, exc.message)) from None

    def non_negative_int(self) -> int:
        tok = self.tok
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise self.error()
        self.pos += 1
        return tok.value

    def condition(self) -> Predicate:
        """A run of terms joined by one kind of connector; mixing AND/OR needs parentheses."""
        terms = [self.term()]
        connector: str | None = None
        while True:
            word = self.keyword()
            if word not in ("AND", "OR"):
                break
            if connector is not None and word != connector:
                raise self.error()
            connector = word
            self.pos += 1
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        combined = terms[0]
        for term in terms[1:]:
            combined = _join(combined, term, connector == "AND")
        return combined

    def term(self) -> Predicate:
        if self.accept_keyword("NOT"):
            inner = self.term()
            return lambda rec: not inner(rec)
        if self.tok.kind == "lparen":
            self.pos += 1
            inner = self.condition()
            self.expect("rparen")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field_tok = self.field_name()
        path = self.resolve(field_tok)
        getter = _getter(path, self.tables)
        word = self.keyword()
        if word in ("IN", "NOT"):
            self.pos += 1
            negate = word == "NOT"
            if negate:
                self.expect_keyword("IN")
            self.expect("lparen")
            values = [self.literal(path)]
            while self.tok.kind == "comma":
                self.pos += 1
                values.append(self.literal(path))
            self.expect("rparen")
            return _in_predicate(path, getter, values, negate)
        if word == "LIKE":
            self.pos += 1
            tok = self.tok
            if tok.kind != "string":
                raise self.error()
            self.pos += 1
            if path.field.type not in TEXT_TYPES:
                raise SoqlError(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    _locate(self.query, field_tok.pos, f"invalid operator on {path.field.type} field: LIKE"),
                )
            assert tok.like_regex is not None
            regex = re.compile(tok.like_regex, re.IGNORECASE | re.DOTALL)
            return lambda rec: (value := getter(rec)) is not None and regex.fullmatch(value) is not None
        if word in ("INCLUDES", "EXCLUDES"):
            raise self.error()
        op_tok = self.tok
        if op_tok.kind != "op":
            raise self.error()
        self.pos += 1
        op = "!=" if op_tok.text == "<>" else op_tok.text
        value = self.literal(path)
        if value is None and op not in ("=", "!="):
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR",
                _locate(self.query, op_tok.pos, f"invalid operator on null value: {op}"),
            )
        if path.field.type == "boolean" and op not in ("=", "!="):
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR",
                _locate(self.query, op_tok.pos, f"invalid operator on boolean field: {op}"),
            )
        return _compare_predicate(path, getter, op, value)

    def literal(self, path: FieldPath) -> Any:
        """A literal checked against the field's type (Salesforce refuses mismatches)."""
        tok = self.tok
        self.pos += 1
        ftype = path.field.type
        word = self.keyword(tok)
        if word == "NULL":
            return None
        if ftype == "boolean":
            if word in ("TRUE", "FALSE"):
                return word == "TRUE"
            raise self._type_error(tok, path, "boolean", quoted=False)
        if ftype in TEXT_TYPES:
            if tok.kind == "string":
                return tok.value
            raise self._type_error(tok, path, "string", quoted=True)
        if ftype in ID_TYPES:
            if tok.kind != "string":
                raise self._type_error(tok, path, "reference" if ftype == "reference" else "id", quoted=True)
            normalized = normalize_id(tok.value)
            if normalized is None:
                raise SoqlError(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    _locate(self.query, tok.pos, f"invalid ID field: {tok.value}"),
                )
            return normalized
        if ftype == "datetime":
            if tok.kind == "datetime":
                return tok.value
            raise self._type_error(tok, path, "dateTime", quoted=False)
        if ftype == "date":
            if tok.kind == "date":
                return tok.value
            raise self._type_error(tok, path, "date", quoted=False)
        if ftype in NUMBER_TYPES:
            if tok.kind == "number":
                return tok.value
            raise self._type_error(tok, path, "number", quoted=False)
        raise self.error(tok)

    def _type_error(self, tok: Token, path: FieldPath, type_name: str, *, quoted: bool) -> SoqlError:
        if tok.kind in ("rparen", "comma", "eof", "op") or self.keyword(tok) in KEYWORDS - {"TRUE", "FALSE"}:
            return self.error(tok)
        how = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
        return SoqlError(
            "INVALID_QUERY_FILTER_OPERATOR",
            _locate(
                self.query,
                tok.pos,
                f"value of filter criterion for field '{path.text}' must be of type {type_name} and {how}",
            ),
        )


def _join(left: Predicate, right: Predicate, conjunction: bool) -> Predicate:
    if conjunction:
        return lambda rec: left(rec) and right(rec)
    return lambda rec: left(rec) or right(rec)


def _compare_predicate(path: FieldPath, getter: Callable[[Record], Any], op: str, literal: Any) -> Predicate:
    """SOQL comparison semantics: text is case-insensitive; ``!=`` matches nulls; ordering skips nulls."""
    if literal is None:
        if op == "=":
            return lambda rec: getter(rec) is None
        return lambda rec: getter(rec) is not None
    if path.field.type in TEXT_TYPES:
        folded = literal.lower()
        inner = getter

        def getter(rec: Record) -> Any:
            value = inner(rec)
            return None if value is None else value.lower()

        literal = folded
    if op == "=":
        return lambda rec: getter(rec) == literal
    if op == "!=":
        return lambda rec: getter(rec) != literal
    if op == "<":
        return lambda rec: (value := getter(rec)) is not None and value < literal
    if op == "<=":
        return lambda rec: (value := getter(rec)) is not None and value <= literal
    if op == ">":
        return lambda rec: (value := getter(rec)) is not None and value > literal
    return lambda rec: (value := getter(rec)) is not None and value >= literal


def _in_predicate(
    path: FieldPath, getter: Callable[[Record], Any], values: list[Any], negate: bool
) -> Predicate:
    if path.field.type in TEXT_TYPES:
        allowed = frozenset(v.lower() if isinstance(v, str) else v for v in values)

        def matches(rec: Record) -> bool:
            value = getter(rec)
            return (value.lower() if value is not None else None) in allowed

    else:
        allowed = frozenset(values)

        def matches(rec: Record) -> bool:
            return getter(rec) in allowed

    if negate:
        return lambda rec: not matches(rec)
    return matches


def compile_query(query: str, schema: Mapping[str, ObjectDef], tables: Tables) -> CompiledQuery:
    """Parse and schema-check a SOQL query; raises SoqlError with a Salesforce errorCode."""
    if not query or not query.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected token: <EOF>")
    return _Parser(query, schema, tables).parse()
