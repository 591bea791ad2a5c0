"""`strings`: reverse a lower-case word. The trace numbers the letters forwards, then reads them
back from the last index:

    strings: rev abc
    <think>1a 2b 3c|3c 2b 1a</think>      (answer cba)
"""

from __future__ import annotations

import random
import string

from loramix.tasks.synthetic.base import SyntheticTask

LENGTHS = {1: (3, 5), 2: (5, 8), 3: (8, 12)}


def reverse_trace(word: str) -> str:
    numbered = [f"{i}{c}" for i, c in enumerate(word, start=1)]
    return " ".join(numbered) + "|" + " ".join(reversed(numbered))


class StringsTask(SyntheticTask):
    name = "strings"
    answer_type = "string"
    verifier = "exact"
    description = "reverse a lower-case word"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*LENGTHS[level])))
        return f"rev {word}", word[::-1], reverse_trace(word)
