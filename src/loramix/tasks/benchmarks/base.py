"""`BenchmarkTask`: a real benchmark read from a local file or `save_to_disk` folder in one of its
published layouts (the Hugging Face export and the original release). Subclasses implement
`from_row`, which tells the layouts apart by each row's fields.

Each split reads its own file: `get_task(name, train=FILE, test=FILE)` (a recipe's
`task_kwargs: {name: {train: FILE, test: FILE}}`, the commands' `--data name:train=FILE`).
`examples("train")` reads the train file; `examples("test")` (and `examples()`) the test file, which
for CoLA and BoolQ, whose test labels are not public, is the benchmark's dev/validation file (the
split the paper evaluates on); `examples("validation")` reads a `validation` file when one is given,
else the test file (stage 1 only watches accuracy on it; nothing is selected by it). `path=FILE`
gives one file (or `save_to_disk` folder) to every split: in a `DatasetDict` folder the split picks
its part, while a flat file is the same rows for every split (the pipeline refuses a recipe that
would then train and evaluate on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import LoramixError
from loramix.tasks.base import Example, Task
from loramix.tasks.rewards import RewardConfig
from loramix.tasks.rows import read_rows

INSTRUCTION = ('Think step by step inside <think></think>, then give the final answer as JSON: '
               '{"answer": "..."}.')
_AFTER_TASK_LINE = f"\n{INSTRUCTION}\n\n"  # between a prompt's task line and its question text


def benchmark_prompt(task_line: str, question: str) -> str:
    """A benchmark prompt: the task's one-line instruction, the answer-format INSTRUCTION, a blank
    line, then the question text. Every benchmark builds its prompt here, so `split_prompt` can take
    it apart again (a mixed prompt merges two without their single-key INSTRUCTION)."""
    return f"{task_line}{_AFTER_TASK_LINE}{question}"


def split_prompt(prompt: str, task: str = "") -> tuple[str, str]:
    """(task line, question text) of a prompt built by `benchmark_prompt`."""
    line, sep, question = prompt.partition(_AFTER_TASK_LINE)
    if not sep:
        raise LoramixError(f"task {task!r}: the prompt is not a benchmark prompt (task line, instruction, "
                           f"question): {prompt[:80]!r}")
    return line, question


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

    def __init__(self, path: str | Path | None = None, reward_config: RewardConfig | None = None, *,
                 train: str | Path | None = None, test: str | Path | None = None,
                 validation: str | Path | None = None):
        super().__init__(reward_config)
        self.path = path
        self.files = {k: v for k, v in (("train", train), ("validation", validation), ("test", test))
                      if v is not None}  # split -> its own file
        self._cache: dict[str | None, list[Example]] = {}

    def source(self, split: str | None) -> tuple[str | Path, str]:
        """(file, the split to pick inside a `DatasetDict` folder) that `split` reads. A split with
        no file of its own (and no `path`) raises a LoramixError naming the task and the split."""
        key = split or "test"
        if key in self.files:  # a folder given for the test split holds the paper's evaluation split
            return self.files[key], self.paper_split if key == "test" else key
        if key == "validation" and "test" in self.files:
            return self.files["test"], self.paper_split
        if self.path is not None:
            return self.path, split or self.paper_split
        raise LoramixError(f"task {self.name!r} needs a data file for its {key} split: get_task({self.name!r}, "
                           f"{key}=FILE), `{key}: FILE` under the recipe's task_kwargs.{self.name}, or "
                           f"--data {self.name}:{key}=FILE")

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
        """The first `n` rows of `split`'s data file (all when `n` is None); seed/difficulty unused."""
        if split not in self._cache:
            path, inner = self.source(split)
            self._cache[split] = self.load(path, inner)
        rows = self._cache[split]
        return rows if n is None else rows[:n]

    def task_line(self, ex: Example) -> str:
        """The prompt's one-line instruction for this task (e.g. GSM8K's "Solve the math problem; the
        answer is a number."), without the answer-format INSTRUCTION."""
        return split_prompt(ex.prompt, self.name)[0]

    def question_text(self, ex: Example) -> str:
        """The prompt's question (with its passage, options or sentence), without any instruction:
        what a merged mixed-domain prompt quotes."""
        return split_prompt(ex.prompt, self.name)[1]
