"""BoolQ (validation, 3,270 rows): fields `question`, `passage`, `answer` (bool). The gold answer
is `true`/`false`; verified case-insensitively (`bool` verifier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import INSTRUCTION, BenchmarkTask
from loramix.tasks.rows import field


class BoolQTask(BenchmarkTask):
    name = "boolq"
    answer_type = "true/false"
    verifier = "bool"
    description = "BoolQ yes/no reading comprehension"
    paper_split, paper_size = "validation", 3270

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where).strip()
        passage = field(row, "passage", path, where)
        answer = field(row, "answer", path, where, bool)
        if not question.endswith("?"):
            question += "?"
        prompt = (f"Read the passage and answer the question with true or false.\n{INSTRUCTION}\n\n"
                  f"Passage: {passage}\nQuestion: {question}\n")
        return Example(prompt, "true" if answer else "false", None, self.name)
