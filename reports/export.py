"""CSV exports: streamed row by row, and safe to open in a spreadsheet.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would be read by a
spreadsheet as a formula (CSV injection); such cells are prefixed with an apostrophe, which shows
the text as typed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_stream(header: list[str], rows: Iterable[list[Any]], batch: int = 200) -> Iterator[str]:
    """The CSV text in chunks of ``batch`` rows: memory stays flat whatever the number of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([neutralise(h) for h in header])
    for n, row in enumerate(rows, 1):
        writer.writerow([neutralise(v) for v in row])
        if n % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
