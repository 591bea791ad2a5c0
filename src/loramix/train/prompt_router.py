"""Training the prompt-level router (``loramix.baselines.prompt_router``): a multinomial logistic
regression on the base model's mean-pooled prompt states, labels from traces or task names. Output: a
loramix mixture folder (``fixed`` router) holding the classifier, plus ``metrics.json``."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from loramix import __version__
from loramix.experts import adapter_folders
from loramix.loading import load_base
from loramix.baselines.prompt_router import PROMPT_ROUTER_CONFIG, PromptRouter, prompt_features
from loramix.chat import render_prompt, uses_chat_template
from loramix.errors import DataError, LoramixError
from loramix.io import atomic_path, write_json
from loramix.mixture import compose, load_mixture
from loramix.tasks.splits import build_task
from loramix.train.common import METRICS_FILE
from loramix.train.data import read_traces, trace_pair


def _prompt_key(row: dict) -> str:
    """What makes two traces rows the same prompt: the prompt text, or a chat row's messages before
    the reply."""
    return row["prompt"] if "messages" not in row else json.dumps(row["messages"][:-1], sort_keys=True)


def _router_rows(traces, tasks, expert_for_task, n_per_task, seed, difficulty, task_kwargs=None):
    """``(train, heldout)`` lists of ``(source, label, expert)``; ``source`` is a traces row or a raw
    task prompt, rendered by ``_render`` once the tokenizer is loaded."""
    if traces is not None:
        seen: dict[str, tuple[dict, str, int]] = {}
        for r in read_traces(traces):
            label = r.get("task")
            expert = r.get("expert_index")
            if expert is None and label is not None and expert_for_task and label in expert_for_task:
                expert = expert_for_task[label]
            if expert is None:
                raise DataError(traces, f"{r.where}: field 'expert_index'",
                                f"missing (and the row's task/domain {label!r} is not mapped to an expert)")
            label = str(label if label is not None else expert)
            seen.setdefault(_prompt_key(r), (r, label, int(expert)))
        items = list(seen.values())
        random.Random(seed).shuffle(items)
        by_label: dict[str, list] = {}
        for it in items:
            by_label.setdefault(it[1], []).append(it)
        train, held = [], []
        for its in by_label.values():  # hold out a fifth of each label's prompts
            k = max(1, len(its) // 5) if len(its) > 1 else 0
            held += its[:k]
            train += its[k:]
        return train, held
    if not tasks:
        raise LoramixError("the prompt router needs --traces or --tasks")
    train, held = [], []
    for i, name in enumerate(tasks):
        task = build_task(name, task_kwargs)
        expert = (expert_for_task or {}).get(name, i)
        kw = {} if difficulty is None else {"difficulty": difficulty}
        train += [(e.prompt, name, expert) for e in task.examples("train", n_per_task, seed=seed, **kw)]
        held += [(e.prompt, name, expert) for e in task.examples("validation", max(1, n_per_task // 4), seed=seed, **kw)]
    return train, held


def _render(tokenizer, sources: Sequence, chat_template: bool, traces) -> list[str]:
    """Each prompt as the mixture sees it at evaluation (``loramix.chat.render_prompt``; a chat row's
    messages before the reply, rendered with the generation prompt, as ``trace_pair`` does), so the
    classifier is trained on the text it later routes."""
    return [trace_pair(tokenizer, s, chat_template=chat_template, path=traces).prompt if isinstance(s, dict)
            else render_prompt(tokenizer, s, chat_template) for s in sources]


def fit_prompt_router(features: torch.Tensor, labels: Sequence[str], experts_of: dict[str, int], steps: int = 300,
                      lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0) -> PromptRouter:
    """Multinomial logistic regression (full batch, Adam) on standardised features."""
    names = sorted(set(labels))
    y = torch.tensor([names.index(l) for l in labels])
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    x = (features - mean) / std
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lin = torch.nn.Linear(x.shape[1], len(names))
        opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(lin(x), y)
                loss.backward()
                opt.step()
    return PromptRouter(names, [int(experts_of[n]) for n in names], lin.weight.detach().clone(),
                        lin.bias.detach().clone(), mean, std, {"final_train_loss": float(loss.detach())})


def build_prompt_router(base: str | Path, experts: Sequence[str | Path], out: str | Path, *,
                        traces: str | Path | None = None, tasks: Sequence[str] | None = None,
                        expert_for_task: dict[str, int] | None = None, n_per_task: int = 200,
                        difficulty: str | None = None, steps: int = 300, lr: float = 0.05, seed: int = 0,
                        batch_size: int = 32, mixture: str | Path | None = None,
                        chat_template: bool = True, task_kwargs: dict | None = None) -> Path:
    """Train the prompt-level classifier and save a mixture folder holding it. Labels come from the
    traces (``task``, ``expert_index``; a fifth of each label's distinct prompts is held out) or from
    ``tasks`` (task i -> expert i unless ``expert_for_task``; held out: the validation split; a
    benchmark's data from ``task_kwargs``, e.g. ``{"gsm8k": {"train": FILE, "test": FILE}}``).
    ``metrics.json`` reports the held-out classification accuracy.

    The folder is a ``fixed`` router over ``experts``; or, with ``mixture`` (a trained mixture
    folder over the same experts, e.g. the hard MoR-LoRA one), a copy of that mixture, attention
    LoRA included, whose per-token router the classifier replaces by one decision per sequence:
    the fair prompt-level baseline, differing from the token-level mixture only in the granularity
    of the decision. The classifier's features are computed through the saved mixture with its
    experts switched off, at training as at inference, on the prompts as evaluation renders them
    (the chat template when ``chat_template`` and the tokenizer has one; traces rows may be
    prompt/completion or chat ``messages``)."""
    paths = adapter_folders(experts)
    for name in task_kwargs or {}:
        if name not in (tasks or ()):
            raise LoramixError(f"task_kwargs.{name}: not among the tasks ({', '.join(tasks or ())})")
    train, held = _router_rows(traces, tasks, expert_for_task, n_per_task, seed, difficulty, task_kwargs)
    if len({l for _, l, _ in train}) < 2:
        raise LoramixError("the prompt router needs prompts of at least two tasks")
    experts_of = {l: e for _, l, e in train + held}
    bad = sorted({e for e in experts_of.values() if not 0 <= e < len(paths)})
    if bad:
        raise LoramixError(f"expert indices {bad} outside 0..{len(paths) - 1}")
    model, tok, base_path = load_base(base)
    if mixture is None:
        model = compose(model, paths, router="fixed")
    else:
        model = load_mixture(mixture, model)
        have = [str(Path(e.path).resolve()) for e in model.experts]
        if have != [str(Path(p).resolve()) for p in paths]:
            raise LoramixError(f"{mixture}: its experts {have} differ from the ones given {[str(p) for p in paths]}")
    model.eval()
    start = time.perf_counter()
    x_train = prompt_features(model, tok, _render(tok, [p for p, _, _ in train], chat_template, traces), batch_size)
    router = fit_prompt_router(x_train, [l for _, l, _ in train], experts_of, steps=steps, lr=lr, seed=seed)
    train_acc = _accuracy(router.predict_labels(x_train), [l for _, l, _ in train])
    held_acc, per_label = None, {}
    if held:
        x_held = prompt_features(model, tok, _render(tok, [p for p, _, _ in held], chat_template, traces), batch_size)
        pred = router.predict_labels(x_held)
        gold = [l for _, l, _ in held]
        held_acc = _accuracy(pred, gold)
        per_label = {l: _accuracy([p for p, g in zip(pred, gold) if g == l], [l] * gold.count(l))
                     for l in sorted(set(gold))}
    seconds = time.perf_counter() - start
    router.meta.update(base=str(base_path), seed=seed, mixture=None if mixture is None else str(mixture),
                       chat_template=uses_chat_template(tok, chat_template))
    model.metadata["prompt_router"] = PROMPT_ROUTER_CONFIG
    classifier = router.weight.numel() + router.bias.numel()
    reused = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the mixture's router, attention LoRA
    metrics = {"loramix_version": __version__, "kind": "prompt_router", "train_seconds": round(seconds, 3),
               "mixture": None if mixture is None else str(mixture),
               "source": str(traces) if traces is not None else {"tasks": list(tasks or ())},
               "n_train": len(train), "n_heldout": len(held), "train_accuracy": train_acc,
               "heldout_accuracy": held_acc, "heldout_accuracy_per_label": per_label,
               "label_to_expert": dict(zip(router.labels, router.experts)),
               "classifier_parameters": classifier, "trainable_parameters": classifier + reused,
               "chat_template": uses_chat_template(tok, chat_template), "steps": steps, "seed": seed}
    out = Path(out)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        router.save(tmp)
        write_json(tmp / METRICS_FILE, metrics)
    return out


def _accuracy(pred: Sequence, gold: Sequence) -> float | None:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else None


__all__ = ["build_prompt_router", "fit_prompt_router"]
