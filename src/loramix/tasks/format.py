"""The completion format shared by every task: `<think>reasoning</think>` then a JSON object
`{"answer": "..."}`, and the answer extractor that reads it back.

Extraction order (the first rule that finds something wins):

1. the `"answer"` field of the last JSON object that has one, after the last `</think>`;
2. the same, anywhere in the completion (no `</think>`, or the JSON sits inside the think block);
3. the last `answer: X` / `"answer": X` / `answer is X` match (malformed JSON, plain prose);
4. the last non-empty line after the last `</think>` (or of the whole completion if there is none).

Values are returned as stripped strings: JSON `true`/`false` become `"true"`/`"false"`, numbers
their JSON spelling, `null` means "no answer" (None).
"""

from __future__ import annotations

import json
import re
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_DECODER = json.JSONDecoder()
_ANSWER_RE = re.compile(
    r"""["']?answer["']?\s*(?::|=|\bis\b)\s*["']?([^"'\n{}]*?)["']?\s*(?:[,}\n]|$)""", re.IGNORECASE
)
_MAX_TAIL = 200


def format_completion(reasoning: str | None, answer: str) -> str:
    """The reference completion: `<think>{reasoning}</think>\\n{"answer": "..."}`."""
    return f"{THINK_OPEN}{reasoning or ''}{THINK_CLOSE}\n{json.dumps({'answer': answer})}"


def has_think(completion: str) -> bool:
    """True when `<think>` occurs and a `</think>` follows it."""
    start = completion.find(THINK_OPEN)
    return start >= 0 and completion.find(THINK_CLOSE, start + len(THINK_OPEN)) >= 0


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object embedded in `text`, in order; unparsable braces are skipped."""
    found: list[dict] = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value)  # true/false, numbers, lists


def _json_answer_object(completion: str) -> dict | None:
    tail = completion.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in completion else None
    for text in (tail, completion):
        if text is None:
            continue
        for obj in reversed(json_objects(text)):
            if "answer" in obj:
                return obj
    return None


def json_answer(completion: str) -> str | None:
    """Rules 1-2: the `"answer"` of the last JSON object having one (after `</think>` first)."""
    obj = _json_answer_object(completion)
    return None if obj is None else _as_text(obj["answer"])


def has_json_answer(completion: str) -> bool:
    """True when some JSON object in the completion has a non-null `"answer"` field."""
    return json_answer(completion) is not None


def extract_answer(completion: str) -> str | None:
    """The model's answer in `completion`, by the rules in the module docstring; None if none."""
    obj = _json_answer_object(completion)
    if obj is not None:
        return _as_text(obj["answer"])
    matches = _ANSWER_RE.findall(completion)
    if matches and matches[-1].strip(" .\t"):
        return matches[-1].strip(" .\t")
    tail = completion.rsplit(THINK_CLOSE, 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if lines and len(lines[-1]) <= _MAX_TAIL:
        return lines[-1]
    return None
