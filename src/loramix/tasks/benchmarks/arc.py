"""ARC-Challenge (test, 1,172 rows): fields `question`, `choices` (`{"text": [...], "label":
[...]}`), `answerKey`. Options are shown as A, B, C, ... in order, whatever the raw labels (some
rows use 1-4); the gold answer is the letter of `answerKey`. Verified by letter match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import INSTRUCTION, BenchmarkTask, letters
from loramix.tasks.rows import field


def choice_prompt(kind: str, question: str, options: list[str]) -> str:
    lines = "\n".join(f"{k}. {t}" for k, t in zip(letters(len(options)), options))
    return (f"Answer the {kind} question with the letter of the correct option.\n{INSTRUCTION}\n\n"
            f"Question: {question}\n{lines}\n")


class ARCTask(BenchmarkTask):
    name = "arc"
    answer_type = "letter"
    verifier = "letter"
    description = "ARC-Challenge science multiple choice"
    paper_split, paper_size = "test", 1172

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where)
        choices = field(row, "choices", path, where, dict)
        texts = field(choices, "text", path, f"{where}: field 'choices'", list)
        labels = [str(x) for x in field(choices, "label", path, f"{where}: field 'choices'", list)]
        if len(texts) != len(labels) or len(texts) < 2:
            raise DataError(path, f"{where}: field 'choices'", "needs 2+ texts and as many labels")
        key = str(field(row, "answerKey", path, where, (str, int)))
        if key not in labels:
            raise DataError(path, f"{where}: field 'answerKey'", f"{key!r} is not one of {labels}")
        gold = letters(len(labels))[labels.index(key)]
        return Example(choice_prompt("science", question, [str(t) for t in texts]), gold, None, self.name)
