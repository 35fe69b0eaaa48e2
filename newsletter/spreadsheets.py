"""CSV cells that a spreadsheet opens as text, never as a formula.

Every CSV the tool writes goes through `writer`: a cell starting with = + - @, a tab or a
carriage return (OWASP's CSV-injection list) gets a leading apostrophe, which Excel,
LibreOffice and Google Sheets show as plain text. `restore` undoes exactly that on import,
so an export read back gives the same values: one apostrophe is removed from a cell that
starts with apostrophes followed by one of those characters (a value that itself starts
with "'=" is written as "''=" and read back as "'=").
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a cell starting so is read as a formula
_FORMULA = re.compile("'*[" + re.escape("".join(FORMULA_STARTS)) + "]")


def neutralise(value: object) -> str:
    """The cell text for `value`, made inert for spreadsheets."""
    text = "" if value is None else str(value)
    return "'" + text if _FORMULA.match(text) else text


def restore(cell: str) -> str:
    """The value `neutralise` was given for this cell (for cells from our own exports)."""
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell) else cell


class SafeWriter:
    """csv.writer whose every cell is neutralised first."""

    def __init__(self, fp: IO[str], **fmtparams: Any) -> None:
        self._writer = csv.writer(fp, **fmtparams)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([neutralise(v) for v in row])


def writer(fp: IO[str], **fmtparams: Any) -> SafeWriter:
    """A CSV writer for files people open in a spreadsheet (every export of the tool)."""
    return SafeWriter(fp, **fmtparams)
