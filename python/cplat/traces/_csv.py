"""Strict CSV reading: every problem is reported with file, line and column."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

from cplat.errors import InputError


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open("r", newline="", encoding="utf-8")


def read_rows(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    extra: Literal["error", "ignore"] = "error",
    on_row: Callable[[], None] | None = None,
    on_ragged: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for each data row of a CSV file (plain or .gz).

    The header must contain every ``required`` column, no column twice, and (with ``extra``
    ``"error"``) nothing outside ``required`` and ``optional``. Blank lines are ignored;
    ``on_row`` is called for every other data row. A row whose field count differs from the
    header's raises, or is passed to ``on_ragged(message, line)`` and skipped.

    Raises
    ------
    InputError
        For a missing or unreadable file, a header problem, or a ragged row without
        ``on_ragged``.
    """
    source = str(path)
    if not path.is_file():
        raise InputError("file not found", source=source)
    try:
        with open_text(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise InputError("empty file, expected a header row", source=source, row=1)
            header = [h.strip() for h in header]
            _check_header(header, required, optional, extra, source)
            for values in reader:
                line = reader.line_num
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                if on_row is not None:
                    on_row()
                if len(values) != len(header):
                    message = f"expected {len(header)} fields, found {len(values)}"
                    if on_ragged is None:
                        raise InputError(message, source=source, row=line)
                    on_ragged(message, line)
                    continue
                yield line, dict(zip(header, values, strict=True))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", source=source) from None
    except (OSError, EOFError, csv.Error) as exc:
        raise InputError(f"cannot read file ({exc})", source=source) from None


def _check_header(
    header: list[str],
    required: Sequence[str],
    optional: Sequence[str],
    extra: str,
    source: str,
) -> None:
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise InputError("duplicate column", source=source, row=1, field=col)
        seen.add(col)
    for col in required:
        if col not in seen:
            raise InputError(
                f"missing column (required: {', '.join(required)})",
                source=source,
                row=1,
                field=col,
            )
    if extra == "error":
        allowed = set(required) | set(optional)
        for col in header:
            if col not in allowed:
                raise InputError(
                    f"unknown column (allowed: {', '.join([*required, *optional])})",
                    source=source,
                    row=1,
                    field=col,
                )


def non_negative_int(
    value: str, *, source: str, row: int, field: str, maximum: int | None = None
) -> int:
    """Parse a non-negative integer field, or raise ``InputError`` naming the field."""
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        raise InputError(
            f"expected a non-negative integer, got {text!r}", source=source, row=row, field=field
        ) from None
    if number < 0:
        raise InputError(
            f"expected a non-negative integer, got {number}", source=source, row=row, field=field
        )
    if maximum is not None and number > maximum:
        raise InputError(
            f"expected at most {maximum}, got {number}", source=source, row=row, field=field
        )
    return number
