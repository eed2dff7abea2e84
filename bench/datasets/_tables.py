"""Reading label tables (CSV / legacy XLS) and parsing their cells with errors that name the place.

Every cell is read as text (never guessed by pandas), stripped, and parsed by the adapter with the
helpers below, so a bad value becomes a BenchError naming the value, the column, the file and the
line instead of a bare ValueError deep inside pandas.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from brainbench.errors import BenchError

# Tokens that mean "no value" in the distributed tables (compared case-insensitively).
MISSING = frozenset({"", "na", "n/a", "nan", "none", "null", "not available", "unknown", "#n/a"})


@dataclass(frozen=True)
class Row:
    """One data row; ``line`` is the spreadsheet/CSV line number (the header is line 1)."""

    line: int
    values: Mapping[str, str]

    def __getitem__(self, column: str) -> str:
        return self.values.get(column, "")


@dataclass(frozen=True)
class Table:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    excel: bool = False

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, row: Row, column: str | None = None) -> str:
        col = f"column {column!r} of " if column else ""
        return f"{col}{self.path} (line {row.line})"


def _cell(value: Any) -> str:
    """Normalise one spreadsheet cell to text: dates -> YYYY-MM-DD, 12.0 -> '12', NaN -> ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, _dt.datetime):  # also pandas.Timestamp
        if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
            return value.strftime("%Y-%m-%d")
        return value.isoformat(sep=" ")
    if isinstance(value, _dt.date):
        return value.isoformat()
    text = str(value).strip()
    return "" if text.lower() in ("nan", "nat") else text


def read_table(
    path: Path,
    required: Iterable[str],
    *,
    sheet: str | None = None,
    what: str = "label file",
    expected_tree: str = "",
) -> Table:
    """Read a CSV (or, for .xls/.xlsx, the named sheet) as text; check the required columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        tree = f"\nexpected layout:\n{expected_tree}" if expected_tree else ""
        raise BenchError(f"missing {what} {path}{tree}")
    excel = path.suffix.lower() in (".xls", ".xlsx")
    try:
        if excel:
            try:
                book = pd.ExcelFile(path)
            except Exception as exc:  # xlrd/openpyxl raise many types for corrupt files
                raise BenchError(f"cannot read spreadsheet {path}: {exc}") from None
            with book:
                sheets = list(book.sheet_names)
                name = sheet if sheet is not None else sheets[0]
                if name not in sheets:
                    raise BenchError(
                        f"spreadsheet {path} has no sheet {name!r}; sheets found: {', '.join(map(repr, sheets))}"
                    )
                frame = book.parse(name, dtype=object)
        else:
            frame = _read_csv(path)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"cannot parse {what} {path}: {exc}") from None

    columns = tuple(str(c).strip() for c in frame.columns)
    missing = [c for c in required if c not in columns]
    if missing:
        shown = ", ".join(repr(c) for c in columns[:40]) + (" ..." if len(columns) > 40 else "")
        raise BenchError(
            f"{what} {path} lacks the column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns found: {shown or '(none)'}"
        )
    rows = []
    for i, record in enumerate(frame.itertuples(index=False, name=None)):
        values = {col: _cell(v) for col, v in zip(columns, record)}
        if not any(values.values()):
            continue  # blank spreadsheet line
        rows.append(Row(line=i + 2, values=values))
    return Table(path=path, columns=columns, rows=tuple(rows), excel=excel)


def _read_csv(path: Path):
    """Comma-separated, or tab-separated for ``.tsv`` (BIDS participants.tsv)."""
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                               encoding=encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes everything")


def find_column(columns: Iterable[str], name: str) -> str | None:
    """The column ``name``, else the one whose header starts with it followed by a space or a
    parenthesised codebook (the real IXI.xls writes ``SEX_ID (1=m, 2=f)``); case-insensitive."""
    columns = list(columns)
    exact = [c for c in columns if c.strip().lower() == name.lower()]
    if exact:
        return exact[0]
    leading = [c for c in columns if re.split(r"[\s(]", c.strip(), maxsplit=1)[0].lower() == name.lower()]
    return leading[0] if leading else None


# --------------------------------------------------------------------------------------------- cells


def is_missing(value: str, extra: Iterable[str] = ()) -> bool:
    v = value.strip().lower()
    return v in MISSING or v in {e.lower() for e in extra}


def parse_float(
    table: Table, row: Row, column: str, *, what: str = "number", missing: Iterable[str] = ()
) -> float | None:
    """A float, or None for a missing token; anything else is a BenchError naming the place."""
    raw = row[column]
    if is_missing(raw, missing):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BenchError(f"cannot parse {what} {raw!r} in {table.where(row, column)}")
    return value


def parse_int(
    table: Table, row: Row, column: str, *, what: str = "integer", missing: Iterable[str] = ()
) -> int | None:
    value = parse_float(table, row, column, what=what, missing=missing)
    if value is None:
        return None
    if not value.is_integer():
        raise BenchError(f"cannot parse {what} {row[column]!r} (not a whole number) in {table.where(row, column)}")
    return int(value)


_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d", "%m/%d/%Y", "%Y%m%d")
_EXCEL_EPOCH = _dt.date(1899, 12, 30)


def parse_date(
    table: Table, row: Row, column: str, *, missing: Iterable[str] = ()
) -> _dt.date | None:
    """ISO dates (plus US m/d/Y and, in .xls sheets, Excel serial day numbers); None if missing."""
    raw = row[column]
    if is_missing(raw, missing):
        return None
    text = raw.strip()
    for fmt in _DATE_FORMATS:
        try:
            return _dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    if table.excel and re.fullmatch(r"\d+(\.\d+)?", text) and 1 <= float(text) < 200000:
        return _EXCEL_EPOCH + _dt.timedelta(days=int(float(text)))
    raise BenchError(f"cannot parse date {raw!r} in {table.where(row, column)} (expected YYYY-MM-DD)")


def parse_code(
    table: Table,
    row: Row,
    column: str,
    codes: Mapping[str, Any],
    *,
    missing: Iterable[str] = (),
    valid_text: str | None = None,
) -> Any:
    """Map a categorical code (case-insensitive) through ``codes``; None if missing; else BenchError."""
    raw = row[column]
    if is_missing(raw, missing):
        return None
    folded = {str(k).strip().lower(): v for k, v in codes.items()}
    key = raw.strip().lower()
    if key.endswith(".0") and key[:-2].lstrip("-").isdigit():
        key = key[:-2]
    if key in folded:
        return folded[key]
    valid = valid_text or ", ".join(repr(str(k)) for k in codes)
    raise BenchError(f"unknown code {raw!r} in {table.where(row, column)}; valid codes: {valid}")


def preview(items: Iterable[Any], n: int = 5) -> str:
    """'a, b, c, ... (+7 more)' for notes."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return head + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
