"""`JsonlTask`: a user task read from a JSONL/JSON/parquet file plus a verifier name. Each row
has a prompt field and an answer field (names configurable) and an optional reasoning field. An
optional `template` (`str.format` with the row's fields) builds the prompt instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError, LoramixError
from loramix.tasks.base import Example, Task
from loramix.tasks.rewards import RewardConfig
from loramix.tasks.rows import field, read_rows
from loramix.tasks.verifiers import get_verifier


class JsonlTask(Task):
    kind = "user"

    def __init__(self, name: str, path: str | Path | None, verifier: str = "exact", *,
                 prompt_field: str = "prompt", answer_field: str = "answer",
                 reasoning_field: str = "reasoning", template: str | None = None,
                 answer_type: str = "text", reward_config: RewardConfig | None = None):
        super().__init__(reward_config)
        get_verifier(verifier)  # fail early on an unknown verifier name
        self.name, self.path, self.verifier, self.answer_type = name, path, verifier, answer_type
        self.prompt_field, self.answer_field, self.reasoning_field = prompt_field, answer_field, reasoning_field
        self.template = template
        self.description = f"user task from {path}"

    def _prompt(self, row: dict[str, Any], path: str | Path, where: str) -> str:
        if self.template is None:
            return field(row, self.prompt_field, path, where)
        try:
            return self.template.format(**row)
        except KeyError as err:
            raise DataError(path, f"{where}: field {err.args[0]!r}", "missing (used by the template)") from None

    def load(self, path: str | Path, split: str | None = None) -> list[Example]:
        out = []
        for where, row in read_rows(path, split):
            answer = field(row, self.answer_field, path, where, (str, int, float, bool))
            answer = ("true" if answer else "false") if isinstance(answer, bool) else str(answer)
            reasoning = row.get(self.reasoning_field)
            if reasoning is not None and not isinstance(reasoning, str):
                raise DataError(path, f"{where}: field {self.reasoning_field!r}", "expected str")
            out.append(Example(self._prompt(row, path, where), answer, reasoning, self.name, {"where": where}))
        return out

    def examples(self, split: str | None = None, n: int | None = None, *, seed: int = 0,
                 difficulty: str | int = "hard") -> list[Example]:
        """The first `n` rows of the file (all when `n` is None)."""
        if self.path is None:
            raise LoramixError(f"task {self.name!r} has no data file")
        rows = self.load(self.path, split)
        return rows if n is None else rows[:n]
