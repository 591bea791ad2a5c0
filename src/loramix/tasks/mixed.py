"""Mixed-domain prompts: two sub-questions from two domains in one prompt, answered by one JSON
object with a named key per domain (the paper's merged GSM8K+BoolQ template, here for any two
tasks). The order of the two parts is drawn per example from the seed, as the authors do::

    prompt     = {prompt_first}{prompt_second}keys: {first}_answer {second}_answer\\n
    completion = <think>{reasoning_first};{reasoning_second}</think>
                 {"{first}_answer": "...", "{second}_answer": "..."}

for example::

    add: 482+739
    bool: (T&F)|!(F^T)
    keys: add_answer bool_answer
    <think>...;...</think>
    {"add_answer": "1221", "bool_answer": "F"}

Two *benchmark* tasks (GSM8K + BoolQ, the authors' ``mixed_eval``) cannot be concatenated: each
benchmark prompt carries its own instruction to answer ``{"answer": "..."}``. Their mixed prompt is
one merged template instead, built from each task's line and question text without that
instruction (``BenchmarkTask.task_line`` / ``question_text``), with ONE instruction naming both
keys, placed before the questions as in the authors' template::

    You are an AI assistant that performs two tasks, in this order:

    1. Solve the math problem; the answer is a number.
    2. Read the passage and answer the question with true or false.

    Think through both tasks step by step inside <think></think>, then give both final answers as
    one JSON object: {"gsm8k_answer": "...", "boolq_answer": "..."}.      (one line)

    ## Input

    Task 1:
    Question: ...

    Task 2:
    Passage: ...
    Question: ...?

Its examples are a seeded random draw of rows from each task (the authors shuffle each file with
their seed). A benchmark mixes only with another benchmark.

A mixed prompt is correct only when both keys hold answers that pass their own task's checker.
A pair is named ``"a+b"`` whatever the order inside each prompt.

``prompt_segments``, ``segment_at`` and ``completion_segments`` say which sub-question each character
of a prompt and completion belongs to (``prompt_token_segments`` per token), the
ground truth of the ``segment`` routing (segment oracle) and of the routing analysis:
the prompt's lines belong to their part (in a merged template: the header to the first part, each
numbered task line and each question to its own part); in the ``keys:`` line (the merged
instruction) and after ``</think>`` a character belongs to the part whose key was written last (the
first part's before any key); inside ``<think>`` the characters up to the ``;`` belong to the first
part and the rest to the second.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Sequence

from loramix.errors import LoramixError
from loramix.tasks.format import THINK_CLOSE, THINK_OPEN, format_completion, has_think, json_objects

MIXED_SEP = "+"  # "add+sort" names a mixed pair
THINK_SEP = ";"  # between the two parts' reasoning (no synthetic trace uses it)
KEYS_PREFIX = "keys: "
KEYED = None  # a prompt piece whose characters belong to the part whose key was written last
MERGED_HEADER = "You are an AI assistant that performs two tasks, in this order:\n\n"
MERGED_INSTRUCTION = ('Think through both tasks step by step inside <think></think>, then give both final answers '
                      'as one JSON object: {{"{first}": "...", "{second}": "..."}}.')


def answer_key(task_name: str) -> str:
    """The JSON key of a task's answer in a mixed completion: ``add`` -> ``add_answer``."""
    return f"{task_name}_answer"


def _task(task):
    from loramix.tasks.registry import get_task

    return get_task(task) if isinstance(task, str) else task


def is_benchmark(task) -> bool:
    """Whether a task's prompts carry their own answer instruction (a ``BenchmarkTask``)."""
    from loramix.tasks.benchmarks.base import BenchmarkTask

    return isinstance(task, BenchmarkTask)


def _check_pair(ta, tb) -> None:
    """Two different tasks, both benchmarks or neither (a benchmark's prompt carries its own
    single-key instruction, so only another benchmark's can be merged with it)."""
    name = f"{ta.name}{MIXED_SEP}{tb.name}"
    if ta.name == tb.name:
        raise LoramixError(f"mixed pair {name}: a mixed prompt needs two different tasks")
    if is_benchmark(ta) != is_benchmark(tb):
        bench, other = (ta, tb) if is_benchmark(ta) else (tb, ta)
        raise LoramixError(f"mixed pair {name}: {bench.name!r} is a benchmark task, whose prompt carries its own "
                           f"answer instruction; it mixes only with another benchmark task, not {other.name!r}")


@dataclass(frozen=True)
class MixedExample:
    """Two tasks' examples in one prompt. ``a`` and ``b`` follow the pair's name (``a+b``);
    ``order`` gives the parts as they stand in the prompt. ``answer`` is the JSON of both gold
    answers under their keys, so training code treats a mixed example like any other."""

    prompt: str
    a: Any  # loramix.tasks.Example
    b: Any
    task: str  # "task_a+task_b"
    swapped: bool = False  # True: b's sub-question comes first
    pieces: tuple = ()  # ((text, part 0/1 or KEYED), ...) whose texts join to ``prompt``; () = concatenated

    @property
    def prompt_pieces(self) -> tuple:
        """The prompt as (text, part) pieces: ``pieces``, or for a concatenated prompt its two
        sub-prompts and the ``keys:`` line."""
        if self.pieces:
            return self.pieces
        first, second = self.order
        n = len(first.prompt) + len(second.prompt)
        return ((first.prompt, 0), (second.prompt, 1), (self.prompt[n:], KEYED))

    @property
    def order(self) -> tuple:
        return (self.b, self.a) if self.swapped else (self.a, self.b)

    @property
    def keys(self) -> tuple[str, str]:
        return tuple(answer_key(p.task) for p in self.order)  # type: ignore[return-value]

    @property
    def answer(self) -> str:
        return json.dumps({answer_key(p.task): p.answer for p in self.order})

    @property
    def reasoning(self) -> str:
        first, second = self.order
        return f"{first.reasoning or ''}{THINK_SEP}{second.reasoning or ''}"

    @property
    def parts(self) -> tuple:
        return (self.a, self.b)

    @property
    def meta(self) -> dict:
        return {"swapped": self.swapped}


def mixed_prompt(first, second) -> str:
    """The concatenated prompt of two (non-benchmark) examples, in this order."""
    return f"{first.prompt}{second.prompt}{KEYS_PREFIX}{answer_key(first.task)} {answer_key(second.task)}\n"


def merged_pieces(first_task, first, second_task, second) -> tuple:
    """The merged template of two benchmark examples, in this order, as (text, part) pieces: the
    header, each task's line, ONE instruction naming both keys, then each question under its
    number (the authors' layout: the instructions first, the input last)."""
    instruction = MERGED_INSTRUCTION.format(first=answer_key(first.task), second=answer_key(second.task))
    return ((MERGED_HEADER, 0),
            (f"1. {first_task.task_line(first)}\n", 0),
            (f"2. {second_task.task_line(second)}\n\n", 1),
            (f"{instruction}\n\n", KEYED),
            (f"## Input\n\nTask 1:\n{first_task.question_text(first)}", 0),
            (f"\nTask 2:\n{second_task.question_text(second)}", 1))


def _draw(task, split: str, n: int, rng: random.Random) -> list:
    """``n`` of a benchmark's rows drawn at random (all of them, shuffled, when it has fewer)."""
    rows = task.examples(split, None)
    return [rows[i] for i in rng.sample(range(len(rows)), min(n, len(rows)))]


def mixed_examples(task_a, task_b, split: str = "test", n: int = 100, seed: int = 0,
                   difficulty: str | int = "hard") -> list[MixedExample]:
    """``n`` mixed prompts; which part comes first is drawn per example from ``seed``.
    Synthetic (and user) tasks: the i-th example of ``task_a`` with the i-th of ``task_b`` (drawn
    with ``seed + 1``), concatenated. Benchmarks: a random draw of rows from each (by ``seed``; as
    many prompts as the smaller draw), in the merged template."""
    ta, tb = _task(task_a), _task(task_b)
    _check_pair(ta, tb)
    rng = random.Random(f"mixed|{ta.name}|{tb.name}|{split}|{seed}")
    merged = is_benchmark(ta)
    if merged:
        xs, ys = _draw(ta, split, n, rng), _draw(tb, split, n, rng)
    else:
        xs = ta.examples(split, n, seed=seed, difficulty=difficulty)
        ys = tb.examples(split, n, seed=seed + 1, difficulty=difficulty)
    name = f"{ta.name}{MIXED_SEP}{tb.name}"
    out = []
    for x, y in zip(xs, ys):
        swapped = rng.random() < 0.5
        if merged:
            pieces = merged_pieces(tb, y, ta, x) if swapped else merged_pieces(ta, x, tb, y)
            out.append(MixedExample("".join(t for t, _ in pieces), x, y, name, swapped, pieces))
        else:
            out.append(MixedExample(mixed_prompt(*((y, x) if swapped else (x, y))), x, y, name, swapped))
    return out


def with_public_partners(examples: Sequence, task, share: float, seed: int = 0,
                         partner_difficulty: str | int = "easy") -> list:
    """``examples`` of a synthetic ``task`` with a ``share`` of them (every ``1/share``-th, by a seeded
    draw) turned into mixed prompts: the example beside a partner from another built-in synthetic
    domain at ``partner_difficulty``, in a random order. The partners are the embedded base's own
    pretraining level, public data, so an expert trained this way still uses no other team's data;
    it learns where its part stands in the two-key format (the ``;`` after its trace, its key in
    the JSON) instead of only the one-key format."""
    from loramix.tasks.synthetic import SYNTHETIC_TASKS, SyntheticTask

    task = _task(task)
    if not 0 <= share < 1:
        raise LoramixError(f"mixed share {share!r}: must be in [0, 1)")
    if share and not isinstance(task, SyntheticTask):
        raise LoramixError(f"mixed share: task {task.name!r} is not a built-in synthetic domain; public "
                           f"partners exist only for {', '.join(SYNTHETIC_TASKS)}")
    if not share:
        return list(examples)
    rng = random.Random(f"partners|{task.name}|{seed}")
    others = [name for name in SYNTHETIC_TASKS if name != task.name]
    picks = [i for i in range(len(examples)) if rng.random() < share]
    pools = {name: iter(_task(name).examples("train", len(picks), seed=seed, difficulty=partner_difficulty))
             for name in others}
    out = list(examples)
    for i in picks:
        partner = next(pools[rng.choice(others)])
        swapped = rng.random() < 0.5
        first, second = (partner, examples[i]) if swapped else (examples[i], partner)
        out[i] = MixedExample(mixed_prompt(first, second), examples[i], partner,
                              f"{task.name}{MIXED_SEP}{partner.task}", swapped)
    return out


def mixed_reference_completion(ex: MixedExample) -> str:
    """``<think>{r_first};{r_second}</think>\\n{"first_answer": ..., "second_answer": ...}``."""
    return f"{THINK_OPEN}{ex.reasoning}{THINK_CLOSE}\n{ex.answer}"


def mixed_answers(completion: str, keys: Sequence[str]) -> tuple[str | None, ...]:
    """The value of each key: from the last JSON object holding it after the last ``</think>``,
    else anywhere in the completion. None where absent or null."""
    tail = completion.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in completion else None
    out: list[str | None] = []
    for key in keys:
        value = None
        for text in (tail, completion):
            if text is None:
                continue
            objs = [o for o in json_objects(text) if key in o]
            if objs:
                value = objs[-1][key]
                break
        out.append(None if value is None else value.strip() if isinstance(value, str) else json.dumps(value))
    return tuple(out)


# --- which part each character belongs to --------------------------------------------------------


def _keyed_labels(text: str, keys: Sequence[str], start: int) -> list[int]:
    """Per character: the index (in ``keys``) of the key written last up to and including it;
    ``start`` before any."""
    labels, current = [], start
    for i in range(len(text)):
        for j, key in enumerate(keys):
            if text.endswith(key, 0, i + 1):
                current = j
        labels.append(current)
    return labels


def segment_at(completion: str, i: int, keys: Sequence[str]) -> int:
    """The part (0: the prompt's first, 1: its second) of character ``i`` of a (possibly
    unfinished) mixed completion: inside ``<think>`` the ``;`` opens the second part's reasoning;
    after ``</think>`` the key written last up to ``i`` decides (the think block's last part
    before any key)."""
    close = completion.find(THINK_CLOSE)
    end = len(completion) if close < 0 else close + len(THINK_CLOSE)
    sep = completion.find(THINK_SEP, 0, end)
    if i < end:
        return 0 if sep < 0 or i < sep else 1
    last, part = -1, 0 if sep < 0 else 1
    for j, key in enumerate(keys):
        at = completion.rfind(key, end, i + 1)
        if at >= 0 and at + len(key) > last:
            last, part = at + len(key), j
    return part


def completion_segments(completion: str, keys: Sequence[str]) -> list[int]:
    """``segment_at`` for every character of ``completion``."""
    return [segment_at(completion, i, keys) for i in range(len(completion))]


def prompt_segments(ex: MixedExample) -> list[int]:
    """For each character of ``ex.prompt``: 0 for the first part, 1 for the second (by its pieces;
    in a keyed piece, the part whose key was written last)."""
    labels: list[int] = []
    for text, part in ex.prompt_pieces:
        labels += _keyed_labels(text, ex.keys, 0) if part is KEYED else [part] * len(text)
    return labels


def token_spans(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """The character span of each token in the decoding of ``ids`` (by incremental decoding, so
    it works for any tokenizer); a token that decodes to nothing gets an empty span."""
    spans, end = [], 0
    text = ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        spans.append((end, max(end, len(text))))
        end = max(end, len(text))
    return spans


def labels_to_tokens(char_labels: Sequence[int], spans: Sequence[tuple[int, int]], default: int = 0) -> list[int]:
    """A token's part is the part of its first character (``default`` for an empty span)."""
    out, last = [], default
    for s, e in spans:
        if e > s and s < len(char_labels):
            last = char_labels[s]
        out.append(last)
    return out


def prompt_token_segments(ex: MixedExample, tokenizer, ids: Sequence[int]) -> list[int]:
    """The part (0 or 1) of each token of ``ex.prompt``, given as token ``ids``."""
    return labels_to_tokens(prompt_segments(ex), token_spans(tokenizer, ids))


class MixedTask:
    """Two tasks answered in one completion; each part is checked by its own task."""

    def __init__(self, task_a, task_b):
        self.task_a, self.task_b = _task(task_a), _task(task_b)
        _check_pair(self.task_a, self.task_b)
        self.name = f"{self.task_a.name}{MIXED_SEP}{self.task_b.name}"
        self.parts = (self.task_a, self.task_b)
        self.keys = (answer_key(self.task_a.name), answer_key(self.task_b.name))

    def examples(self, split: str = "test", n: int | None = 100, *, seed: int = 0,
                 difficulty: str | int = "hard") -> list[MixedExample]:
        return mixed_examples(self.task_a, self.task_b, split, 100 if n is None else n, seed, difficulty)

    def reference_completion(self, ex: MixedExample) -> str:
        return mixed_reference_completion(ex)

    def answers(self, completion: str) -> tuple[str | None, str | None]:
        """(answer of a, answer of b), read from their keys."""
        return mixed_answers(completion, self.keys)  # type: ignore[return-value]

    def part_correct(self, completion: str, ex: MixedExample) -> tuple[bool, bool]:
        return tuple(  # type: ignore[return-value]
            ans is not None and task.is_correct(format_completion(None, ans), part)
            for task, part, ans in zip(self.parts, ex.parts, self.answers(completion)))

    def is_correct(self, completion: str, ex: MixedExample) -> bool:
        return all(self.part_correct(completion, ex))

    def is_formatted(self, completion: str) -> bool:
        """A think block and one JSON object holding both keys."""
        tail = completion.rsplit(THINK_CLOSE, 1)[-1]
        return has_think(completion) and any(all(k in o for k in self.keys) for o in json_objects(tail))


def resolve_task(name: str):
    """A task by name; ``"a+b"`` gives the ``MixedTask`` of a and b."""
    if MIXED_SEP in name:
        parts = name.split(MIXED_SEP)
        if len(parts) != 2 or not all(parts):
            raise LoramixError(f"mixed task {name!r}: expected two task names joined by '{MIXED_SEP}'")
        return MixedTask(*parts)
    return _task(name)


__all__ = ["KEYED", "KEYS_PREFIX", "MERGED_HEADER", "MERGED_INSTRUCTION", "MIXED_SEP", "MixedExample", "MixedTask",
           "THINK_SEP", "answer_key", "completion_segments", "is_benchmark", "labels_to_tokens", "merged_pieces",
           "mixed_answers", "mixed_examples", "mixed_prompt", "mixed_reference_completion", "prompt_segments",
           "prompt_token_segments", "resolve_task", "segment_at", "token_spans", "with_public_partners"]
