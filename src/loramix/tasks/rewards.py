"""The paper's reward, configurable. Its adapter to TRL's reward-function signature is
`base.trl_reward_fn` (behind `Task.reward_fn` and `registry.make_reward_fn`).

| event                                                               | default |
|---------------------------------------------------------------------|---------|
| correct                                                             | +1.0    |
| wrong                                                               | -1.1    |
| `<think>...</think>` closed before a non-empty answer               | +0.2    |
| wrong, a non-empty JSON answer (by default: and no think bonus paid)| +0.1    |

How the two bonuses combine is `RewardConfig.bonuses`:

| `bonuses`               | rule                                                              | wrong + think + JSON |
|-------------------------|-------------------------------------------------------------------|----------------------|
| `"exclusive"` (default) | the think bonus, else (wrong and JSON) the JSON bonus, else 0     | -0.9                 |
| `"both"`                | each bonus paid on its own (loramix's earlier rule)               | -0.8                 |

`"exclusive"` is the authors' released rule, `compute_reward` in `lora_offline/reward.py` of
sar-molavi/hard-routed-mor-lora (`if has_think_tags: bonus = bonus_think; elif not is_correct and
has_json: bonus = bonus_json_on_wrong; else: bonus = 0.0`). Under either rule the best score is 1.2
(correct, with a think block) and the worst -1.1 (wrong, neither).

Detection is stricter than the authors' code, on purpose: the bonuses reward the prompted format
(think, then `{"answer": ...}`), and on completions in that format the two agree.

* "has JSON" is `format.has_json_answer`: the answer `extract_answer` reads comes from a JSON
  object's `"answer"` field and is not empty (`""`, whitespace, `[]`, `{}`, null earn nothing). The
  authors test whether any JSON object or array at all parses (`extract_last_json(...) is not
  None`), so `{}`, `[1]` or `{"answer": ""}` would earn their bonus.
* "has think" is `format.think_before_answer`: the first `<think>` and the next `</think>` close
  before the answer starts (before its JSON object), and the answer is not empty. The authors
  compare the first `<think>` with the first `</think>` wherever the answer stands, so
  `{"answer": "5"}<think>x</think>` earns their think bonus but not this one, and
  `</think><think>x</think>{"answer": "5"}` earns this one but not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from loramix.errors import LoramixError
from loramix.tasks.format import has_json_answer, think_before_answer

RewardFn = Callable[..., list[float]]

BONUS_RULES = ("exclusive", "both")


@dataclass(frozen=True)
class RewardConfig:
    """Reward values and how the bonuses combine (`bonuses`: "exclusive", the authors' rule and the
    default, or "both", loramix's earlier rule; see the module docstring)."""

    correct: float = 1.0
    wrong: float = -1.1
    think: float = 0.2
    json_answer: float = 0.1  # only paid when the answer is wrong
    bonuses: str = "exclusive"

    def __post_init__(self):
        if self.bonuses not in BONUS_RULES:
            raise LoramixError(
                f"reward bonuses: unknown rule {self.bonuses!r}; valid: {', '.join(BONUS_RULES)}")

    @property
    def max(self) -> float:
        return self.correct + self.think


def score(completion: str, correct: bool, config: RewardConfig = RewardConfig()) -> float:
    """The reward of `completion`, given whether its answer is correct."""
    r = config.correct if correct else config.wrong
    think = think_before_answer(completion)
    if think:
        r += config.think
    if not correct and (config.bonuses == "both" or not think) and has_json_answer(completion):
        r += config.json_answer
    return r


def completion_text(completion: Any) -> str:
    """TRL passes a string (standard format) or a list of chat messages (conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)
