"""`add`: multi-digit addition with carries (operands of 2-3 digits at easy, 2-4 at medium: a base
pretrained on easy has never added a 4-digit number). The trace works least-significant digit
first, one column per step as `a+b+carry=two-digit sum` (`2+9+0=11`), then the answer:

    add: 482+739
    <think>482+739
    2+9+0=11 8+3+1=12 4+7+1=12|1221</think>
"""

from __future__ import annotations

import random

from loramix.tasks.synthetic.base import SyntheticTask

DIGITS = {1: (2, 3), 2: (2, 4), 3: (4, 6)}


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def add_trace(a: int, b: int) -> str:
    sa, sb = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(sa), len(sb))):
        da = int(sa[i]) if i < len(sa) else 0
        db = int(sb[i]) if i < len(sb) else 0
        s = da + db + carry
        steps.append(f"{da}+{db}+{carry}={s:02d}")
        carry = s // 10
    return " ".join(steps) + f"|{a + b}"


class AddTask(SyntheticTask):
    name = "add"
    answer_type = "integer"
    verifier = "integer"
    description = "multi-digit addition with carries"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        lo, hi = DIGITS[level]
        a, b = _number(rng, rng.randint(lo, hi)), _number(rng, rng.randint(lo, hi))
        return f"{a}+{b}", str(a + b), add_trace(a, b)
