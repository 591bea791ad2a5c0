"""MedQA, 4 options (test, 1,273 rows): fields `question`, `options` (`{"A": text, ...}`, or a
list of `{"key", "value"}`), `answer_idx` (the letter). Verified by letter match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.arc import choice_prompt
from loramix.tasks.benchmarks.base import BenchmarkTask, letters
from loramix.tasks.rows import field


class MedQATask(BenchmarkTask):
    name = "medqa"
    answer_type = "letter"
    verifier = "letter"
    description = "MedQA (USMLE, 4 options) multiple choice"
    paper_split, paper_size = "test", 1273

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where)
        options = field(row, "options", path, where, (dict, list))
        if isinstance(options, list):
            try:
                options = {o["key"]: o["value"] for o in options}
            except (TypeError, KeyError):
                raise DataError(path, f"{where}: field 'options'", "list items need 'key' and 'value'") from None
        keys = sorted(options)
        if keys != letters(len(keys)) or len(keys) < 2:
            raise DataError(path, f"{where}: field 'options'", f"keys must be A, B, C, ...; got {keys}")
        gold = str(field(row, "answer_idx", path, where)).strip()
        if gold not in options:
            raise DataError(path, f"{where}: field 'answer_idx'", f"{gold!r} is not one of {keys}")
        return Example(choice_prompt("medical", question, [str(options[k]) for k in keys]), gold, None, self.name)
