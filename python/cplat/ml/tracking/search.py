"""MLflow's search grammar, parsed and turned into parameterized SQL.

A filter is comparisons joined by ``AND``::

    metrics.acc > 0.9 and params.lr = '0.01' and tags.team LIKE 'vision%'
    attributes.status IN ('FINISHED', 'FAILED') and start_time >= 1700000000000
    tags.`my tag` IS NOT NULL and datasets.name = 'train'

An identifier is ``<entity>.<key>`` (the entity ``metric``/``metrics``, ``param``/``params``/
``parameter``/``parameters``, ``tag``/``tags``, ``attribute``/``attributes``/``attr``/``run``,
``dataset``/``datasets``) or a bare attribute name; a key with other characters is quoted with
backticks or double quotes. Strings are single or double quoted (a quote doubled inside stands
for itself). Order-by items are ``<identifier> [ASC|DESC]``.

The scanner is a regular expression over the whole text; anything it cannot read, and any
comparison the grammar does not allow (a metric compared with a string, ``LIKE`` on a number),
raises ``INVALID_PARAMETER_VALUE``. Values only ever reach SQL as bound parameters; keys are
bound too, and column names come from fixed tables, never from the text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cplat.ml.tracking.errors import TrackingError, invalid

__all__ = [
    "Column",
    "Comparison",
    "OrderKey",
    "TrackingError",
    "attribute_clause",
    "check_max_results",
    "decode_page_token",
    "encode_page_token",
    "keyed_exists",
    "parse_filter",
    "parse_order_by",
    "value_clause",
]

_ENTITIES = {
    "metric": "metric",
    "metrics": "metric",
    "param": "param",
    "params": "param",
    "parameter": "param",
    "parameters": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
    "attr": "attribute",
    "run": "attribute",
    "dataset": "dataset",
    "datasets": "dataset",
}
_KEYWORDS = frozenset({"AND", "OR", "LIKE", "ILIKE", "IN", "NOT", "IS", "NULL", "ASC", "DESC"})
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<ident>[A-Za-z_][\w]*(?:\.(?:[A-Za-z_0-9][\w.\-/]*|`[^`]*`|"(?:[^"]|"")*"))?)
  | (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<qident>`[^`]*`)
  | (?P<op>>=|<=|!=|<>|=|>|<|==)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
#: Longest filter text accepted (a guard against pathological input, far above real use).
MAX_FILTER = 16_384


@dataclass(frozen=True)
class Comparison:
    """One ``<entity>.<key> <op> <value>`` term of a filter.

    ``value`` is a string, a number, a tuple of strings (``IN``) or None (``IS NULL``).
    """

    entity: str
    key: str
    op: str
    value: str | float | tuple[str, ...] | None


@dataclass(frozen=True)
class OrderKey:
    """One order-by item."""

    entity: str
    key: str
    ascending: bool


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    q = text[0]
    return text[1:-1].replace(q + q, q)


def _tokens(text: str, field: str) -> list[_Tok]:
    if len(text) > MAX_FILTER:
        raise invalid(f"{field} is longer than {MAX_FILTER} characters", field)
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise invalid(f"invalid {field} {text!r}: cannot read {text[pos : pos + 20]!r}", field)
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group(0)
            if kind == "ident" and word.upper() in _KEYWORDS:
                kind = "kw"
                word = word.upper()
            out.append(_Tok(kind, word, pos))
        pos = m.end()
    return out


def _identifier(tok: _Tok, field: str, default: str = "attribute") -> tuple[str, str]:
    if tok.kind == "qident":
        return default, _unquote(tok.text)
    if tok.kind != "ident":
        raise invalid(f"invalid {field}: expected an identifier at {tok.text!r}", field)
    head, dot, rest = tok.text.partition(".")
    if not dot:
        return default, head
    entity = _ENTITIES.get(head.lower())
    if entity is None:
        raise invalid(
            f"invalid {field}: unknown entity {head!r} (use metrics., params., tags., "
            "attributes. or datasets.)",
            field,
        )
    key = _unquote(rest) if rest[:1] in ("`", '"') else rest
    if not key:
        raise invalid(f"invalid {field}: {tok.text!r} names no key", field)
    return entity, key


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.field = field
        self.toks = _tokens(text, field)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise invalid(f"invalid {self.field}: expected {what} at the end", self.field)
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.text == word:
            self.i += 1
            return True
        return False

    def value(self) -> str | float:
        tok = self.take("a value")
        if tok.kind == "str":
            return _unquote(tok.text)
        if tok.kind == "num":
            return float(tok.text)
        raise invalid(
            f"invalid {self.field}: expected a quoted string or a number at {tok.text!r}",
            self.field,
        )

    def comparison(self) -> Comparison:
        entity, key = _identifier(self.take("an identifier"), self.field)
        tok = self.take("a comparison operator")
        if tok.kind == "op":
            op = {"<>": "!=", "==": "="}.get(tok.text, tok.text)
            return Comparison(entity, key, op, self.value())
        if tok.kind != "kw":
            raise invalid(f"invalid {self.field}: expected an operator at {tok.text!r}", self.field)
        if tok.text in ("LIKE", "ILIKE"):
            return Comparison(entity, key, tok.text, self.value())
        if tok.text == "IS":
            negated = self.keyword("NOT")
            if not self.keyword("NULL"):
                raise invalid(f"invalid {self.field}: expected NULL after IS", self.field)
            return Comparison(entity, key, "IS NOT NULL" if negated else "IS NULL", None)
        if tok.text == "NOT":
            if self.keyword("IN"):
                return Comparison(entity, key, "NOT IN", self.value_list())
            if self.keyword("LIKE"):
                return Comparison(entity, key, "NOT LIKE", self.value())
            raise invalid(f"invalid {self.field}: expected IN or LIKE after NOT", self.field)
        if tok.text == "IN":
            return Comparison(entity, key, "IN", self.value_list())
        raise invalid(f"invalid {self.field}: unexpected {tok.text!r}", self.field)

    def value_list(self) -> tuple[str, ...]:
        if self.take("(").text != "(":
            raise invalid(f"invalid {self.field}: IN needs a parenthesised list", self.field)
        items: list[str] = []
        while True:
            v = self.value()
            if not isinstance(v, str):
                raise invalid(f"invalid {self.field}: IN lists hold quoted strings", self.field)
            items.append(v)
            sep = self.take(") or ,").text
            if sep == ")":
                return tuple(items)
            if sep != ",":
                raise invalid(f"invalid {self.field}: expected , or ) in the IN list", self.field)


def parse_filter(text: str | None, field: str = "filter") -> list[Comparison]:
    """Parse a filter into its comparisons (an empty or missing filter has none).

    Raises
    ------
    TrackingError
        ``INVALID_PARAMETER_VALUE`` naming ``field`` for text outside the grammar (``OR`` and
        parentheses around terms are not part of MLflow's grammar and are refused).
    """
    if text is None or not text.strip():
        return []
    p = _Parser(text, field)
    out = [p.comparison()]
    while p.peek() is not None:
        tok = p.take("AND")
        if tok.kind == "kw" and tok.text == "OR":
            raise invalid(f"invalid {field}: OR is not supported; join terms with AND", field)
        if not (tok.kind == "kw" and tok.text == "AND"):
            raise invalid(f"invalid {field}: expected AND at {tok.text!r}", field)
        out.append(p.comparison())
    return out


def parse_order_by(items: Sequence[str] | None, field: str = "order_by") -> list[OrderKey]:
    """Parse order-by items (``metrics.acc DESC``, ``name``, ``attributes.start_time ASC``).

    Raises
    ------
    TrackingError
        ``INVALID_PARAMETER_VALUE`` for an item that is not one identifier with an optional
        direction.
    """
    out: list[OrderKey] = []
    for item in items or ():
        if not isinstance(item, str) or not item.strip():
            raise invalid(f"invalid {field}: empty item", field)
        toks = _tokens(item, field)
        if not 1 <= len(toks) <= 2:
            raise invalid(f"invalid {field} {item!r}: expected `<key> [ASC|DESC]`", field)
        entity, key = _identifier(toks[0], field)
        ascending = True
        if len(toks) == 2:
            if toks[1].kind != "kw" or toks[1].text not in ("ASC", "DESC"):
                raise invalid(f"invalid {field} {item!r}: the direction is ASC or DESC", field)
            ascending = toks[1].text == "ASC"
        out.append(OrderKey(entity, key, ascending))
    return out


def encode_page_token(offset: int) -> str:
    """Return the page token of the result that starts at ``offset``."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_page_token(token: str | None, field: str = "page_token") -> int:
    """Return the offset a page token stands for (0 without one).

    Raises
    ------
    TrackingError
        ``INVALID_PARAMETER_VALUE`` for a token this server did not make.
    """
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise invalid(f"invalid {field}", field) from None
    offset = data.get("offset") if isinstance(data, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**53:
        raise invalid(f"invalid {field}", field)
    return offset


# --- SQL -----------------------------------------------------------------------------------

_NUMERIC_OPS = frozenset({"=", "!=", ">", ">=", "<", "<="})
_STRING_OPS = frozenset({"=", "!=", "LIKE", "NOT LIKE", "ILIKE", "IN", "NOT IN"})


@dataclass(frozen=True)
class Column:
    """A searchable attribute: its SQL expression and whether it holds numbers."""

    sql: str
    numeric: bool


def value_clause(expr: str, c: Comparison, numeric: bool, field: str) -> tuple[str, list[Any]]:
    """Return ``<expr> <op> ?`` for one comparison of a value of known type.

    Raises
    ------
    TrackingError
        When the operator or the value does not fit the type.
    """
    name = f"{c.entity}.{c.key}" if c.entity != "attribute" else c.key
    if numeric:
        if c.op not in _NUMERIC_OPS:
            raise invalid(f"invalid {field}: {c.op} does not compare numbers ({name})", field)
        if not isinstance(c.value, float):
            raise invalid(f"invalid {field}: {name} is compared with a number", field)
        return f"{expr} {c.op} ?", [c.value]
    if c.op not in _STRING_OPS:
        raise invalid(f"invalid {field}: {c.op} does not compare text ({name})", field)
    if c.op in ("IN", "NOT IN"):
        assert isinstance(c.value, tuple)
        marks = ", ".join("?" for _ in c.value)
        return f"{expr} {c.op} ({marks})", list(c.value)
    if not isinstance(c.value, str):
        raise invalid(f"invalid {field}: {name} is compared with a quoted string", field)
    if c.op == "ILIKE":
        return f"LOWER({expr}) LIKE LOWER(?)", [c.value]
    return f"{expr} {c.op} ?", [c.value]


def attribute_clause(
    columns: Mapping[str, Column], c: Comparison, field: str
) -> tuple[str, list[Any]]:
    """Return the clause of an attribute comparison (``INVALID_PARAMETER_VALUE`` if unknown)."""
    col = columns.get(c.key)
    if col is None:
        raise invalid(
            f"invalid {field}: unknown attribute {c.key!r} (one of {', '.join(sorted(columns))})",
            field,
        )
    if c.op in ("IS NULL", "IS NOT NULL"):
        return f"{col.sql} {c.op}", []
    return value_clause(col.sql, c, col.numeric, field)


def keyed_exists(
    table_sql: str,
    key_col: str,
    value_col: str,
    c: Comparison,
    numeric: bool,
    field: str,
    absent_differs: bool = False,
) -> tuple[str, list[Any]]:
    """Return ``EXISTS`` (or ``NOT EXISTS`` for ``IS NULL``) over a key/value side table.

    ``table_sql`` is ``FROM ... WHERE <link to the outer row>``; the key and the comparison
    are added to it. With ``absent_differs``, ``!=`` also matches rows without the key, as
    MLflow's registry does (its clients filter prompts out with ``tags.x != 'true'``).
    """
    if absent_differs and c.op == "!=" and isinstance(c.value, str):
        return f"NOT EXISTS (SELECT 1 {table_sql} AND {key_col} = ? AND {value_col} = ?)", [
            c.key,
            c.value,
        ]
    if c.op in ("IS NULL", "IS NOT NULL"):
        neg = "NOT " if c.op == "IS NULL" else ""
        return f"{neg}EXISTS (SELECT 1 {table_sql} AND {key_col} = ?)", [c.key]
    clause, params = value_clause(value_col, c, numeric, field)
    return f"EXISTS (SELECT 1 {table_sql} AND {key_col} = ? AND {clause})", [c.key, *params]


def check_max_results(value: Any, default: int, limit: int, field: str = "max_results") -> int:
    """Return a page size: ``default`` when absent, else an integer in ``1..limit``.

    Raises
    ------
    TrackingError
        ``INVALID_PARAMETER_VALUE`` otherwise.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise invalid(f"{field} must be an integer in 1..{limit}", field)
    return value
