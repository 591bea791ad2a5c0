"""`sort`: sort a list of numbers ascending (single digits at easy and medium, up to 99 at hard;
easy lists have 3-5 items, medium 5-7, so the base pretrained on easy has never sorted 6 or 7).
The trace is insertion sort, one sorted prefix per step, separated by `|`:

    sort: 52 7 31 9
    <think>52 7 31 9
    7 52|7 31 52|7 9 31 52</think>
"""

from __future__ import annotations

import bisect
import random

from loramix.tasks.synthetic.base import SyntheticTask

SIZES = {1: (3, 5), 2: (5, 7), 3: (6, 8)}
MAX_VALUE = {1: 9, 2: 9, 3: 99}


def sort_trace(values: list[int]) -> str:
    prefix: list[int] = [values[0]]
    steps = []
    for v in values[1:]:
        bisect.insort(prefix, v)
        steps.append(" ".join(map(str, prefix)))
    return "|".join(steps)


class SortTask(SyntheticTask):
    name = "sort"
    answer_type = "number list"
    verifier = "list"
    description = "sort a list of numbers ascending"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        lo, hi = SIZES[level]
        values = [rng.randint(0, MAX_VALUE[level]) for _ in range(rng.randint(lo, hi))]
        return " ".join(map(str, values)), " ".join(map(str, sorted(values))), sort_trace(values)
