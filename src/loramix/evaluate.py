"""Evaluation: batched generation on held-out task prompts, verified by each task's own checker.

``evaluate_model`` scores any causal LM (the base, a PEFT model, a merged model, a loramix mixture)
on a list of tasks and reports, per task, the accuracy, the *format rate* (a ``<think>...</think>``
block followed by a JSON answer) and the mean completion length in tokens. ``load_for_eval`` opens
whatever folder the user names. ``loramix evaluate`` is a thin wrapper around both.

Mixed-domain prompts (the paper's merged GSM8K+BoolQ evaluation, here any two tasks in one prompt,
answered by one JSON object with a named key per task) are defined in ``loramix.tasks.mixed``; a
pair is named ``"a+b"``. One is correct only if *both* answers pass their own task's checker; each
part's accuracy is reported too.

Routing modes for a mixture (``routing=``): ``model`` (its own router, token level), ``oracle``
(every token of a prompt to that prompt's task expert, via ``MixtureModel.route_sequences``; for a
mixed prompt the expert of the pair's first task, since one expert serves the whole sequence),
``segment`` (the segment oracle: every token, of the prompt and of the completion as it is
generated, to the expert of the sub-question it belongs to; on a single-domain prompt the same as
``oracle``) and ``prompt`` (prompt-level routing: by the mixture's prompt classifier if it has one,
else by the router itself, its probabilities averaged over the prompt's tokens and sites; the
argmax expert serves the whole sequence).

Every task's metrics keep ``outcomes`` (1 or 0 per prompt, in order), so reports can compute
confidence intervals and paired differences over the same prompts.

With ``collect_routing=True`` a mixture's routing decisions are kept per generated sequence (only
real tokens: left padding, the EOS and anything after it are dropped), for ``loramix.analysis``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from loramix.base_model import META_FILE
from loramix.baselines.peft_mixtures import BASELINE_FILE, baseline_kind, load_baseline
from loramix.baselines.prompt_router import has_prompt_router, load_prompt_router, route_prompts
from loramix.chat import render_prompts, uses_chat_template
from loramix.errors import LoramixError, unknown_name
from loramix.experts import load_expert
from loramix.generation import Completion, generate
from loramix.io import write_json
from loramix.loading import load_base_model
from loramix.mixture import MIXTURE_CONFIG, MixtureModel, load_mixture, recorded_base
from loramix.tasks.base import DEFAULT_DIFFICULTY
from loramix.tasks.format import has_json_answer, has_think
from loramix.tasks.splits import build_task
from loramix.tasks.mixed import (MIXED_SEP, MixedExample, MixedTask, completion_segments, labels_to_tokens,
                                 mixed_answers, mixed_examples, mixed_reference_completion,
                                 prompt_segments, prompt_token_segments, resolve_task, segment_at, token_spans)

ROUTING_MODES = ("model", "oracle", "prompt", "segment")
METRICS = ("accuracy", "format_rate", "mean_length")


def parse_tasks(values: Sequence[str] | None, mixed: bool = False) -> list[str]:
    """Task names from repeated and/or comma-separated values. With ``mixed``, plain names are
    replaced by every pair ``a+b`` (a before b in the given order); names already ``a+b`` stay."""
    names = [t.strip() for v in values or () for t in v.split(",") if t.strip()]
    if not names:
        raise LoramixError("no tasks given (--tasks add,sort,...)")
    if not mixed:
        return list(dict.fromkeys(names))
    plain = [t for t in dict.fromkeys(names) if MIXED_SEP not in t]
    pairs = [f"{a}{MIXED_SEP}{b}" for i, a in enumerate(plain) for b in plain[i + 1:]]
    given = [t for t in names if MIXED_SEP in t]
    if not pairs and not given:
        raise LoramixError("--mixed needs at least two tasks (or a pair written a+b)")
    return list(dict.fromkeys(given + pairs))


# --- scoring ------------------------------------------------------------------------------------


def is_formatted(task, completion: str) -> bool:
    """A ``<think>...</think>`` block and a JSON answer (both answer fields for a mixed task)."""
    if isinstance(task, MixedTask):
        return task.is_formatted(completion)
    return has_think(completion) and has_json_answer(completion)


def score_completions(task, examples: Sequence, completions: Sequence[Completion | str | list],
                      lengths: Sequence[int] | None = None) -> dict:
    """Accuracy, format rate and mean length of one completion per example (a list of completions
    per example counts every one). ``task`` is a Task, a MixedTask or a name. ``mean_length`` is in
    tokens: from ``Completion.tokens`` or ``lengths``; None for plain strings without ``lengths``."""
    task = resolve_task(task) if isinstance(task, str) else task
    if len(examples) != len(completions):
        raise LoramixError(f"{len(examples)} examples but {len(completions)} completions")
    flat: list[tuple[Any, Completion | str]] = []
    for ex, c in zip(examples, completions):
        for one in (c if isinstance(c, list) else [c]):
            flat.append((ex, one))
    texts = [c.text if isinstance(c, Completion) else c for _, c in flat]
    correct = [bool(task.is_correct(t, ex)) for (ex, _), t in zip(flat, texts)]
    formatted = [is_formatted(task, t) for t in texts]
    if lengths is not None:
        lens: list[int] | None = list(lengths)
    elif all(isinstance(c, Completion) for _, c in flat):
        lens = [c.tokens for _, c in flat]
    else:
        lens = None
    total = len(flat)
    out = {
        "accuracy": sum(correct) / total if total else 0.0,
        "format_rate": sum(formatted) / total if total else 0.0,
        "mean_length": (sum(lens) / len(lens) if lens else 0.0) if lens is not None else None,
        "n": total,
        "outcomes": [int(c) for c in correct],
    }
    finished = [c.finished for _, c in flat if isinstance(c, Completion)]
    if finished:
        out["finished_rate"] = sum(finished) / len(finished)
    if isinstance(task, MixedTask):
        parts = [task.part_correct(t, ex) for (ex, _), t in zip(flat, texts)]
        out["part_accuracy"] = {name: (sum(p[i] for p in parts) / total if total else 0.0)
                                for i, name in enumerate(_part_keys(task))}
    return out


def _part_keys(task: MixedTask) -> tuple[str, str]:
    a, b = task.task_a.name, task.task_b.name
    return (a, b) if a != b else (f"{a}#1", f"{b}#2")


# --- routing records ------------------------------------------------------------------------------


@dataclass
class RoutingRecord:
    """The routing of one generated sequence: its real tokens (prompt then completion, no padding)
    and, per site, the decision for each. Tensors are ``[sites, tokens, k]`` / ``[sites, tokens, E]``.
    ``token_task`` names each token's own domain (for a mixed prompt: the task of each prompt
    part, and None for the completion)."""

    task: str
    example: int
    sample: int
    token_ids: list[int]
    n_prompt: int
    sites: list[str]
    expert_ids: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    token_task: list[str | None] = field(default_factory=list)


def _is_mixture(model) -> bool:
    return isinstance(model, MixtureModel)


def _prompt_parts(ex: MixedExample, tokenizer, ids: Sequence[int]) -> list[int]:
    """The part (0 or 1) of each token of a mixed prompt as generated, ``ids``: the raw prompt's
    parts where it stands in the decoded text, the chat template's text around it belonging to the
    part next to it (``prompt_token_segments`` when the text is the raw prompt)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    at = text.find(ex.prompt)
    if at <= 0 and len(text) == len(ex.prompt):
        return prompt_token_segments(ex, tokenizer, ids)
    labels = prompt_segments(ex)
    at = max(at, 0)
    chars = [labels[0]] * at + labels + [labels[-1]] * max(0, len(text) - at - len(labels))
    return labels_to_tokens(chars, token_spans(tokenizer, ids), default=labels[0])


class _SegmentRouting:
    """The segment oracle: every token goes to the expert of the sub-question it belongs to
    (``loramix.tasks.mixed.segment_at``), in the prompt and in the completion as it is generated.
    A single-domain prompt is all one segment, so there it equals oracle routing."""

    def __init__(self, tokenizer, examples: Sequence, task, expert_for_task: dict[str, int],
                 prompts: Sequence[str] | None = None):
        self.tok, self.examples, self.task, self.experts = tokenizer, examples, task, expert_for_task
        self.prompts = list(prompts) if prompts is not None else [e.prompt for e in examples]  # as generated

    def _parts(self, i: int) -> list[int]:
        """Expert ids of example i's parts, in prompt order."""
        ex = self.examples[i]
        if isinstance(ex, MixedExample):
            return [self.experts[p.task] for p in ex.order]
        return [self.experts[self.task.name]] * 2

    def _prompt_experts(self, i: int) -> list[int]:
        ex, parts = self.examples[i], self._parts(i)
        ids = self.tok(self.prompts[i], add_special_tokens=False)["input_ids"]
        if not isinstance(ex, MixedExample):
            return [parts[0]] * len(ids)
        return [parts[j] for j in _prompt_parts(ex, self.tok, ids)]

    def for_batch(self, idx: list[int]):
        """The ``assign(input_ids)`` of ``MixtureModel.route_tokens`` for one left-padded batch
        (``num_return_sequences`` copies of a prompt are consecutive rows, as HF expands them)."""
        prompts = [self._prompt_experts(i) for i in idx]
        rows: list[dict] = []

        def assign(input_ids: torch.Tensor) -> torch.Tensor:
            batch, width = input_ids.shape
            per = max(1, batch // len(idx))
            if not rows:  # the prompt (prefill), left-padded
                out = torch.empty((batch, width), dtype=torch.long)
                for b in range(batch):
                    i = b // per
                    ex = self.examples[idx[i]]
                    rows.append({"parts": self._parts(idx[i]), "ids": [], "text": "", "last": 0,
                                 "keys": ex.keys if isinstance(ex, MixedExample) else ()})
                    p = prompts[i][-width:]
                    out[b] = torch.tensor([p[0]] * (width - len(p)) + p)
                return out
            out = torch.empty((batch, 1), dtype=torch.long)
            for b, r in enumerate(rows):  # a decoding step: one new token per row
                r["ids"].append(int(input_ids[b, -1]))
                if r["keys"]:
                    text = self.tok.decode(r["ids"], skip_special_tokens=True)
                    if len(text) > len(r["text"]):
                        r["last"] = segment_at(text, len(r["text"]), r["keys"])
                    r["text"] = text
                out[b, 0] = r["parts"][r["last"]]
            return out

        return assign


class _BatchHook:
    """``before_batch`` for ``generation.generate``: applies oracle / prompt-level routing and,
    if asked, captures each batch's inputs, outputs and routing trace."""

    def __init__(self, model, tokenizer, prompts, routing: str, seq_experts, collect: bool,
                 segments: "_SegmentRouting | None" = None):
        self.model, self.tok, self.prompts = model, tokenizer, prompts
        self.routing, self.seq_experts, self.collect = routing, seq_experts, collect
        self.segments = segments
        self.batches: list[dict] = []

    def __call__(self, idx: list[int]):
        hook = self

        @contextlib.contextmanager
        def ctx():
            with contextlib.ExitStack() as stack:
                if hook.routing == "oracle":
                    stack.enter_context(hook.model.route_sequences([hook.seq_experts[i] for i in idx]))
                elif hook.routing == "prompt":
                    stack.enter_context(hook.model.route_sequences(hook._prompt_experts(idx)))
                elif hook.routing == "segment":
                    stack.enter_context(hook.model.route_tokens(hook.segments.for_batch(idx)))
                if hook.collect:
                    stack.enter_context(hook._capture(idx))
                yield

        return ctx()

    @torch.no_grad()
    def _prompt_experts(self, idx: list[int]) -> list[int]:
        classifier = getattr(self.model, "prompt_router", None)
        if classifier is not None:  # a trained prompt-level classifier (loramix train-prompt-router)
            return route_prompts(self.model, self.tok, [self.prompts[i] for i in idx], classifier)
        enc = self.tok([self.prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        self.model(**enc)
        mask = enc["attention_mask"].float().unsqueeze(-1)
        probs = sum((t.probs.to(device) * mask).sum(1) for t in self.model.routing_trace())
        self.model.reset_routing_trace()
        return probs.argmax(-1).tolist()

    def _capture(self, idx: list[int]):
        model, batches = self.model, self.batches

        @contextlib.contextmanager
        def ctx():
            original = model.generate

            def capturing(*args, **kwargs):
                out = original(*args, **kwargs)
                seqs = out if torch.is_tensor(out) else out.sequences
                batches.append({"idx": list(idx), "input_ids": kwargs["input_ids"].cpu(),
                                "attention_mask": kwargs["attention_mask"].cpu(), "sequences": seqs.cpu(),
                                "num_return_sequences": kwargs.get("num_return_sequences", 1),
                                "trace": [(t.site, t.expert_ids.cpu(), t.weights.cpu(), t.probs.cpu())
                                          for t in model.routing_trace()]})
                return out

            model.generate = capturing  # an instance attribute shadows the method for this batch
            try:
                yield
            finally:
                del model.generate

        return ctx()


def _records_from_batches(batches: list[dict], task_name: str, tokenizer, eos: int | None, pad: int | None,
                          token_task_of) -> list[RoutingRecord]:
    records = []
    for b in batches:
        s_prompt = b["input_ids"].shape[1]
        seqs, nrs, trace = b["sequences"], b["num_return_sequences"], b["trace"]
        if not trace:
            continue
        steps = seqs.shape[1] - s_prompt
        length = trace[0][1].shape[1]
        if length != s_prompt + steps - 1:
            raise LoramixError(f"routing trace covers {length} positions, expected {s_prompt + steps - 1} "
                               "(generation without a KV cache is not supported for routing analysis)")
        sites = [t[0] for t in trace]
        ids_all, w_all, p_all = (torch.stack([t[i] for t in trace]) for i in (1, 2, 3))  # [L, B, T, .]
        for row in range(seqs.shape[0]):
            prompt_mask = b["attention_mask"][row // nrs].bool()
            gen = seqs[row, s_prompt:].tolist()
            n_gen = len(gen)
            if eos is not None and eos in gen:
                n_gen = gen.index(eos)
            n_gen = min(n_gen, steps - 1)  # the last generated token is never fed back
            while n_gen and pad is not None and gen[n_gen - 1] == pad and pad != eos:
                n_gen -= 1
            keep = torch.cat([prompt_mask, torch.ones(n_gen, dtype=torch.bool), torch.zeros(length - s_prompt - n_gen,
                                                                                           dtype=torch.bool)])
            positions = keep.nonzero().squeeze(-1)
            token_ids = seqs[row, :length][keep].tolist()
            n_prompt = int(prompt_mask.sum())
            example = b["idx"][row // nrs]
            records.append(RoutingRecord(
                task=task_name, example=example, sample=row % nrs, token_ids=token_ids, n_prompt=n_prompt,
                sites=sites, expert_ids=ids_all[:, row, positions], weights=w_all[:, row, positions],
                probs=p_all[:, row, positions], token_task=token_task_of(example, n_prompt, token_ids)))
    records.sort(key=lambda r: (r.example, r.sample))
    return records


def generate_with_routing(model, tokenizer, prompts: Sequence[str], *, collect_routing: bool = False,
                          **gen_kwargs) -> tuple[list[list[Completion]], list[RoutingRecord] | None]:
    """``generation.generate`` of free prompts, routed as evaluation routes them: a mixture by its
    own router (by its prompt classifier, if it has one). With ``collect_routing`` (mixtures only),
    also each sequence's ``RoutingRecord`` in prompt order (``task`` empty, ``token_task`` None)."""
    plan = _plan_routing(model, [], None, None, collect_routing)
    hook = _batch_hook(model, tokenizer, "", None, [], plan, list(prompts))
    completions = generate(model, tokenizer, prompts, **gen_kwargs, before_batch=_before_batch(hook, plan))
    records = None
    if plan.collect:
        records = _records_from_batches(hook.batches, "", tokenizer, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                        lambda example, n_prompt, token_ids: [None] * len(token_ids))
    return completions, records


# --- the report ---------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """``per_task[task] = {accuracy, format_rate, mean_length, n, finished_rate[, part_accuracy]}``;
    ``average`` is the unweighted mean of accuracy, format_rate and mean_length over tasks."""

    per_task: dict[str, dict]
    average: dict[str, float]
    config: dict = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    routing: dict[str, list[RoutingRecord]] | None = None

    def to_dict(self) -> dict:
        return {"per_task": self.per_task, "average": self.average, "config": self.config,
                "samples": self.samples}


def _average(per_task: dict[str, dict]) -> dict[str, float]:
    out = {}
    for key in METRICS:
        vals = [m[key] for m in per_task.values() if m.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else 0.0
    return out


class _RoutingPlan(NamedTuple):
    """How ``evaluate_model`` routes: ``mode`` is one of ``ROUTING_MODES``; ``expert_for_task`` is
    the resolved task -> expert map for oracle routing (else as given); ``collect`` keeps records."""

    is_mix: bool
    mode: str
    expert_for_task: dict[str, int] | None
    collect: bool


class _TaskResult(NamedTuple):
    """One task's ``score_completions`` metrics, kept samples and routing records (None unless collected)."""

    metrics: dict
    samples: list[dict]
    records: list[RoutingRecord] | None


def _plan_routing(model, task_names: Sequence[str], routing: str | None, expert_for_task: dict[str, int] | None,
                  collect_routing: bool) -> _RoutingPlan:
    """Check the routing mode against the model and resolve the expert map for oracle routing."""
    is_mix = _is_mixture(model)
    if routing in (None, "model") and getattr(model, "prompt_router", None) is not None:
        routing = "prompt"  # a prompt-router mixture routes by its classifier
    routing = routing or "model"
    if routing not in ROUTING_MODES:
        raise unknown_name("routing mode", routing, ROUTING_MODES)
    if routing != "model" and not is_mix:
        raise LoramixError(f"routing={routing!r} needs a loramix mixture; this model has no router")
    if collect_routing and not is_mix:
        raise LoramixError("collect_routing needs a loramix mixture")
    if routing in ("oracle", "segment"):  # oracle: a pair's first task serves the whole sequence
        needed = sorted({p for t in task_names for p in t.split(MIXED_SEP)[:1 if routing == "oracle" else 2]})
        expert_for_task = resolve_expert_map(model.expert_names, needed, expert_for_task, required=True)
    return _RoutingPlan(is_mix, routing, expert_for_task, collect_routing)


def _default_max_new_tokens(tokenizer, task, examples: Sequence) -> int:
    """One task's budget: 1.25 x its longest reference completion (in tokens) + 8. Per task, so a
    task's budget does not depend on which tasks are evaluated with it."""
    longest = max(len(tokenizer(task.reference_completion(e), add_special_tokens=False)["input_ids"])
                  for e in examples)
    return int(math.ceil(1.25 * longest)) + 8


def _batch_hook(model, tokenizer, name: str, task, examples: list, plan: _RoutingPlan,
                prompts: list[str]) -> _BatchHook | None:
    """The generation hook of a mixture (None for other models), with its routing trace reset;
    ``prompts`` are the examples' prompts as generated (rendered)."""
    if not plan.is_mix:
        return None
    first = name.split(MIXED_SEP)[0]
    seq_experts = [plan.expert_for_task[first]] * len(prompts) if plan.mode == "oracle" else None
    segments = _SegmentRouting(tokenizer, examples, task, plan.expert_for_task, prompts) \
        if plan.mode == "segment" else None
    hook = _BatchHook(model, tokenizer, prompts, plan.mode, seq_experts, plan.collect, segments)
    model.reset_routing_trace()
    model.record_routing = True  # training may have switched it off; the trace is reset per call
    return hook


def _before_batch(hook: _BatchHook | None, plan: _RoutingPlan) -> _BatchHook | None:
    """The hook ``generate`` calls per batch: only when it routes (not the mixture's own router) or
    records."""
    return hook if hook and (plan.mode != "model" or plan.collect) else None


def _samples(task, examples: Sequence, completions: Sequence, keep: int) -> list[dict]:
    """The first ``keep`` prompts with their first completion, its verdict and the gold answer."""
    return [{"prompt": e.prompt, "completion": c[0].text, "correct": bool(task.is_correct(c[0].text, e)),
             "answer": e.answer} for e, c in list(zip(examples, completions))[:keep]]


def _evaluate_task(model, tokenizer, name: str, task, examples: list, plan: _RoutingPlan, gen_kwargs: dict,
                   split: str, keep_samples: int, chat_template: bool = True) -> _TaskResult:
    """Generate for one task's examples (prompts rendered by ``loramix.chat.render_prompts``), score
    them and keep samples (and routing records)."""
    if not examples:
        raise LoramixError(f"task {name!r} has no {split} examples")
    prompts = render_prompts(tokenizer, [e.prompt for e in examples], chat_template)
    hook = _batch_hook(model, tokenizer, name, task, examples, plan, prompts)
    completions = generate(model, tokenizer, prompts, **gen_kwargs, before_batch=_before_batch(hook, plan),
                           label=f"task {name!r} ({split})")
    records = None
    if plan.collect:
        records = _records_from_batches(hook.batches, name, tokenizer, tokenizer.eos_token_id,
                                        tokenizer.pad_token_id, _token_task_fn(task, examples, tokenizer))
    return _TaskResult(score_completions(task, examples, completions),
                       _samples(task, examples, completions, keep_samples), records)


def _build_report(results: dict[str, _TaskResult], config: dict, plan: _RoutingPlan,
                  task_names: list[str]) -> EvalReport:
    """The ``EvalReport`` of every task's result; ``config`` gets the routing and the task names."""
    per_task = {name: r.metrics for name, r in results.items()}
    samples = {name: r.samples for name, r in results.items()}
    records = {name: r.records for name, r in results.items()} if plan.collect else None
    config = {**config, "routing": plan.mode if plan.is_mix else None,
              "expert_for_task": plan.expert_for_task if plan.mode == "oracle" else None, "tasks": task_names}
    return EvalReport(per_task, _average(per_task), config, samples, records)


def evaluate_model(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    split: str = "test",
    n: int = 200,
    difficulty: str | int = DEFAULT_DIFFICULTY,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    routing: str | None = None,
    expert_for_task: dict[str, int] | None = None,
    seed: int = 0,
    mixed: bool = False,
    collect_routing: bool = False,
    keep_samples: int = 3,
    chat_template: bool = True,
    task_kwargs: dict | None = None,
) -> EvalReport:
    """Generate for ``n`` examples of each task (greedy unless ``do_sample``) and verify them.

    tasks: task names; ``"a+b"`` is a mixed prompt; ``mixed=True`` turns plain names into all pairs.
    max_new_tokens: None gives each task its own budget, 1.25 x its longest reference completion
    (in tokens) + 8 (``config["max_new_tokens_per_task"]``; ``config["max_new_tokens"]`` the largest).
    task_kwargs: per task, its data (``{"gsm8k": {"test": FILE}}``; ``loramix.tasks.splits``).
    routing: for a MixtureModel, ``model`` (default), ``oracle`` (needs ``expert_for_task`` or expert
    names equal to task names) or ``prompt``. Must be None/``model`` for other models.
    collect_routing: keep per-sequence routing records (``report.routing[task]``; mixtures only).
    chat_template: render each prompt as a user message with the tokenizer's chat template, when it
    has one (``loramix.chat.render_prompt``); False keeps the raw prompts.
    """
    task_names = parse_tasks(tasks, mixed)
    resolved = [(name, build_task(name, task_kwargs)) for name in task_names]  # unknown names fail first
    plan = _plan_routing(model, task_names, routing, expert_for_task, collect_routing)
    if n < 1:
        raise LoramixError(f"n must be at least 1, got {n}")
    examples = {name: task.examples(split, n, seed=seed, difficulty=difficulty) for name, task in resolved}
    budgets = {name: _default_max_new_tokens(tokenizer, task, examples[name]) if max_new_tokens is None
               else max_new_tokens for name, task in resolved}
    gen_kwargs = {"batch_size": batch_size, "do_sample": do_sample,
                  "temperature": temperature, "top_p": top_p, "num_return_sequences": num_return_sequences,
                  "seed": seed if do_sample else None}
    results = {name: _evaluate_task(model, tokenizer, name, task, examples[name], plan,
                                    {**gen_kwargs, "max_new_tokens": budgets[name]}, split, keep_samples, chat_template)
               for name, task in resolved}
    config = {"split": split, "n": n, "difficulty": difficulty, "batch_size": batch_size,
              "max_new_tokens": max(budgets.values()), "max_new_tokens_per_task": budgets, "do_sample": do_sample,
              "temperature": temperature,
              "top_p": top_p, "num_return_sequences": num_return_sequences, "seed": seed,
              "chat_template": uses_chat_template(tokenizer, chat_template)}
    return _build_report(results, config, plan, task_names)


def _token_task_fn(task, examples, tokenizer):
    """``fn(example, n_prompt, token_ids)``: the task each token belongs to (for a mixed prompt,
    by ``loramix.tasks.mixed``'s segments, in the prompt and the completion)."""
    if not isinstance(task, MixedTask):
        return lambda example, n_prompt, token_ids: [task.name] * len(token_ids)

    def fn(example: int, n_prompt: int, token_ids: list[int]) -> list[str | None]:
        ex = examples[example]
        names = [p.task for p in ex.order]
        prompt = _prompt_parts(ex, tokenizer, token_ids[:n_prompt])
        completion_ids = token_ids[n_prompt:]
        text = tokenizer.decode(completion_ids, skip_special_tokens=True)
        completion = labels_to_tokens(completion_segments(text, ex.keys), token_spans(tokenizer, completion_ids),
                                      default=prompt[-1] if prompt else 0)
        return [names[j] for j in prompt + completion]

    return fn


# --- expert maps ----------------------------------------------------------------------------------


def parse_expert_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["add=0", "sort=expert_sort"]`` -> ``{"add": "0", "sort": "expert_sort"}``."""
    out: dict[str, str] = {}
    for item in pairs or ():
        for p in item.split(","):
            if not p.strip():
                continue
            task, sep, value = p.partition("=")
            if not sep or not task.strip() or not value.strip():
                raise LoramixError(f"--expert-for {p!r}: expected TASK=INDEX (or TASK=EXPERT_NAME)")
            out[task.strip()] = value.strip()
    return out


def resolve_expert_map(expert_names: Sequence[str], tasks: Sequence[str], given: dict | None = None,
                       required: bool = False) -> dict[str, int] | None:
    """Task -> expert index. ``given`` values may be indices or expert names; tasks not given map to
    the expert of the same name. Returns None when a task stays unmapped, unless ``required``."""
    names = list(expert_names)
    out: dict[str, int] = {}
    for task, value in (given or {}).items():
        if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            i = int(value)
            if not 0 <= i < len(names):
                raise LoramixError(f"expert for task {task!r}: index {i} outside 0..{len(names) - 1}")
        elif value in names:
            i = names.index(value)
        else:
            raise unknown_name("expert", str(value), names)
        out[task] = i
    plain = [t for t in dict.fromkeys(p for t in tasks for p in t.split(MIXED_SEP))]
    for task in plain:
        if task not in out and task in names:
            out[task] = names.index(task)
    missing = [t for t in plain if t not in out]
    if missing:
        if required:
            raise LoramixError(f"no expert for task(s) {', '.join(missing)}: experts are {names}; "
                               "pass --expert-for TASK=INDEX")
        return None
    return out


# --- loading --------------------------------------------------------------------------------------


def _base_from_config(path: Path, base: str | None, recorded: str | None, what: str) -> str:
    if base:
        return base
    if recorded and Path(recorded).is_dir():
        return recorded
    raise LoramixError(f"{path}: a {what} needs --base (the base model folder, or 'default')")


def _load_mixture_folder(path: Path, base: str | None, experts_dir: str | Path | None = None):
    """A loramix mixture (with its prompt router, if it has one) on its base model; its experts are
    looked for in ``experts_dir`` first (see ``load_mixture``)."""
    model, tok = load_base_model(_base_from_config(path, base, recorded_base(path), "mixture"))
    mixture = load_mixture(path, model, experts_dir=experts_dir).eval()
    if has_prompt_router(path):
        mixture.prompt_router = load_prompt_router(path)
    return mixture, tok


def _load_peft_folder(path: Path, base: str | None):
    """A PEFT adapter, checked by ``load_expert``, on its base model."""
    from peft import PeftModel

    try:
        recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as err:
        raise LoramixError(f"{path / 'adapter_config.json'}: not valid JSON ({err})") from None
    model, tok = load_base_model(_base_from_config(path, base, recorded, "PEFT adapter"))
    load_expert(path, model)  # AdapterError naming the file and key: non-LoRA, missing/corrupt, shape, NaN
    return PeftModel.from_pretrained(model, str(path)).eval(), tok


def _load_hf_folder(path: Path, base: str | None):
    """An HF model folder; its tokenizer, else (with ``base``) the base model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - a merged folder may lack tokenizer files
        if not base:
            raise LoramixError(f"{path}: no tokenizer files; pass --base to take the base model's") from None
        tok = load_base_model(base)[1]
    tok.padding_side = "left"
    return model, tok


def load_for_eval(path: str | Path, base: str | None = None, experts_dir: str | Path | None = None):
    """``(model, tokenizer, kind)`` for ``default`` (the embedded base), an HF model folder (``kind``
    ``base`` for a loramix base build, else ``hf``: a merged or any other model), a PEFT adapter
    folder (``peft``, loaded onto ``base``) or a loramix mixture folder (``mixture``, onto ``base``).
    Without ``base``, a PEFT adapter or mixture uses the base path it recorded, if it exists.
    ``experts_dir``: where a mixture's experts moved (``--experts-dir``; found by name or sha256).
    Every command that loads a saved model folder goes through here."""
    if str(path) == "default":
        model, tok = load_base_model("default")
        return model, tok, "base"
    path = Path(path)
    if not path.exists():
        raise LoramixError(f"{path}: not found")
    if (path / MIXTURE_CONFIG).is_file():
        return (*_load_mixture_folder(path, base, experts_dir), "mixture")
    if (path / "adapter_config.json").is_file():
        return (*_load_peft_folder(path, base), "peft")
    if (path / "config.json").is_file():
        model, tok = _load_hf_folder(path, base)
        return model, tok, "base" if (path / META_FILE).is_file() else "hf"
    if (path / BASELINE_FILE).is_file():  # PEFT X-LoRA / Arrow over the experts
        model, tok = load_baseline(path, base)
        return model, tok, baseline_kind(path)
    raise LoramixError(f"{path}: not a model: no config.json, adapter_config.json, mixture_config.json "
                       f"or {BASELINE_FILE}")


# --- output ---------------------------------------------------------------------------------------


def percent(x: float | None) -> str:
    """A rate in [0, 1] as CLI tables print it (``0.5`` -> ``50.0%``), as the report does."""
    return "-" if x is None else f"{x:.1%}"


def report_table(report: EvalReport, title: str | None = None):
    """A rich table: one row per task, then the average; accuracies and rates in percent. The title
    gets the difficulty and split the report used, so the numbers can be told apart from the
    pipeline's."""
    from rich.table import Table

    cfg = report.config
    where = ", ".join(f"{k} {cfg[k]}" for k in ("difficulty", "split") if cfg.get(k) is not None)
    if where:
        title = f"{title} - {where}" if title else where
    table = Table("task", "accuracy", "format", "mean length", "n", title=title)
    for name, m in report.per_task.items():
        extra = ""
        if "part_accuracy" in m:
            extra = " (" + ", ".join(f"{k} {percent(v)}" for k, v in m["part_accuracy"].items()) + ")"
        ml = "-" if m["mean_length"] is None else f"{m['mean_length']:.1f}"
        table.add_row(name, f"{percent(m['accuracy'])}{extra}", percent(m["format_rate"]), ml, str(m["n"]))
    a = report.average
    table.add_row("average", percent(a["accuracy"]), percent(a["format_rate"]), f"{a['mean_length']:.1f}", "",
                  style="bold")
    return table


# --- checks before any model is loaded ------------------------------------------------------------


def check_tasks(tasks: Sequence[str], *, mixed: bool = False, split: str = "test",
                difficulty: str | int = DEFAULT_DIFFICULTY,
                n: int = 1, routing: str | None = None, seed: int = 0, task_kwargs: dict | None = None) -> list[str]:
    """Everything about an evaluation that needs no model, checked before one is loaded (or built):
    the task names (an unknown one is refused naming the valid ones), ``n``, the routing mode, and
    the split and difficulty, by drawing one example of each task (which also reads a benchmark
    task's data file). Returns the task names, as ``parse_tasks``."""
    names = parse_tasks(tasks, mixed)
    resolved = [build_task(name, task_kwargs) for name in names]
    if routing is not None and routing not in ROUTING_MODES:
        raise unknown_name("routing mode", routing, ROUTING_MODES)
    if n < 1:
        raise LoramixError(f"n must be at least 1, got {n}")
    for task in resolved:
        task.examples(split, 1, seed=seed, difficulty=difficulty)
    return names


def check_writable(out: str | Path, what: str = "--out") -> None:
    """Refuse an output path that cannot be created (its nearest existing parent is not a writable
    folder) before any work is done; writes nothing."""
    out = Path(out)
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LoramixError(f"{out}: cannot write there ({what}: {parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LoramixError(f"{out}: cannot write there ({what}: {parent} is not writable)")


def task_options(fn, kwargs: dict) -> dict:
    """The options ``check_tasks`` takes, as given in ``kwargs`` for ``fn`` (else ``fn``'s defaults)."""
    params = inspect.signature(fn).parameters
    return {k: kwargs.get(k, params[k].default)
            for k in ("mixed", "split", "difficulty", "n", "routing", "seed", "task_kwargs")}


def evaluate_path(model_path: str | Path, tasks: Sequence[str], *, base: str | None = None,
                  expert_for: Sequence[str] | None = None, out: str | Path | None = None,
                  experts_dir: str | Path | None = None, **kwargs) -> EvalReport:
    """``load_for_eval`` then ``evaluate_model``; writes the report JSON to ``out`` (atomic). The
    tasks, options and ``out`` are checked first: bad input never loads (or builds) a model.
    ``difficulty`` None (or left out) is ``DEFAULT_DIFFICULTY``, the pipeline's."""
    if kwargs.get("difficulty") is None:
        kwargs["difficulty"] = DEFAULT_DIFFICULTY
    check_tasks(tasks, **task_options(evaluate_model, kwargs))
    given = parse_expert_pairs(expert_for)
    if out is not None:
        check_writable(out)
    model, tok, kind = load_for_eval(model_path, base, experts_dir)
    if given and kind != "mixture":
        raise LoramixError("--expert-for applies to mixtures only")
    if kind == "mixture":
        names = parse_tasks(tasks, kwargs.get("mixed", False))
        emap = resolve_expert_map(model.expert_names, names, given, required=kwargs.get("routing") == "oracle")
        kwargs["expert_for_task"] = emap
    report = evaluate_model(model, tok, tasks, **kwargs)
    report.config.update(model=str(model_path), kind=kind, base=base)
    if out is not None:
        write_json(out, report.to_dict())
    return report


__all__ = ["EvalReport", "MixedExample", "MixedTask", "RoutingRecord", "check_tasks", "check_writable",
           "evaluate_model", "evaluate_path", "generate_with_routing", "is_formatted", "load_for_eval", "mixed_answers",
           "mixed_examples", "percent",
           "mixed_reference_completion", "parse_expert_pairs", "parse_tasks", "report_table", "resolve_expert_map",
           "resolve_task", "score_completions"]
