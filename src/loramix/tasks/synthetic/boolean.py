"""`bool`: bitwise logic on equal-length strings of truth values T/F, chained left to right with
`&` (and), `|` (or), `#` (nand), `@` (nor), and at hard also `^` (xor) and `~` (xnor). The answer
is the resulting T/F string (not a single label, so no answer is a majority class: a constant
guess is right with chance 2^-length). The trace applies the operator position by position, one `x op y=z` per position, and
separates the steps of a chain with `, `:

    bool: TFTT#FTTF
    <think>TFTT#FTTF
    T#F=T F#T=T T#T=F T#F=T</think>     (answer TTFT)

Easy problems use only `&` and `|`; medium has the same sizes (two operands of 3-5 values) but
draws from `&`, `|`, `#` and `@` (the new two twice as often, so two thirds of medium problems need
a table the base never saw); hard chains 2-3 operands of 6-8 values over all six operators. A
base pretrained on easy has never seen `#` or `@`: their truth tables are the medium skill (a few
facts a rank-8 LoRA on the MLP learns in a minute), not longer alignment. (xor and xnor, which no
single threshold separates, were measured not to be learnable that fast, so medium leaves them
out.)
"""

from __future__ import annotations

import random

from loramix.tasks.synthetic.base import SyntheticTask

OPERANDS = {1: (2, 2), 2: (2, 2), 3: (2, 3)}
LENGTHS = {1: (3, 5), 2: (3, 5), 3: (6, 8)}
OPERATORS = {1: "&|", 2: "&|#@#@", 3: "&|#@^~"}  # drawn uniformly by position: medium # and @ twice as often
_APPLY = {"&": lambda a, b: a and b, "|": lambda a, b: a or b, "^": lambda a, b: a != b,
          "~": lambda a, b: a == b, "#": lambda a, b: not (a and b), "@": lambda a, b: not (a or b)}


def render(values: list[bool]) -> str:
    return "".join("T" if v else "F" for v in values)


def apply_op(op: str, a: list[bool], b: list[bool]) -> list[bool]:
    """The positionwise `a op b`."""
    return [_APPLY[op](x, y) for x, y in zip(a, b)]


def bool_trace(operands: list[list[bool]], ops: list[str]) -> tuple[str, str]:
    """(trace, answer) for `operands[0] ops[0] operands[1] ...`, evaluated left to right."""
    value, steps = operands[0], []
    for op, nxt in zip(ops, operands[1:]):
        new = apply_op(op, value, nxt)
        steps.append(" ".join(f"{render([x])}{op}{render([y])}={render([z])}" for x, y, z in zip(value, nxt, new)))
        value = new
    return ", ".join(steps), render(value)


class BoolTask(SyntheticTask):
    name = "bool"
    answer_type = "T/F string"
    verifier = "exact"
    description = "bitwise logic on T/F strings (and, or, xor, xnor)"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        width = rng.randint(*LENGTHS[level])
        k = rng.randint(*OPERANDS[level])
        operands = [[rng.random() < 0.5 for _ in range(width)] for _ in range(k)]
        ops = [rng.choice(OPERATORS[level]) for _ in range(k - 1)]
        trace, answer = bool_trace(operands, ops)
        problem = render(operands[0]) + "".join(op + render(v) for op, v in zip(ops, operands[1:]))
        return problem, answer, trace
