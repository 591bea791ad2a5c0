"""`BenchmarkTask`: a real benchmark read from a local file or `save_to_disk` folder in one of its
published layouts (the Hugging Face export and the original release). Subclasses implement
`from_row`, which tells the layouts apart by each row's fields. Pass the data with
`get_task(name, path=...)`; `examples(split)` uses `split` only to pick a split out of a
`DatasetDict` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import LoramixError
from loramix.tasks.base import Example, Task
from loramix.tasks.rewards import RewardConfig
from loramix.tasks.rows import read_rows

INSTRUCTION = ('Think step by step inside <think></think>, then give the final answer as JSON: '
               '{"answer": "..."}.')


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def one_line(text: str) -> str:
    """`text` with runs of whitespace (newlines included) made one space and the ends stripped, so
    an option or sentence is one clean line of the prompt."""
    return " ".join(text.split())


class BenchmarkTask(Task):
    kind = "benchmark"
    paper_split: str = "test"  # the split the paper evaluates on
    paper_size: int = 0  # its number of rows
    tsv_columns: tuple[str, ...] | None = None  # the columns of a header-less TSV release

    def __init__(self, path: str | Path | None = None, reward_config: RewardConfig | None = None):
        super().__init__(reward_config)
        self.path = path
        self._cache: dict[str | None, list[Example]] = {}

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        """One raw row -> Example; a missing or bad field raises DataError naming `where`."""
        raise NotImplementedError

    def load(self, path: str | Path, split: str | None = None) -> list[Example]:
        out = []
        for where, row in read_rows(path, split or self.paper_split, tsv_columns=self.tsv_columns):
            ex = self.from_row(row, path, where)
            out.append(Example(ex.prompt, ex.answer, ex.reasoning, self.name, {"where": where}))
        return out

    def examples(self, split: str | None = None, n: int | None = None, *, seed: int = 0,
                 difficulty: str | int = "hard") -> list[Example]:
        """The first `n` rows of the data file (all when `n` is None); seed/difficulty unused."""
        if self.path is None:
            raise LoramixError(f"task {self.name!r} needs a data file: get_task({self.name!r}, path=...)")
        if split not in self._cache:
            self._cache[split] = self.load(self.path, split)
        rows = self._cache[split]
        return rows if n is None else rows[:n]
