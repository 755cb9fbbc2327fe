"""Errors raised for bad input at the edges of cplat (files, command lines, requests)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

#: What an error's ``field`` names: a trace ``column``, a config ``field`` (a key of a TOML
#: file, a request body or a setting), a command-line ``option`` (``--port``) or a positional
#: command-line ``argument`` (``KIND:PATH``).
FieldKind = Literal["column", "field", "option", "argument"]

#: Suffixes of the tabular trace formats whose named fields are columns.
_TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".swf", ".parquet"})
_COMPRESSION_SUFFIXES = frozenset({".gz", ".bz2", ".xz", ".zst"})


def _infer_kind(field: str, source: str | None, row: int | None) -> FieldKind:
    """Name what ``field`` is when the raiser did not say.

    A leading dash marks a command-line option; a line number or a tabular file (csv, swf,
    parquet, possibly compressed) marks a trace column; anything else (TOML keys, settings,
    request fields) is a field.
    """
    if field.startswith("-"):
        return "option"
    if row is not None:
        return "column"
    if source is not None:
        suffixes = [s.lower() for s in PurePath(source).suffixes]
        while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
            suffixes.pop()
        if suffixes and suffixes[-1] in _TABLE_SUFFIXES:
            return "column"
    return "field"


class InputError(ValueError):
    """Bad user input, located as precisely as possible.

    Parameters
    ----------
    message
        What is wrong and what was expected.
    source
        File (or other input) the error is in.
    row
        1-based line number in ``source`` (the CSV header is line 1).
    field
        Name of the column, config field, option or argument at fault.
    kind
        What ``field`` names, shown before it (``option '--port': ...``); inferred when
        omitted: ``option`` for a name starting with ``-``, ``column`` with a ``row`` or a
        tabular ``source`` (csv, swf, parquet), ``field`` otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        field: str | None = None,
        kind: FieldKind | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.row = row
        self.field = field
        self.kind: FieldKind | None = None
        if field is not None:
            self.kind = kind if kind is not None else _infer_kind(field, source, row)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source
            if self.row is not None:
                where += f":{self.row}"
            where += ": "
        what = f"{self.kind} '{self.field}': " if self.field is not None else ""
        return f"{where}{what}{self.message}"
