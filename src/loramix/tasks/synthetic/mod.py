"""`mod`: the remainder of a multi-digit number by a small modulus (2-9 at easy, 7-11 at medium
over the same number of digits: the base pretrained on easy has never divided by 10 or 11, and
those remainder tables are the medium skill). The trace is Horner's rule,
most-significant digit first, one `value%m=remainder` per digit:

    mod: 4837%7
    <think>4837%7
    4%7=4 48%7=6 63%7=0 7%7=0</think>     (answer 0)
"""

from __future__ import annotations

import random

from loramix.tasks.synthetic.base import SyntheticTask

DIGITS = {1: (2, 3), 2: (2, 3), 3: (5, 7)}
MODULI = {1: (2, 9), 2: (7, 11), 3: (7, 19)}


def mod_trace(x: int, m: int) -> str:
    steps, r = [], 0
    for d in str(x):
        v = 10 * r + int(d)
        r = v % m
        steps.append(f"{v}%{m}={r}")
    return " ".join(steps)


class ModTask(SyntheticTask):
    name = "mod"
    answer_type = "integer"
    verifier = "integer"
    description = "remainder of a multi-digit number by a small modulus"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        digits = rng.randint(*DIGITS[level])
        x = rng.randint(10 ** (digits - 1), 10**digits - 1)
        m = rng.randint(*MODULI[level])
        return f"{x}%{m}", str(x % m), mod_trace(x, m)
