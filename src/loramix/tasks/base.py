"""`Example` and the `Task` base class: a task yields examples and knows how to check and reward
a completion for one of them. Subclasses override `examples` (and `load` for file-backed tasks)
and set the class attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loramix.errors import LoramixError, unknown_name
from loramix.tasks.format import extract_answer, format_completion
from loramix.tasks.rewards import RewardConfig, RewardFn, completion_text, score
from loramix.tasks.verifiers import get_verifier

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "validation", "test")
# The difficulty the pipeline trains and evaluates at (``Recipe.difficulty`` / ``eval_difficulty``) and
# the default of ``loramix evaluate`` / ``analyze``: one value, so their numbers agree.
DEFAULT_DIFFICULTY = "medium"
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


def canonical_split(split: str) -> str:
    """`train`, `validation` (or `val`/`valid`/`dev`) or `test`."""
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    return s


@dataclass(frozen=True)
class Example:
    prompt: str  # the full prompt text given to the model (already templated)
    answer: str  # gold answer
    reasoning: str | None = None  # reference reasoning (content of <think>), if any
    task: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class. `verifier` names a function in `loramix.tasks.verifiers`."""

    name: str = ""
    kind: str = "user"  # synthetic | benchmark | user
    answer_type: str = "text"
    verifier: str = "exact"
    description: str = ""

    def __init__(self, reward_config: RewardConfig | None = None):
        self.reward_config = reward_config or RewardConfig()

    def examples(self, split: str = "train", n: int | None = None, *, seed: int = 0,
                 difficulty: str | int = "hard") -> list[Example]:
        raise NotImplementedError

    def load(self, path: str | Path, split: str | None = None) -> list[Example]:
        """Examples from a data file in this task's raw layout (`meta["line"]` set per row)."""
        raise LoramixError(f"task {self.name!r} cannot load data files")

    def reference_completion(self, ex: Example) -> str:
        return format_completion(ex.reasoning, ex.answer)

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def check(self, pred: str | None, gold: str) -> bool:
        """Whether an extracted answer matches the gold answer, by this task's verifier."""
        return get_verifier(self.verifier)(pred, gold)

    def is_correct(self, completion: str, ex: Example) -> bool:
        return self.check(self.extract_answer(completion), ex.answer)

    def reward(self, completion: str, ex: Example) -> float:
        return score(completion, self.is_correct(completion, ex), self.reward_config)

    def reward_fn(self) -> RewardFn:
        """This task's reward in TRL GRPOTrainer form (see `trl_reward_fn`)."""
        return trl_reward_fn(lambda _column, _i: self, f"{self.name}_reward")

    def to_dataset(self, split: str = "train", n: int | None = None, **kwargs: Any) -> "datasets.Dataset":
        """A `datasets.Dataset` with columns prompt, answer, task and completion (the reference)."""
        return examples_to_dataset(self, self.examples(split, n, **kwargs))


TaskFor = Callable[[Sequence[str] | None, int], Task]


def trl_reward_fn(task_for: TaskFor, name: str) -> RewardFn:
    """A reward function in TRL's `GRPOTrainer` form: `f(prompts, completions, answer, **kw)`, named
    `name`. `answer` is the dataset's gold column; row `i` is scored by `task_for(task, i)`, where
    `task` is the dataset's task column (None when it has none)."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str] | None = None,
               task: Sequence[str] | None = None, **_: Any) -> list[float]:
        if answer is None:
            raise LoramixError("reward function: the dataset needs an 'answer' column")
        out = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            t = task_for(task, i)
            ex = Example(prompt=completion_text(prompt), answer=str(answer[i]), task=t.name)
            out.append(t.reward(completion_text(completion), ex))
        return out

    reward.__name__ = name
    return reward


def examples_to_dataset(task: Task, examples: list[Example]) -> "datasets.Dataset":
    import datasets

    return datasets.Dataset.from_dict({
        "prompt": [e.prompt for e in examples],
        "answer": [e.answer for e in examples],
        "task": [e.task or task.name for e in examples],
        "completion": [task.reference_completion(e) for e in examples],
    })
