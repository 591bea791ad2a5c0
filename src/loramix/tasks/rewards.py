"""The paper's reward, configurable. Its adapter to TRL's reward-function signature is
`base.trl_reward_fn` (behind `Task.reward_fn` and `registry.make_reward_fn`).

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
from typing import Any, Callable

from loramix.tasks.format import has_json_answer, has_think

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
