"""Checking a data file against a task: every gold answer must pass the task's own verifier when
it is wrapped in the reference completion (what `loramix tasks verify` runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loramix.tasks.base import Task


@dataclass(frozen=True)
class Failure:
    where: str  # "line 12" / "row 12"
    answer: str
    extracted: str | None


@dataclass
class VerifyReport:
    path: str
    checked: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_file(task: Task, path: str | Path, split: str | None = None) -> VerifyReport:
    """Load `path` with the task's loader (bad rows raise DataError) and verify every gold answer."""
    report = VerifyReport(str(path))
    for ex in task.load(path, split):
        completion = task.reference_completion(ex)
        report.checked += 1
        if not task.is_correct(completion, ex):
            report.failures.append(Failure(ex.meta.get("where", "?"), ex.answer, task.extract_answer(completion)))
    return report
