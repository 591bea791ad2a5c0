"""BoolQ (validation, 3,270 rows): a `question`, a `passage` and a yes/no gold, in any of the
published layouts, told apart per row:
- Google's release (`dev.jsonl`) and the Hugging Face export: `answer` is a bool (Google's rows
  also carry a `title`, which the prompt leaves out so every layout gives the same prompt);
- SuperGLUE (`BoolQ/val.jsonl`): `label` is a bool, `"true"`/`"false"`, or 0/1 (its HF export),
  plus an `idx`.
The gold answer is `true`/`false`; verified case-insensitively (`bool` verifier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import BenchmarkTask, benchmark_prompt
from loramix.tasks.rows import field

_LABELS = {"true": True, "false": False, "1": True, "0": False}


def _superglue_label(row: dict[str, Any], path: str | Path, where: str) -> bool:
    label = field(row, "label", path, where, (bool, str, int))
    if isinstance(label, bool):
        return label
    if str(label).strip().lower() not in _LABELS:
        raise DataError(path, f"{where}: field 'label'", f"expected true/false (or 1/0), got {label!r}")
    return _LABELS[str(label).strip().lower()]


class BoolQTask(BenchmarkTask):
    name = "boolq"
    answer_type = "true/false"
    verifier = "bool"
    description = "BoolQ yes/no reading comprehension"
    paper_split, paper_size = "validation", 3270

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where).strip()
        passage = field(row, "passage", path, where).strip()
        for name, text in (("question", question), ("passage", passage)):
            if not text:
                raise DataError(path, f"{where}: field {name!r}", "empty")
        if row.get("answer") is not None:
            answer = field(row, "answer", path, where, bool)
        elif row.get("label") is not None:
            answer = _superglue_label(row, path, where)
        else:  # e.g. a test file, which has no gold
            raise DataError(path, f"{where}: field 'answer'", "missing (and no SuperGLUE 'label' either)")
        if not question.endswith("?"):
            question += "?"
        prompt = benchmark_prompt("Read the passage and answer the question with true or false.",
                                  f"Passage: {passage}\nQuestion: {question}\n")
        return Example(prompt, "true" if answer else "false", None, self.name)
