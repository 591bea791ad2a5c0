"""GSM8K (test, 1,319 rows): fields `question`, `answer`. The gold answer is the text after
`#### ` with commas stripped; the reasoning before it, without `<<...>>` calculator notes, is the
reference reasoning. Verified numerically (`math` verifier)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import BenchmarkTask, benchmark_prompt
from loramix.tasks.rows import field

_CALC = re.compile(r"<<[^>]*>>")


def split_solution(solution: str) -> tuple[str, str] | None:
    """`"...reasoning...\\n#### 1,234"` -> (reasoning, "1234"); None without `####`."""
    if "####" not in solution:
        return None
    reasoning, final = solution.rsplit("####", 1)
    return _CALC.sub("", reasoning).strip(), final.strip().replace(",", "")


class GSM8KTask(BenchmarkTask):
    name = "gsm8k"
    answer_type = "number"
    verifier = "math"
    description = "grade-school math word problems"
    paper_split, paper_size = "test", 1319

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where)
        parts = split_solution(field(row, "answer", path, where))
        if parts is None:
            raise DataError(path, f"{where}: field 'answer'", "no '#### ' final answer")
        prompt = benchmark_prompt("Solve the math problem; the answer is a number.", f"Question: {question}\n")
        return Example(prompt, parts[1], parts[0] or None, self.name)
