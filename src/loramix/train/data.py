"""Training data shared by the SFT-style trainers (router, ReMix, multi-task LoRA, X-LoRA): traces
JSONL, completion-only tokenisation, and right-padding collation."""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.errors import DataError, LoramixError
from loramix.tasks.rows import read_jsonl


def read_traces(path: str | Path) -> list[dict]:
    """Rows of a traces JSONL file; each needs non-empty ``prompt`` and ``completion`` strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "not found")
    rows = []
    for where, row in read_jsonl(path):
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(path, where, f"field {key!r} missing or not a non-empty string")
        rows.append(row)
    if not rows:
        raise DataError(path, "file", "holds no traces")
    return rows


def tokenize_completion_only(tokenizer, prompt: str, completion: str, max_length: int) -> dict:
    """input_ids = prompt + completion + eos; labels mask the prompt (-100), so the loss is on the
    completion only. Prompts are tokenised as generation and TRL tokenise them (no special tokens).
    Sequences longer than ``max_length`` are refused, not silently cut."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    ids = p + c
    if len(ids) > max_length:
        raise LoramixError(f"a trace of {len(ids)} tokens exceeds max_length={max_length} (prompt {prompt[:40]!r}...)")
    return {"input_ids": ids, "labels": [-100] * len(p) + c}


def completion_dataset(tokenizer, pairs, max_length: int):
    """A ``datasets.Dataset`` of tokenised (prompt, completion) pairs."""
    from datasets import Dataset

    return Dataset.from_list([tokenize_completion_only(tokenizer, p, c, max_length) for p, c in pairs])


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
