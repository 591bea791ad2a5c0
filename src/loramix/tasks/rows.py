"""Reading raw data rows from local files: JSONL, JSON (a list of objects, or JSON Lines with a
.json name), parquet, a single .arrow file, or a `datasets.save_to_disk` folder. Each row comes
with where it was (`line 7` for JSONL, `row 7` otherwise, 1-based) so errors can name it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loramix.errors import DataError, LoramixError

Row = tuple[str, dict[str, Any]]


def read_rows(path: str | Path, split: str | None = None) -> list[Row]:
    """All rows of `path`. `split` picks a split when the folder holds a `DatasetDict`."""
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
    return read_jsonl(p, p.read_text(encoding="utf-8"))


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
            raise DataError(p, f"line {i}", f"invalid JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(p, f"line {i}", "expected a JSON object")
        rows.append((f"line {i}", obj))
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


def field(row: dict[str, Any], name: str, path: str | Path, where: str, kind: type | tuple = str) -> Any:
    """`row[name]`, checked to exist and be of type `kind`; otherwise a DataError naming it."""
    if name not in row or row[name] is None:
        raise DataError(path, f"{where}: field {name!r}", "missing")
    value = row[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(path, f"{where}: field {name!r}", f"expected {want}, got {type(value).__name__}")
    return value
