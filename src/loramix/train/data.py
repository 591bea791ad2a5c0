"""Training data shared by the SFT-style trainers (router, ReMix, multi-task LoRA, X-LoRA): traces
JSONL, completion-only tokenisation, and right-padding collation.

A traces row is either ``prompt``/``completion`` text (what ``distill`` writes; the prompt is the
raw task prompt, rendered with the chat template at train time, as evaluation renders it) or a chat
``messages`` list whose last message is the assistant's reply (rendered whole with the tokenizer's
chat template; loss on the reply only). An optional ``domain`` string names the row's domain; it is
the user-facing name of ``task`` (what ``distill`` writes), and ``read_traces`` copies it there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

import torch

from loramix.chat import check_messages, render_messages, render_prompt
from loramix.errors import DataError, LoramixError
from loramix.tasks.rows import read_jsonl


class TraceRow(dict):
    """One traces row (its JSON object, as a dict) that remembers where it was (``line N``), so a
    row refused later, once the tokenizer is known, is still named by file and line."""

    where: str = ""


class TrainPair(NamedTuple):
    """A prompt and completion as the model sees them; ``add_eos``: append the tokenizer's EOS (a
    chat rendering already ends the turn itself)."""

    prompt: str
    completion: str
    add_eos: bool = True


def _check_row(path: Path, where: str, row: dict) -> None:
    if "messages" in row:
        extra = [k for k in ("prompt", "completion") if k in row]
        if extra:
            raise DataError(path, f"{where}: field {extra[0]!r}",
                            "give either 'messages' or 'prompt'/'completion' in a row, not both")
        check_messages(row["messages"], path, where)
    else:
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(path, where, f"field {key!r} missing or not a non-empty string "
                                             "(a row needs prompt/completion, or messages)")
    for key in ("domain", "task"):
        if key in row and row[key] is not None and not isinstance(row[key], str):
            raise DataError(path, f"{where}: field {key!r}", f"must be a string, got {type(row[key]).__name__}")
    if row.get("domain") is not None and row.get("task") is not None and row["domain"] != row["task"]:
        raise DataError(path, f"{where}: field 'domain'",
                        f"{row['domain']!r} differs from the row's task {row['task']!r} (they name the same thing)")


def read_traces(path: str | Path) -> list[TraceRow]:
    """Rows of a traces JSONL file, each checked (see the module docstring); a bad row is a
    DataError naming the file, line and field. ``domain`` is copied to ``task`` when that is absent."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "not found")
    rows = []
    for where, obj in read_jsonl(path):
        _check_row(path, where, obj)
        row = TraceRow(obj)
        row.where = where
        if row.get("domain") is not None and row.get("task") is None:
            row["task"] = row["domain"]
        rows.append(row)
    if not rows:
        raise DataError(path, "file", "holds no traces")
    return rows


def trace_pair(tokenizer, row: dict, *, chat_template: bool = True, path: str | Path = "traces") -> TrainPair:
    """The text the model trains on for one traces row: a ``messages`` row rendered with the chat
    template (``render_messages``), a ``prompt``/``completion`` row with its prompt rendered by
    ``render_prompt`` (the plain prompt without a template or with ``chat_template=False``)."""
    if "messages" in row:
        prompt, completion = render_messages(tokenizer, row["messages"], path, getattr(row, "where", "") or "row")
        return TrainPair(prompt, completion, add_eos=False)
    return TrainPair(render_prompt(tokenizer, row["prompt"], chat_template), row["completion"])


def trace_pairs(tokenizer, rows: Iterable[dict], *, chat_template: bool = True,
                path: str | Path = "traces") -> list[TrainPair]:
    """``trace_pair`` of each row."""
    return [trace_pair(tokenizer, r, chat_template=chat_template, path=path) for r in rows]


def tokenize_completion_only(tokenizer, prompt: str, completion: str, max_length: int, add_eos: bool = True) -> dict:
    """input_ids = prompt + completion (+ eos); labels mask the prompt (-100), so the loss is on the
    completion only. Prompts are tokenised as generation and TRL tokenise them (no special tokens: a
    chat rendering holds its own). Sequences longer than ``max_length`` are refused, not silently cut."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    ids = p + c
    if len(ids) > max_length:
        raise LoramixError(f"a trace of {len(ids)} tokens exceeds max_length={max_length} (prompt {prompt[:40]!r}...)")
    return {"input_ids": ids, "labels": [-100] * len(p) + c}


def completion_dataset(tokenizer, pairs, max_length: int):
    """A ``datasets.Dataset`` of tokenised ``(prompt, completion[, add_eos])`` pairs (``TrainPair``)."""
    from datasets import Dataset

    items = [TrainPair(*pair) for pair in pairs]
    return Dataset.from_list([tokenize_completion_only(tokenizer, t.prompt, t.completion, max_length, t.add_eos)
                              for t in items])


def pad_collator(pad_id: int):
    """Right-pad a batch; padded label positions are -100."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate
