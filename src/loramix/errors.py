"""User-facing errors. A `LoramixError` is a mistake in the user's input: the CLI prints its message
on one line and exits non-zero, without a traceback (unless `--debug`). Messages name the file and
the field."""

from __future__ import annotations

from pathlib import Path


class LoramixError(Exception):
    """An error in user input: a bad adapter, config, data file or argument."""


class AdapterError(LoramixError):
    """A PEFT adapter folder that cannot be used as an expert."""

    def __init__(self, folder: str | Path, key: str, problem: str):
        self.folder, self.key, self.problem = str(folder), key, problem
        super().__init__(f"{folder}: {key}: {problem}")


class DataError(LoramixError):
    """A data or config file with a bad row or field."""

    def __init__(self, path: str | Path, where: str, problem: str):
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"{path}: {where}: {problem}")


def unknown_name(kind: str, name: str, valid) -> LoramixError:
    return LoramixError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
