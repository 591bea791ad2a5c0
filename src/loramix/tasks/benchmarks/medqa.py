"""MedQA (USMLE), test, 1,273 rows, as two tasks: `medqa` for the 4-option file
(`US/4_options/phrases_no_exclude_test.jsonl`, options A-D) and `medqa5` for the 5-option one
(`US/test.jsonl`, options A-E). Fields: `question`, `options` (`{"A": text, ...}`, or a list of
`{"key", "value"}`), `answer_idx` (the letter); `answer`, `meta_info` and `metamap_phrases` are
ignored. A file whose option count is not the task's is refused, so one cannot be scored as the
other. Question and option texts are made one clean line each: stripped, newlines made spaces, and
a line holding only a quote mark (a stray `"` in some rows) dropped. Verified by letter match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.arc import choice_prompt
from loramix.tasks.benchmarks.base import BenchmarkTask, letters, one_line
from loramix.tasks.rows import field


def clean_text(text: str) -> str:
    """`text` as one line, without the lines that hold only quote marks."""
    return one_line(" ".join(line for line in text.splitlines() if line.strip(" \t\"'")))


class MedQATask(BenchmarkTask):
    name = "medqa"
    answer_type = "letter"
    verifier = "letter"
    description = "MedQA (USMLE, 4 options) multiple choice"
    paper_split, paper_size = "test", 1273
    n_options = 4
    task_for_options = {4: "medqa", 5: "medqa5"}  # the task for each published file

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = clean_text(field(row, "question", path, where))
        if not question:
            raise DataError(path, f"{where}: field 'question'", "empty")
        options = field(row, "options", path, where, (dict, list))
        if isinstance(options, list):
            try:
                options = {o["key"]: o["value"] for o in options}
            except (TypeError, KeyError):
                raise DataError(path, f"{where}: field 'options'", "list items need 'key' and 'value'") from None
        keys = sorted(options)
        if keys != letters(len(keys)) or len(keys) < 2:
            raise DataError(path, f"{where}: field 'options'", f"keys must be A, B, C, ...; got {keys}")
        if len(keys) != self.n_options:
            hint = (f"; this is the {len(keys)}-option file, use task {self.task_for_options[len(keys)]!r}"
                    if len(keys) in self.task_for_options else "")
            raise DataError(path, f"{where}: field 'options'", f"{len(keys)} options ({keys[0]}-{keys[-1]}), but "
                            f"task {self.name!r} is the {self.n_options}-option benchmark{hint}")
        texts = [clean_text(field(options, k, path, where, shown=f"options.{k}")) for k in keys]
        for k, text in zip(keys, texts):
            if not text:
                raise DataError(path, f"{where}: field 'options.{k}'", "empty")
        gold = str(field(row, "answer_idx", path, where)).strip()
        if gold not in options:
            raise DataError(path, f"{where}: field 'answer_idx'", f"{gold!r} is not one of {keys}")
        return Example(choice_prompt("medical", question, texts), gold, None, self.name)


class MedQA5Task(MedQATask):
    name = "medqa5"
    description = "MedQA (USMLE, 5 options) multiple choice"
    n_options = 5
