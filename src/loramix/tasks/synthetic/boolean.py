"""`bool`: evaluate a boolean expression over T/F with `&` (and), `|` (or), `^` (xor) and `!`
(not); nested binary operations are parenthesised. The trace rewrites the expression one
operator at a time (leftmost innermost first), separated by `=`:

    bool: (T&F)|!(F^T)
    <think>F|!(F^T)=F|!T=F|F=F</think>     (answer F)
"""

from __future__ import annotations

import random
from typing import Union

from loramix.tasks.synthetic.base import SyntheticTask

Node = Union[bool, tuple]  # a literal, ("!", child) or (op, left, right)
OPERATORS = {1: (2, 3), 2: (3, 5), 3: (5, 7)}
_APPLY = {"&": lambda a, b: a and b, "|": lambda a, b: a or b, "^": lambda a, b: a != b}


def random_expr(rng: random.Random, ops: int) -> Node:
    """A random expression with exactly `ops` operators."""
    if ops == 0:
        return rng.random() < 0.5
    if rng.random() < 0.25:
        return ("!", random_expr(rng, ops - 1))
    left = rng.randint(0, ops - 1)
    return (rng.choice("&|^"), random_expr(rng, left), random_expr(rng, ops - 1 - left))


def render(node: Node, top: bool = True) -> str:
    if isinstance(node, bool):
        return "T" if node else "F"
    if node[0] == "!":
        return "!" + render(node[1], top=False)
    text = render(node[1], top=False) + node[0] + render(node[2], top=False)
    return text if top else f"({text})"


def reduce_once(node: Node) -> Node:
    """Apply the leftmost operator whose operands are all literals."""
    if node[0] == "!":
        child = node[1]
        return (not child) if isinstance(child, bool) else ("!", reduce_once(child))
    op, left, right = node
    if isinstance(left, bool) and isinstance(right, bool):
        return _APPLY[op](left, right)
    if not isinstance(left, bool):
        return (op, reduce_once(left), right)
    return (op, left, reduce_once(right))


def bool_trace(node: Node) -> tuple[str, str]:
    """(trace, answer) for an expression that has at least one operator."""
    steps = []
    while not isinstance(node, bool):
        node = reduce_once(node)
        steps.append(render(node))
    return "=".join(steps), render(node)


class BoolTask(SyntheticTask):
    name = "bool"
    answer_type = "T/F"
    verifier = "bool"
    description = "evaluate a boolean expression"

    def generate(self, rng: random.Random, level: int) -> tuple[str, str, str]:
        expr = random_expr(rng, rng.randint(*OPERATORS[level]))
        trace, answer = bool_trace(expr)
        return render(expr), answer, trace
