"""`SyntheticTask`: a procedurally generated domain. Subclasses implement `generate(rng, level)`
returning (problem, answer, trace); the prompt is `"{name}: {problem}\\n"` and the reasoning
restates the problem before its trace, `"{problem}\\n{trace}"`::

    add: 482+739
    <think>482+739
    2+9+0=11 8+3+1=12 4+7+1=12|1221</think>
    {"answer": "1221"}

Restating puts each step's operands next to it, so a trace is computed from the same local context
whether its problem stands alone or is one part of a mixed two-domain prompt (measured with
`benchmarks/world_check.py`: with restated traces a 4-layer base answers easy mixed prompts about as
well as single ones).

Splits are disjoint by construction: a problem belongs to the split picked by a hash of its prompt
(80% train, 10% validation, 10% test) and generation rejects problems of other splits. Examples
are deterministic in (split, n, seed, difficulty), and a shorter list is a prefix of a longer one.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from loramix.errors import DataError, LoramixError
from loramix.tasks.base import Example, Task, canonical_split
from loramix.tasks.rows import field, read_rows

LEVELS = {"easy": 1, "medium": 2, "hard": 3}
DEFAULT_N = 1000
_MAX_REJECTS = 10_000


def parse_difficulty(difficulty: str | int) -> int:
    """`easy`/`medium`/`hard` or 1/2/3 -> 1/2/3."""
    if isinstance(difficulty, int) and not isinstance(difficulty, bool) and difficulty in LEVELS.values():
        return difficulty
    if isinstance(difficulty, str) and difficulty in LEVELS:
        return LEVELS[difficulty]
    raise LoramixError(f"unknown difficulty {difficulty!r}; valid: easy, medium, hard (or 1, 2, 3)")


def split_of(prompt: str) -> str:
    """The split a problem belongs to, from a hash of its prompt."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


class SyntheticTask(Task):
    kind = "synthetic"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        """One problem at `level` (1-3): (problem text, gold answer, trace); `examples` puts the
        problem in front of the trace."""
        raise NotImplementedError

    def make_prompt(self, problem: str) -> str:
        return f"{self.name}: {problem}\n"

    def examples(self, split: str = "train", n: int | None = None, *, seed: int = 0,
                 difficulty: str | int = "hard") -> list[Example]:
        split, level = canonical_split(split), parse_difficulty(difficulty)
        n = DEFAULT_N if n is None else n
        rng = random.Random(f"{self.name}|{split}|{seed}|{level}")
        out: list[Example] = []
        rejects = 0
        while len(out) < n:
            problem, answer, reasoning = self.generate(rng, level)
            prompt = self.make_prompt(problem)
            if split_of(prompt) != split:
                rejects += 1
                if rejects > _MAX_REJECTS + 20 * n:  # pragma: no cover - a broken generator
                    raise LoramixError(f"task {self.name!r}: cannot generate {split} problems")
                continue
            out.append(Example(prompt, answer, f"{problem}\n{reasoning}", self.name,
                               {"split": split, "level": level, "seed": seed}))
        return out

    def load(self, path: str | Path, split: str | None = None) -> list[Example]:
        """Rows with fields prompt, answer and optional reasoning (e.g. saved examples)."""
        out = []
        for where, row in read_rows(path, split):
            prompt, answer = field(row, "prompt", path, where), field(row, "answer", path, where)
            reasoning = row.get("reasoning")
            if reasoning is not None and not isinstance(reasoning, str):
                raise DataError(path, f"{where}: field 'reasoning'", "expected str")
            out.append(Example(prompt, answer, reasoning, self.name, {"where": where}))
        return out
