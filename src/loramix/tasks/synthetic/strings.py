"""`strings`: shift each letter of a lower-case word forward in the alphabet by k, wrapping z to a
(a Caesar shift). The trace maps each letter, then the answer is the shifted word:

    strings: rot3 abz
    <think>a>d b>e z>c</think>      (answer dec)

Easy uses shifts 1-3 only; medium draws shifts 2-7 over the same word lengths, hard 1-13 over
longer words. A base pretrained on easy has never applied shifts 4-7: those letter tables are the
medium skill (facts a LoRA on the MLP learns quickly), not longer alignment.
"""

from __future__ import annotations

import random
import string

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
    verifier = "exact"
    description = "Caesar-shift a lower-case word"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*LENGTHS[level])))
        k = rng.randint(*SHIFTS[level])
        return f"rot{k} {word}", "".join(shift_letter(c, k) for c in word), shift_trace(word, k)
