"""Reading raw data rows from local files: JSONL, JSON (a list of objects, or JSON Lines with a
.json name), TSV, parquet, a single .arrow file, or a `datasets.save_to_disk` folder. Each row
comes with where it was (`line 7` for JSONL and TSV, `row 7` otherwise, 1-based) so errors can
name it. A file with another name is TSV when its first line holds a tab and is not a JSON object,
JSONL otherwise."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from loramix.errors import DataError, LoramixError

Row = tuple[str, dict[str, Any]]

_FORMATS = "JSONL, JSON, TSV (.tsv or tab-separated), parquet, .arrow or a save_to_disk folder"
_HEADER_CELL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_rows(path: str | Path, split: str | None = None, *,
              tsv_columns: Sequence[str] | None = None) -> list[Row]:
    """All rows of `path`. `split` picks a split when the folder holds a `DatasetDict`;
    `tsv_columns` names the columns of a TSV file that has no header line."""
    p = Path(path)
    if not p.exists():
        raise LoramixError(f"{p}: no such file or folder")
    if p.is_dir():
        return _dataset_folder(p, split)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return _numbered(pq.read_table(p).to_pylist(), p)
    if suffix == ".arrow":
        import datasets

        return _numbered(list(datasets.Dataset.from_file(str(p))), p)
    if suffix == ".json":
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if "Extra data" not in err.msg:  # JSON Lines under a .json name otherwise
                raise DataError(p, f"line {err.lineno}", f"invalid JSON: {err.msg}") from None
            return read_jsonl(p, text)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(p, "top level", "expected a list of objects")
        return _numbered(data, p)
    text = p.read_text(encoding="utf-8-sig")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if suffix == ".tsv" or ("\t" in first and not first.lstrip().startswith("{")):
        return read_tsv(p, text, tsv_columns)
    return read_jsonl(p, text)


def read_jsonl(p: Path, text: str | None = None) -> list[Row]:
    """(``line N``, object) for each non-blank line of a JSONL file; a bad line is a DataError."""
    text = p.read_text(encoding="utf-8") if text is None else text
    rows: list[Row] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            hint = "" if rows else f" (read as JSON Lines; loramix reads {_FORMATS})"
            raise DataError(p, f"line {i}", f"invalid JSON: {err.msg}{hint}") from None
        if not isinstance(obj, dict):
            raise DataError(p, f"line {i}", "expected a JSON object")
        rows.append((f"line {i}", obj))
    return rows


def read_tsv(p: Path, text: str | None = None, columns: Sequence[str] | None = None) -> list[Row]:
    """(``line N``, {column: cell}) for each non-blank line of a tab-separated file. The first line
    is a header when every cell is a plain name (`sentence`, `label`, `idx`); otherwise the file has
    no header and `columns` names its columns. Cells are kept as text, with no quoting (GLUE's TSV
    files hold bare `"` in sentences); every line must have as many cells as the header."""
    text = p.read_text(encoding="utf-8-sig") if text is None else text
    lines = [(i, line.rstrip("\r").split("\t")) for i, line in enumerate(text.split("\n"), start=1)
             if line.strip()]  # split on \n only: a sentence may hold other line-break characters
    if not lines:
        return []
    first_no, first = lines[0]
    if all(_HEADER_CELL.fullmatch(c) for c in first):
        names, lines = first, lines[1:]
    elif columns is None:
        raise DataError(p, f"line {first_no}", "TSV without a header line (the first line must name the columns)")
    else:
        names = list(columns)
        if len(first) != len(names):
            raise DataError(p, f"line {first_no}", f"expected {len(names)} tab-separated columns "
                            f"({', '.join(names)}) or a header line, got {len(first)}")
    if len(set(names)) != len(names):
        raise DataError(p, f"line {first_no}", f"header names a column twice: {names}")
    rows: list[Row] = []
    for i, cells in lines:
        if len(cells) != len(names):
            raise DataError(p, f"line {i}", f"expected {len(names)} tab-separated columns "
                            f"({', '.join(names)}), got {len(cells)}")
        rows.append((f"line {i}", dict(zip(names, cells))))
    return rows


def _numbered(items: list, p: Path) -> list[Row]:
    rows: list[Row] = []
    for i, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise DataError(p, f"row {i}", "expected an object")
        rows.append((f"row {i}", obj))
    return rows


def _dataset_folder(p: Path, split: str | None) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as err:
        raise LoramixError(f"{p}: not a datasets.save_to_disk folder ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise LoramixError(f"{p}: no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    return _numbered(list(ds), p)


def field(row: dict[str, Any], name: str, path: str | Path, where: str, kind: type | tuple = str, *,
          shown: str | None = None) -> Any:
    """`row[name]`, checked to exist and be of type `kind`; otherwise a DataError naming it (as
    `shown` when given, e.g. `question.choices[2].text` for a nested field)."""
    label = shown or name
    if name not in row or row[name] is None:
        raise DataError(path, f"{where}: field {label!r}", "missing")
    value = row[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(path, f"{where}: field {label!r}", f"expected {want}, got {type(value).__name__}")
    return value
