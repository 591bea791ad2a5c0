"""CoLA (validation, 1,043 rows): fields `sentence`, `label` (1 acceptable, 0 not). Verified by
0/1 match (`binary` verifier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import INSTRUCTION, BenchmarkTask
from loramix.tasks.rows import field


class CoLATask(BenchmarkTask):
    name = "cola"
    answer_type = "0/1"
    verifier = "binary"
    description = "CoLA grammatical acceptability"
    paper_split, paper_size = "validation", 1043

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        sentence = field(row, "sentence", path, where)
        label = field(row, "label", path, where, int)
        if isinstance(label, bool) or label not in (0, 1):
            raise DataError(path, f"{where}: field 'label'", f"expected 0 or 1, got {label!r}")
        prompt = (f"Is the sentence grammatically acceptable? Answer 1 if it is, 0 if not.\n{INSTRUCTION}\n\n"
                  f"Sentence: {sentence}\n")
        return Example(prompt, str(label), None, self.name)
