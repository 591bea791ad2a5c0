"""The completion format shared by every task: `<think>reasoning</think>` then a JSON object
`{"answer": "..."}`, and the answer extractor that reads it back.

Extraction order (the first rule that finds something wins):

1. the `"answer"` field of the last JSON object that has one, after the last `</think>`;
2. the same, anywhere in the completion (no `</think>`, or the JSON sits inside the think block);
3. the last `answer: X` / `"answer": X` / `answer is X` match (malformed JSON, plain prose);
4. the last non-empty line after the last `</think>` (or of the whole completion if there is none).

Values are returned as stripped strings: JSON `true`/`false` become `"true"`/`"false"`, numbers
their JSON spelling, `null` means "no answer" (None).

`locate_answer` also says where the answer stands, which the reward's format bonuses need: the think
bonus is paid only for a think block that closes before the answer (`think_before_answer`), and
neither bonus for an empty answer (`is_empty_answer`: `""`, whitespace, `[]`, `{}`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_DECODER = json.JSONDecoder()
_ANSWER_RE = re.compile(
    r"""["']?answer["']?\s*(?::|=|\bis\b)\s*["']?([^"'\n{}]*?)["']?\s*(?:[,}\n]|$)""", re.IGNORECASE
)
_MAX_TAIL = 200
_EMPTY = re.compile(r"""[\s\[\]{}(),;"']*""")


@dataclass(frozen=True)
class Answer:
    """An extracted answer and where it stands in the completion."""

    text: str | None  # what `extract_answer` returns (None: an explicit JSON null)
    start: int  # index where its JSON object, `answer: X` match or last line begins
    from_json: bool  # read from a JSON object's "answer" field (rules 1-2)


def format_completion(reasoning: str | None, answer: str) -> str:
    """The reference completion: `<think>{reasoning}</think>\\n{"answer": "..."}`."""
    return f"{THINK_OPEN}{reasoning or ''}{THINK_CLOSE}\n{json.dumps({'answer': answer})}"


def has_think(completion: str) -> bool:
    """True when `<think>` occurs and a `</think>` follows it."""
    start = completion.find(THINK_OPEN)
    return start >= 0 and completion.find(THINK_CLOSE, start + len(THINK_OPEN)) >= 0


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object embedded in `text`, in order; unparsable braces are skipped."""
    return [obj for _, obj in _json_objects_at(text)]


def _json_objects_at(text: str) -> list[tuple[int, dict]]:
    found: list[tuple[int, dict]] = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append((i, obj))
        i = text.find("{", end)
    return found


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value)  # true/false, numbers, lists


def _tail_start(completion: str) -> int:
    """Where the text after the last `</think>` begins (0 when there is none)."""
    end = completion.rfind(THINK_CLOSE)
    return 0 if end < 0 else end + len(THINK_CLOSE)


def locate_answer(completion: str) -> Answer | None:
    """The model's answer in `completion` and where it stands, by the rules in the module docstring."""
    tail_start = _tail_start(completion)
    for offset in ((tail_start, 0) if tail_start else (0,)):
        for pos, obj in reversed(_json_objects_at(completion[offset:])):
            if "answer" in obj:
                return Answer(_as_text(obj["answer"]), offset + pos, True)
    matches = list(_ANSWER_RE.finditer(completion))
    if matches and matches[-1].group(1).strip(" .\t"):
        return Answer(matches[-1].group(1).strip(" .\t"), matches[-1].start(), False)
    lines = [line.strip() for line in completion[tail_start:].splitlines() if line.strip()]
    if lines and len(lines[-1]) <= _MAX_TAIL:
        return Answer(lines[-1], tail_start, False)
    return None


def extract_answer(completion: str) -> str | None:
    """The model's answer in `completion`, by the rules in the module docstring; None if none."""
    found = locate_answer(completion)
    return None if found is None else found.text


def json_answer(completion: str) -> str | None:
    """Rules 1-2: the `"answer"` of the last JSON object having one (after `</think>` first)."""
    found = locate_answer(completion)
    return found.text if found is not None and found.from_json else None


def is_empty_answer(text: str | None) -> bool:
    """No answer, or one with nothing but whitespace, brackets, quotes and separators (`""`, `[]`, `{}`)."""
    return text is None or _EMPTY.fullmatch(text) is not None


def has_json_answer(completion: str) -> bool:
    """True when the answer is read from a JSON object's `"answer"` field and is not empty."""
    return not is_empty_answer(json_answer(completion))


def think_before_answer(completion: str) -> bool:
    """True when the completion has a non-empty answer and a think block (the first `<think>` and the
    next `</think>`) closes before the answer starts: the order the format asks for."""
    found = locate_answer(completion)
    if found is None or is_empty_answer(found.text):
        return False
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    return end >= 0 and end + len(THINK_CLOSE) <= found.start
