"""`strings`: shift each letter of a lower-case word forward in the alphabet by k, wrapping z to a
(a Caesar shift). The trace maps each letter, then the answer is the shifted word:

    strings: rot3 abz
    <think>rot3 abz
    a>d b>e z>c</think>      (answer dec)

Easy uses shifts 1-3 only; medium draws shifts 2-7 over the same word lengths, hard 1-13 over
longer words. A base pretrained on easy has never applied shifts 4-7: those letter tables are the
medium skill (facts a LoRA on the MLP learns quickly), not longer alignment.

Answers are compared case-insensitively by default (the `text` verifier), as the MoR-LoRA authors'
reward does (`pred.strip().lower() == gold.strip().lower()`). Gold answers are lower-case only, so
this cannot make a wrong answer right: a prediction passes only if it spells exactly the shifted
letters, and case alone carries nothing about the shift. `StringsTask(case_sensitive=True)` (or
`get_task("strings", case_sensitive=True)`) uses the `exact` verifier instead.
"""

from __future__ import annotations

import random
import string

from loramix.tasks.rewards import RewardConfig
from loramix.tasks.synthetic.base import SyntheticTask

LENGTHS = {1: (3, 5), 2: (3, 5), 3: (6, 9)}
SHIFTS = {1: (1, 3), 2: (2, 7), 3: (1, 13)}


def shift_letter(c: str, k: int) -> str:
    return chr((ord(c) - 97 + k) % 26 + 97)


def shift_trace(word: str, k: int) -> str:
    return " ".join(f"{c}>{shift_letter(c, k)}" for c in word)


class StringsTask(SyntheticTask):
    name = "strings"
    answer_type = "string"
    verifier = "text"  # case-insensitive, the authors' rule; "exact" with case_sensitive=True
    description = "Caesar-shift a lower-case word"

    def __init__(self, reward_config: RewardConfig | None = None, *, case_sensitive: bool = False):
        super().__init__(reward_config)
        self.case_sensitive = case_sensitive
        self.verifier = "exact" if case_sensitive else "text"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*LENGTHS[level])))
        k = rng.randint(*SHIFTS[level])
        return f"rot{k} {word}", "".join(shift_letter(c, k) for c in word), shift_trace(word, k)
