"""SQL text built in Python: identifiers quoted by the driver, literals quoted in one place.

Every identifier that is interpolated into a statement (a column, a staged table, a partition) goes through
`quote_ident`, whatever it holds, so no statement relies on config validation having limited the names.
Values go through parameters; where a statement cannot take parameters (a view, a key inside generated SQL),
through `quote_literal`.

Both double a `%`: SQLAlchemy hands every statement to psycopg with a parameter collection (an empty one when
there are no parameters), and psycopg reads `%` anywhere in the text as the start of a placeholder and `%%` as
one `%`. So a name such as `growth%` or `x%(sync)s` is only ever data.
"""

from __future__ import annotations

from functools import lru_cache

from psycopg import sql

_JSON_PAIRS_PER_CALL = 40
"""jsonb_build_object takes at most 100 arguments: 40 pairs leave room."""


_PERCENT = "%"


@lru_cache(maxsize=4096)
def quote_ident(name: str) -> str:
    """An identifier as the driver quotes it: `"name"`, an inner `"` doubled (psycopg's sql.Identifier), a `%`
    doubled for the driver's placeholder parsing."""
    return sql.Identifier(name).as_string(None).replace(_PERCENT, _PERCENT * 2)


def quote_qualified(schema: str, name: str) -> str:
    """`"schema"."name"`, both parts quoted by the driver."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def column_ref(alias: str, column: str) -> str:
    """`alias."column"`: a column of a table alias the statement itself names (s, r, w …)."""
    return f"{alias}.{quote_ident(column)}"


def quote_literal(text: str) -> str:
    """A text literal: `'text'`, an inner `'` doubled (the store runs with standard_conforming_strings), a `%`
    doubled for the driver's placeholder parsing."""
    return "'" + text.replace("'", "''").replace(_PERCENT, _PERCENT * 2) + "'"


def json_object_sql(pairs: list[tuple[str, str]]) -> str:
    """jsonb_build_object over any number of (key, SQL value) pairs (it takes at most 100 arguments per call)."""
    if not pairs:
        return "'{}'::jsonb"
    chunks = [pairs[i : i + _JSON_PAIRS_PER_CALL] for i in range(0, len(pairs), _JSON_PAIRS_PER_CALL)]
    parts = [
        "jsonb_build_object(" + ", ".join(f"{quote_literal(k)}, {v}" for k, v in chunk) + ")"
        for chunk in chunks
    ]
    return " || ".join(parts)


_JSON_VALUES_PER_CALL = 90
"""jsonb_build_array takes at most 100 arguments too."""


def json_array_sql(values: list[str]) -> str:
    """jsonb_build_array over any number of SQL values, in order."""
    if not values:
        return "'[]'::jsonb"
    chunks = [values[i : i + _JSON_VALUES_PER_CALL] for i in range(0, len(values), _JSON_VALUES_PER_CALL)]
    return " || ".join("jsonb_build_array(" + ", ".join(chunk) + ")" for chunk in chunks)


def text_array_sql(items: list[str]) -> str:
    """`ARRAY['a', 'b']::text[]` of literals."""
    return "ARRAY[" + ", ".join(quote_literal(i) for i in items) + "]::text[]"
