"""CoLA (validation, 1,043 rows): a `sentence` and its `label` (1 acceptable, 0 not), in any of
the published layouts:
- Hugging Face / GLUE JSONL or parquet: fields `sentence`, `label` (an int);
- the raw release (`in_domain_dev.tsv`, also GLUE's `CoLA/dev.tsv`): TSV with no header and four
  columns: source, label, original mark (`*`, `?`, or empty), sentence;
- a TSV with a header line naming at least `sentence` and `label`.
Verified by 0/1 match (`binary` verifier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import BenchmarkTask, benchmark_prompt, one_line
from loramix.tasks.rows import field


class CoLATask(BenchmarkTask):
    name = "cola"
    answer_type = "0/1"
    verifier = "binary"
    description = "CoLA grammatical acceptability"
    paper_split, paper_size = "validation", 1043
    tsv_columns = ("source", "label", "mark", "sentence")

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        sentence = one_line(field(row, "sentence", path, where))
        if not sentence:
            raise DataError(path, f"{where}: field 'sentence'", "empty")
        if row.get("label") is None:  # e.g. GLUE's test.tsv (index, sentence)
            raise DataError(path, f"{where}: field 'label'", "missing (a file without labels cannot be checked)")
        label = field(row, "label", path, where, (int, str))
        if isinstance(label, bool) or str(label).strip() not in ("0", "1"):
            raise DataError(path, f"{where}: field 'label'", f"expected 0 or 1, got {label!r}")
        prompt = benchmark_prompt("Is the sentence grammatically acceptable? Answer 1 if it is, 0 if not.",
                                  f"Sentence: {sentence}\n")
        return Example(prompt, str(label).strip(), None, self.name)
