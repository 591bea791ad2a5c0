"""Batched text generation for any HF causal LM, PEFT model or loramix mixture: left padding,
greedy or sampled, with a flag saying whether each completion finished (produced EOS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from loramix.errors import LoramixError


@dataclass
class Completion:
    text: str
    finished: bool  # ended with EOS rather than hitting max_new_tokens
    tokens: int


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             seed: int | None = None, before_batch: Callable[[list[int]], object] | None = None,
             label: str | None = None) -> list[list[Completion]]:
    """For each prompt, ``num_return_sequences`` completions. Prompts are batched by length.
    ``before_batch(indices)`` may return a context manager entered around that batch's generate
    (e.g. ``mixture.route_sequences`` for per-prompt routing).

    A prompt whose tokens plus ``max_new_tokens`` exceed the model's context
    (``config.max_position_embeddings``) is refused with a ``LoramixError`` naming its index (and
    ``label``, e.g. the task), before anything is generated: never truncated, never a crash mid-run."""
    import contextlib

    check_context(model, tokenizer, prompts, max_new_tokens, label)

    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, list[Completion]] = {}
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed + start)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos,
                      num_return_sequences=num_return_sequences)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        ctx = before_batch(idx) if before_batch else contextlib.nullcontext()
        with ctx:
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:].cpu()
        for row, tokens in enumerate(new):
            i = idx[row // num_return_sequences]
            ids = tokens.tolist()
            finished = eos is not None and eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            while ids and ids[-1] == pad:
                ids.pop()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out.setdefault(i, []).append(Completion(text, finished, len(ids)))
    return [out[i] for i in range(len(prompts))]


def context_length(model) -> int | None:
    """``max_position_embeddings`` of a model's (text) config; wrappers (MixtureModel, PeftModel)
    forward ``.config``. None if the model does not say."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_context(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, label: str | None = None) -> None:
    """Raise ``LoramixError`` if any prompt (in tokens) plus ``max_new_tokens`` exceeds the context."""
    limit = context_length(model)
    if limit is None or not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if n + max_new_tokens > limit:
            where = f"{label}: prompt {i}" if label else f"prompt {i}"
            raise LoramixError(f"{where}: {n} prompt tokens + max_new_tokens {max_new_tokens} = {n + max_new_tokens} "
                               f"exceeds the model's context of {limit} tokens (max_position_embeddings); "
                               "shorten the prompt or lower max_new_tokens")
