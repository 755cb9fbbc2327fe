"""Errors raised for bad input at the edges of cplat (files, command lines, requests)."""

from __future__ import annotations


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
        Column or field name.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source
            if self.row is not None:
                where += f":{self.row}"
            where += ": "
        column = f"column '{self.field}': " if self.field is not None else ""
        return f"{where}{column}{self.message}"
