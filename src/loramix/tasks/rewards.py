"""The paper's reward, configurable, and an adapter to TRL's reward-function signature.

| event                                   | default |
|-----------------------------------------|---------|
| correct                                 | +1.0    |
| wrong                                   | -1.1    |
| `<think>...</think>` present, in order  | +0.2    |
| wrong, but a JSON answer present        | +0.1    |

So the best score is 1.2 (correct, with a think block) and the worst -1.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loramix.errors import LoramixError
from loramix.tasks.format import has_json_answer, has_think

if TYPE_CHECKING:
    from loramix.tasks.base import Task

RewardFn = Callable[..., list[float]]


@dataclass(frozen=True)
class RewardConfig:
    correct: float = 1.0
    wrong: float = -1.1
    think: float = 0.2
    json_answer: float = 0.1  # only paid when the answer is wrong

    @property
    def max(self) -> float:
        return self.correct + self.think


def score(completion: str, correct: bool, config: RewardConfig = RewardConfig()) -> float:
    """The reward of `completion`, given whether its answer is correct."""
    r = config.correct if correct else config.wrong
    if has_think(completion):
        r += config.think
    if not correct and has_json_answer(completion):
        r += config.json_answer
    return r


def completion_text(completion: Any) -> str:
    """TRL passes a string (standard format) or a list of chat messages (conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def make_reward_fn(task: "Task | None" = None) -> RewardFn:
    """A reward function in TRL's `GRPOTrainer` form: `f(prompts, completions, answer, **kw)`.
    `answer` is the dataset's gold column. With `task=None` each row's task is looked up from
    the `task` column (for mixed-task datasets)."""
    from loramix.tasks.base import Example
    from loramix.tasks.registry import get_task

    fixed = task
    cache: dict[str, Task] = {}

    def task_for(name: str) -> "Task":
        if name not in cache:
            cache[name] = get_task(name)
        return cache[name]

    def reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str] | None = None,
               task: Sequence[str] | None = None, **_: Any) -> list[float]:
        if answer is None:
            raise LoramixError("reward function: the dataset needs an 'answer' column")
        out = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            t = fixed if fixed is not None else task_for(_row_task(task, i))
            ex = Example(prompt=completion_text(prompt), answer=str(answer[i]), task=t.name)
            out.append(t.reward(completion_text(completion), ex))
        return out

    reward.__name__ = f"{task.name}_reward" if task is not None else "task_reward"
    return reward


def _row_task(task: Sequence[str] | None, i: int) -> str:
    if task is None:
        raise LoramixError("reward function: no task given and the dataset has no 'task' column")
    return task[i]
