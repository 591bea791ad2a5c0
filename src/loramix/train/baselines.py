"""Baselines over the same LoRA experts, each one command and each saved in a form ``loramix evaluate``
opens:

* ``merge_experts``: one static adapter by PEFT ``add_weighted_adapter`` (linear, cat, TIES, DARE).
  Output: an ordinary PEFT adapter folder (+ ``merge_info.json``).
* ``train_multitask``: one fresh LoRA trained by SFT on the union of the traces (``rank`` is exposed so a
  pipeline can match a mixture's active parameter count: ``single_lora_same_active``). Output: an
  ordinary PEFT adapter folder + ``metrics.json``.
* ``build_prompt_router``: a linear classifier on the base model's mean-pooled last hidden state of the
  prompt picks one expert per prompt. Output: a loramix mixture folder (``fixed`` router) plus
  ``prompt_router.safetensors`` / ``prompt_router.json``; ``route_prompts`` / ``prompt_router_hook``
  apply it around ``generate``.
* ``make_oracle_mixture``: a mixture folder (``fixed`` router) whose experts are named after their tasks
  and whose ``mixture_config.json`` records ``expert_for_task``, for ``evaluate --routing oracle``.
* ``build_xlora`` / ``build_arrow``: PEFT X-LoRA (classifier optionally trained by SFT on the traces)
  and Arrow (training-free). Output: a recipe folder (``loramix_baseline.json`` naming base and experts,
  plus the X-LoRA classifier weights) that ``load_baseline`` turns back into ``(model, tokenizer)``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from loramix import __version__
from loramix.errors import LoramixError, unknown_name
from loramix.io import atomic_path, read_json, sha256_file, write_json

MERGE_METHODS = {"linear": "linear", "cat": "cat", "ties": "ties", "dare": "dare_ties",
                 "dare_ties": "dare_ties", "dare_linear": "dare_linear"}
MERGED_ADAPTER = "merged"
MERGE_INFO = "merge_info.json"
METRICS_FILE = "metrics.json"
BASELINE_FILE = "loramix_baseline.json"
XLORA_WEIGHTS = "xlora_classifier.safetensors"
PROMPT_ROUTER_WEIGHTS = "prompt_router.safetensors"
PROMPT_ROUTER_CONFIG = "prompt_router.json"
BASELINE_KINDS = ("xlora", "arrow")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


# --- helpers --------------------------------------------------------------------------------------


def _load_base(base: str | Path):
    """``(model, tokenizer, base_path)``: float32, eval, left-padding tokenizer with a pad token."""
    from loramix.loading import load_model_and_tokenizer, resolve_base

    path = resolve_base(base)
    model, tok = load_model_and_tokenizer(path)
    return model, tok, path


def _expert_paths(experts: Sequence[str | Path]) -> list[Path]:
    paths = [Path(e) for e in experts]
    if not paths:
        raise LoramixError("no experts given (--experts DIR ...)")
    for p in paths:
        if not (p / "adapter_config.json").is_file():
            raise LoramixError(f"{p}: not a PEFT adapter folder (no adapter_config.json)")
    return paths


def _digests(paths: Sequence[Path]) -> list[dict[str, str]]:
    from loramix.experts import CONFIG_NAME, WEIGHTS_NAME

    return [{f: sha256_file(p / f) for f in (CONFIG_NAME, WEIGHTS_NAME) if (p / f).is_file()} for p in paths]


def _check_digests(recipe_path: Path, paths: Sequence[Path], recorded: Sequence[dict], accept_changed: bool) -> None:
    for i, (p, digests) in enumerate(zip(paths, recorded)):
        for fname, digest in digests.items():
            f = p / fname
            actual = sha256_file(f) if f.is_file() else None
            if actual != digest and not accept_changed:
                raise LoramixError(f"{f}: sha256 differs from the one recorded in {recipe_path} (experts[{i}]); "
                                   "the expert changed since the baseline was built")


def _load_peft_experts(model, paths: Sequence[Path], names: Sequence[str]):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(model, str(paths[0]), adapter_name=names[0])
    for p, n in zip(paths[1:], names[1:]):
        pm.load_adapter(str(p), adapter_name=n)
    return pm


def _loss_curve(history: list[dict]) -> list[dict]:
    return [{"step": h["step"], "loss": round(float(h["loss"]), 6)} for h in history
            if "loss" in h and "step" in h and "train_runtime" not in h]


def _trainable(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


# --- 1. merges ------------------------------------------------------------------------------------


def merge_experts(base: str | Path, experts: Sequence[str | Path], method: str, out: str | Path,
                  weights: Sequence[float] | None = None, density: float = 0.5, seed: int = 0) -> Path:
    """Merge the expert adapters into one by PEFT ``add_weighted_adapter`` and save it as an ordinary
    PEFT adapter folder at ``out`` (atomic): ``adapter_config.json`` + ``adapter_model.safetensors``
    directly in ``out``, plus ``merge_info.json``.

    method: ``linear``, ``cat``, ``ties``, ``dare`` (= ``dare_ties``), ``dare_ties`` or ``dare_linear``.
    weights: one per expert; default equal weights ``1/E`` (an average). ``cat`` is exact
    (``sum_i w_i * scale_i * B_i A_i``, rank = sum of ranks); ``linear``/``ties``/``dare_*`` combine the
    A and B factors separately (PEFT's definition) and need equal ranks: unequal ranks raise an error
    (use ``cat``) rather than falling back. density: kept share for ties/dare. DARE's random drop is
    seeded by ``seed``.
    """
    if method not in MERGE_METHODS:
        raise unknown_name("merge method", method, MERGE_METHODS)
    combo = MERGE_METHODS[method]
    paths = _expert_paths(experts)
    E = len(paths)
    weights = [1.0 / E] * E if weights is None else [float(w) for w in weights]
    if len(weights) != E:
        raise LoramixError(f"{len(weights)} weights for {E} experts")
    if combo in ("ties", "dare_ties", "dare_linear") and not 0.0 < density <= 1.0:
        raise LoramixError(f"density must lie in (0, 1], got {density}")
    model, _tok, base_path = _load_base(base)
    names = [f"expert{i}" for i in range(E)]
    pm = _load_peft_experts(model, paths, names)
    if combo != "cat" and E > 1:
        ranks = {p.name: _max_rank(pm.peft_config[n]) for p, n in zip(paths, names)}
        if len(set(ranks.values())) != 1:
            raise LoramixError(f"merge method {method!r} needs experts of equal rank, got {ranks}; "
                               "use --method cat for experts of different ranks")
    kwargs = {"density": density} if combo in ("ties", "dare_ties", "dare_linear") else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pm.add_weighted_adapter(names, weights, MERGED_ADAPTER, combination_type=combo, **kwargs)
    _fix_merged_scaling(pm, MERGED_ADAPTER)
    cfg = pm.peft_config[MERGED_ADAPTER]
    cfg.base_model_name_or_path = str(base_path)
    info = {"loramix_version": __version__, "method": method, "combination_type": combo, "weights": weights,
            "density": density if kwargs else None, "seed": seed, "rank": cfg.r, "base": str(base_path),
            "experts": [str(p.resolve()) for p in paths], "experts_sha256": _digests(paths)}
    out = Path(out)
    with atomic_path(out) as tmp:
        stage = tmp.with_name(tmp.name + ".stage")
        pm.save_pretrained(str(stage), selected_adapters=[MERGED_ADAPTER])
        src = stage / MERGED_ADAPTER if (stage / MERGED_ADAPTER / "adapter_config.json").is_file() else stage
        shutil.move(str(src), str(tmp))
        write_json(tmp / MERGE_INFO, info)
    return out


def _max_rank(cfg) -> int:
    return max([cfg.r, *(cfg.rank_pattern or {}).values()])


def _fix_merged_scaling(pm, name: str) -> None:
    """PEFT copies the first adapter's config into the merged one (``lora_alpha = r``). If that
    adapter used rsLoRA the merged scale would be ``sqrt(r)`` although the factors already carry each
    expert's scale: switch rsLoRA off so the merged scale is exactly 1."""
    from peft.tuners.lora import LoraLayer

    cfg = pm.peft_config[name]
    if not getattr(cfg, "use_rslora", False):
        return
    cfg.use_rslora = False
    for module in pm.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scaling[name] = 1.0


# --- 2. multi-task LoRA ---------------------------------------------------------------------------


@dataclass
class MultitaskConfig:
    """One fresh LoRA (same targets as the experts) trained by SFT on a traces JSONL (loss on the
    completion only). ``rank`` is free so a pipeline can match a mixture's active parameters."""

    base: str
    traces: str
    out: str
    rank: int = 8
    alpha: float | None = None  # default 2 * rank
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-4
    lr_scheduler_type: str = "constant"
    max_length: int = 512
    target_modules: tuple[str, ...] = MLP_MODULES
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 5
    progress: bool = True
    threads: int | None = None
    force: bool = False

    def identity(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "progress", "threads", "force", "save_steps")}
        d["target_modules"] = list(d["target_modules"])
        d["base"], d["traces"] = str(d["base"]), str(d["traces"])
        return d


def train_multitask(cfg: MultitaskConfig, *, callbacks: Sequence = ()) -> Path:
    """Train the multi-task LoRA; output an ordinary PEFT adapter folder + ``metrics.json`` at
    ``cfg.out`` (atomic). Checkpoints go to ``<out>.partial`` and a rerun resumes from the last one;
    a complete ``out`` with the same config is returned untouched (another config needs ``force``).
    Extra HF ``TrainerCallback``s in ``callbacks`` are added to the trainer."""
    from loramix.train.common import torch_threads

    with torch_threads(cfg.threads):
        return _train_multitask(cfg, callbacks)


def _train_multitask(cfg: MultitaskConfig, callbacks: Sequence) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import ProgressCallback, Trainer, TrainingArguments, set_seed

    from loramix.train.common import (
        RichProgress,
        TimeLedger,
        checkpoint_seconds,
        last_checkpoint,
    )
    from loramix.train.data import completion_dataset, pad_collator, read_traces

    out = Path(cfg.out)
    if cfg.rank < 1:
        raise LoramixError(f"rank must be at least 1, got {cfg.rank}")
    if cfg.steps < 1:
        raise LoramixError(f"steps must be at least 1, got {cfg.steps}")
    if (out / METRICS_FILE).is_file() and not cfg.force:
        done = json.loads((out / METRICS_FILE).read_text()).get("config", {})
        if {k: done.get(k) for k in cfg.identity()} == cfg.identity():
            return out
        raise LoramixError(f"{out}: holds a multi-task LoRA trained with another config; pass --force to retrain")
    work = out.with_name(out.name + ".partial")
    if cfg.force:
        shutil.rmtree(work, ignore_errors=True)
    resume = last_checkpoint(work)
    model, tok, base_path = _load_base(cfg.base)
    rows = read_traces(cfg.traces)
    data = completion_dataset(tok, [(r["prompt"], r["completion"]) for r in rows], cfg.max_length)
    set_seed(cfg.seed)
    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    pm = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    pm.train()
    args = TrainingArguments(
        output_dir=str(work), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        report_to=[], remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), bf16=False,
        disable_tqdm=False, dataloader_num_workers=0)
    ledger = TimeLedger(checkpoint_seconds(resume))
    trainer = Trainer(model=pm, args=args, train_dataset=data, data_collator=pad_collator(tok.pad_token_id))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgress("multitask LoRA", enabled=cfg.progress))
    trainer.add_callback(ledger)
    for cb in callbacks:
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    history = [dict(h) for h in trainer.state.log_history]
    tasks: dict[str, int] = {}
    for r in rows:
        tasks[str(r.get("task"))] = tasks.get(str(r.get("task")), 0) + 1
    metrics = {"loramix_version": __version__, "kind": "multitask_lora", "config": cfg.identity(),
               "seed": cfg.seed, "base": str(base_path), "train_seconds": round(ledger.seconds, 3),
               "resumed_from": resume.name if resume is not None else None,
               "trainable_parameters": _trainable(pm), "rank": cfg.rank, "alpha": alpha, "rows": len(rows),
               "rows_per_task": tasks, "loss_curve": _loss_curve(history),
               "inputs_sha256": {str(cfg.traces): sha256_file(cfg.traces)}}
    pm.peft_config["default"].base_model_name_or_path = str(base_path)
    with atomic_path(out) as tmp:
        pm.save_pretrained(str(tmp))
        write_json(tmp / "train_log.json", history)
        write_json(tmp / METRICS_FILE, metrics)
    shutil.rmtree(work, ignore_errors=True)
    return out


# --- 3. prompt-level router -----------------------------------------------------------------------


@contextlib.contextmanager
def _bare(model):
    """The base model's computation: a mixture with all-zero expert weights, a PEFT model with its
    adapters disabled, anything else as is."""
    from loramix.mixture import MixtureModel

    if isinstance(model, MixtureModel):
        with model.fixed_weights(torch.zeros(model.num_experts)):
            yield
    elif hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield
    else:
        yield


@torch.no_grad()
def prompt_features(model, tokenizer, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """``[N, hidden]``: the base model's last-layer hidden states of each prompt, averaged over its
    tokens (attention-masked). Right padding, so positions do not depend on the batch. For a mixture
    the experts are switched off (zero weights), so the features equal the bare base model's."""
    if not prompts:
        raise LoramixError("no prompts to route")
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = []
    try:
        with _bare(model):
            for s in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[s:s + batch_size]), return_tensors="pt", padding=True,
                                add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            output_hidden_states=True, use_cache=False)
                h = out.hidden_states[-1].float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                feats.append(((h * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
        if hasattr(model, "reset_routing_trace"):
            model.reset_routing_trace()
    return torch.cat(feats)


@dataclass
class PromptRouter:
    """A linear classifier over standardised prompt features: ``labels[c]`` is a task label and
    ``experts[c]`` the expert it routes to."""

    labels: list[str]
    experts: list[int]
    weight: torch.Tensor  # [C, H]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [H]
    std: torch.Tensor  # [H]
    meta: dict = field(default_factory=dict)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.float() - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict_labels(self, features: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self.logits(features).argmax(-1).tolist()]

    def predict(self, model, tokenizer, prompts: Sequence[str], batch_size: int = 32) -> list[int]:
        """The expert index for each prompt."""
        cls = self.logits(prompt_features(model, tokenizer, prompts, batch_size)).argmax(-1).tolist()
        return [self.experts[i] for i in cls]

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous(), "mean": self.mean.contiguous(),
                   "std": self.std.contiguous()}, str(folder / PROMPT_ROUTER_WEIGHTS))
        write_json(folder / PROMPT_ROUTER_CONFIG, {"labels": self.labels, "experts": self.experts,
                                                   "label_to_expert": dict(zip(self.labels, self.experts)),
                                                   "features": "mean-pooled last hidden state of the bare base "
                                                               "model over the prompt tokens", **self.meta})


def has_prompt_router(folder: str | Path) -> bool:
    return (Path(folder) / PROMPT_ROUTER_CONFIG).is_file()


def load_prompt_router(folder: str | Path) -> PromptRouter:
    """The classifier saved by ``build_prompt_router`` in a mixture folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / PROMPT_ROUTER_CONFIG, folder / PROMPT_ROUTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise LoramixError(f"{folder}: no prompt router ({PROMPT_ROUTER_CONFIG} / {PROMPT_ROUTER_WEIGHTS} missing)")
    cfg = json.loads(cfg_path.read_text())
    t = load_file(str(w_path))
    meta = {k: v for k, v in cfg.items() if k not in ("labels", "experts", "label_to_expert", "features")}
    return PromptRouter(list(cfg["labels"]), [int(e) for e in cfg["experts"]], t["weight"], t["bias"], t["mean"],
                        t["std"], meta)


def route_prompts(mixture, tokenizer, prompts: Sequence[str], router: PromptRouter, batch_size: int = 32) -> list[int]:
    """One expert per prompt, chosen by the prompt router."""
    experts = router.predict(mixture, tokenizer, prompts, batch_size)
    if hasattr(mixture, "num_experts") and any(not 0 <= e < mixture.num_experts for e in experts):
        raise LoramixError(f"prompt router names experts {sorted(set(experts))}, the mixture has {mixture.num_experts}")
    return experts


def prompt_router_hook(mixture, tokenizer, prompts: Sequence[str], router: PromptRouter):
    """A ``before_batch`` for ``loramix.generation.generate``: routes each batch's prompts with the
    classifier and sends every token of prompt b to its expert (``mixture.route_sequences``)."""

    def before_batch(idx: list[int]):
        return mixture.route_sequences(route_prompts(mixture, tokenizer, [prompts[i] for i in idx], router))

    return before_batch


def _router_rows(traces, tasks, expert_for_task, n_per_task, seed, difficulty):
    """``(train, heldout)`` lists of ``(prompt, label, expert)``."""
    import random

    if traces is not None:
        from loramix.train.data import read_traces

        seen: dict[str, tuple[str, str, int]] = {}
        for r in read_traces(traces):
            label = r.get("task")
            expert = r.get("expert_index")
            if expert is None and label is not None and expert_for_task and label in expert_for_task:
                expert = expert_for_task[label]
            if expert is None:
                raise LoramixError(f"{traces}: a row has no expert_index (and its task {label!r} is not mapped)")
            label = str(label if label is not None else expert)
            seen.setdefault(r["prompt"], (r["prompt"], label, int(expert)))
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
    from loramix.tasks import get_task

    if not tasks:
        raise LoramixError("the prompt router needs --traces or --tasks")
    train, held = [], []
    for i, name in enumerate(tasks):
        task = get_task(name)
        expert = (expert_for_task or {}).get(name, i)
        kw = {} if difficulty is None else {"difficulty": difficulty}
        train += [(e.prompt, name, expert) for e in task.examples("train", n_per_task, seed=seed, **kw)]
        held += [(e.prompt, name, expert) for e in task.examples("validation", max(1, n_per_task // 4), seed=seed, **kw)]
    return train, held


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
                        batch_size: int = 32) -> Path:
    """Train the prompt-level classifier and save a mixture folder (``fixed`` router over
    ``experts``) holding it. Labels come from the traces (``task``, ``expert_index``; a fifth of each
    label's distinct prompts is held out) or from ``tasks`` (task i -> expert i unless
    ``expert_for_task``; held out: the validation split). ``metrics.json`` reports the held-out
    classification accuracy."""
    from loramix.mixture import compose

    paths = _expert_paths(experts)
    train, held = _router_rows(traces, tasks, expert_for_task, n_per_task, seed, difficulty)
    if len({l for _, l, _ in train}) < 2:
        raise LoramixError("the prompt router needs prompts of at least two tasks")
    experts_of = {l: e for _, l, e in train + held}
    bad = sorted({e for e in experts_of.values() if not 0 <= e < len(paths)})
    if bad:
        raise LoramixError(f"expert indices {bad} outside 0..{len(paths) - 1}")
    model, tok, base_path = _load_base(base)
    start = time.perf_counter()
    x_train = prompt_features(model, tok, [p for p, _, _ in train], batch_size)
    router = fit_prompt_router(x_train, [l for _, l, _ in train], experts_of, steps=steps, lr=lr, seed=seed)
    train_acc = _accuracy(router.predict_labels(x_train), [l for _, l, _ in train])
    held_acc, per_label = None, {}
    if held:
        x_held = prompt_features(model, tok, [p for p, _, _ in held], batch_size)
        pred = router.predict_labels(x_held)
        gold = [l for _, l, _ in held]
        held_acc = _accuracy(pred, gold)
        per_label = {l: _accuracy([p for p, g in zip(pred, gold) if g == l], [l] * gold.count(l))
                     for l in sorted(set(gold))}
    seconds = time.perf_counter() - start
    router.meta.update(base=str(base_path), seed=seed)
    mixture = compose(model, paths, router="fixed")
    mixture.settings["prompt_router"] = PROMPT_ROUTER_CONFIG
    metrics = {"loramix_version": __version__, "kind": "prompt_router", "train_seconds": round(seconds, 3),
               "source": str(traces) if traces is not None else {"tasks": list(tasks or ())},
               "n_train": len(train), "n_heldout": len(held), "train_accuracy": train_acc,
               "heldout_accuracy": held_acc, "heldout_accuracy_per_label": per_label,
               "label_to_expert": dict(zip(router.labels, router.experts)),
               "trainable_parameters": router.weight.numel() + router.bias.numel(), "steps": steps, "seed": seed}
    out = Path(out)
    with atomic_path(out) as tmp:
        mixture.save_pretrained(tmp)
        router.save(tmp)
        write_json(tmp / METRICS_FILE, metrics)
    return out


def _accuracy(pred: Sequence, gold: Sequence) -> float | None:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else None


# --- 4. oracle routing ----------------------------------------------------------------------------


def make_oracle_mixture(base: str | Path, experts: Sequence[str | Path], tasks, out: str | Path) -> Path:
    """A mixture folder (``fixed`` router) for oracle routing. ``tasks``: one task name per expert
    (the experts are then *named* after their tasks, so ``evaluate --routing oracle`` maps tasks to
    experts with no flags), or a dict ``task -> expert index``. ``mixture_config.json`` also records
    ``expert_for_task``."""
    from loramix.mixture import compose

    paths = _expert_paths(experts)
    if isinstance(tasks, dict):
        emap = {str(t): int(i) for t, i in tasks.items()}
        names = None
    else:
        tasks = [str(t) for t in tasks]
        if len(tasks) != len(paths):
            raise LoramixError(f"{len(tasks)} tasks for {len(paths)} experts (one task per expert)")
        if len(set(tasks)) != len(tasks):
            raise LoramixError(f"tasks must be distinct, got {tasks}; pass a task -> expert mapping instead")
        emap, names = {t: i for i, t in enumerate(tasks)}, tasks
    bad = {t: i for t, i in emap.items() if not 0 <= i < len(paths)}
    if bad:
        raise LoramixError(f"expert indices outside 0..{len(paths) - 1}: {bad}")
    model, _tok, _path = _load_base(base)
    mixture = compose(model, paths, router="fixed", expert_names=names)
    mixture.settings["expert_for_task"] = emap
    return mixture.save_pretrained(out)


def recorded_expert_for_task(mixture_dir: str | Path) -> dict[str, int] | None:
    """The ``expert_for_task`` a mixture folder recorded (``make_oracle_mixture``), or None."""
    from loramix.mixture import MIXTURE_CONFIG

    path = Path(mixture_dir) / MIXTURE_CONFIG
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("expert_for_task")
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None


# --- 5. X-LoRA and Arrow --------------------------------------------------------------------------


XLORA_DEFAULTS = {"xlora_depth": 1, "xlora_size": 256, "layerwise_scalings": False, "enable_softmax": True,
                  "softmax_temperature": 1.0, "top_k_lora": None, "xlora_dropout_p": 0.0}


def _xlora_model(model, paths: Sequence[Path], options: dict, seed: int):
    from peft import XLoraConfig, get_peft_model

    from loramix.mixture import _text_config

    model.config.use_cache = False  # X-LoRA refuses a KV cache
    cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=_text_config(model.config).hidden_size,
                      adapters={str(i): str(p) for i, p in enumerate(paths)}, **options)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        xm = get_peft_model(model, cfg)
    return xm


def _xlora_classifier(xm):
    return xm.base_model.internal_xlora_classifier


def build_xlora(base: str | Path, experts: Sequence[str | Path], out: str | Path, *, traces: str | Path | None = None,
                steps: int = 0, batch_size: int = 8, learning_rate: float = 1e-3, max_length: int = 512,
                seed: int = 0, progress: bool = True, **xlora_options) -> Path:
    """PEFT X-LoRA over the experts (adapter names ``"0"``, ``"1"``, ...). With ``traces`` and
    ``steps > 0`` its classifier is trained by SFT (HF Trainer, loss on completion tokens; the experts
    stay frozen). Saved as a recipe folder: ``loramix_baseline.json`` (kind ``xlora``, base, experts
    and their sha256, the X-LoRA options) + ``xlora_classifier.safetensors`` (+ ``metrics.json``).
    Reopen with ``load_baseline``. Generation runs without a KV cache (X-LoRA's requirement)."""
    from safetensors.torch import save_file

    paths = _expert_paths(experts)
    options = {**XLORA_DEFAULTS, **xlora_options}
    model, tok, base_path = _load_base(base)
    xm = _xlora_model(model, paths, options, seed)
    history: list[dict] = []
    seconds = 0.0
    if traces is not None and steps > 0:
        from transformers import ProgressCallback, Trainer, TrainingArguments

        from loramix.train.common import RichProgress
        from loramix.train.data import completion_dataset, pad_collator, read_traces

        rows = read_traces(traces)
        data = completion_dataset(tok, [(r["prompt"], r["completion"]) for r in rows], max_length)
        args = TrainingArguments(
            output_dir=str(Path(out).with_name(Path(out).name + ".partial")), max_steps=steps,
            per_device_train_batch_size=batch_size, learning_rate=learning_rate, lr_scheduler_type="constant",
            logging_steps=max(1, steps // 20), save_strategy="no", seed=seed, data_seed=seed, report_to=[],
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), bf16=False, disable_tqdm=False,
            dataloader_num_workers=0)
        xm.train()
        trainer = Trainer(model=xm, args=args, train_dataset=data, data_collator=pad_collator(tok.pad_token_id))
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RichProgress("X-LoRA classifier", enabled=progress))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        history = [dict(h) for h in trainer.state.log_history]
        shutil.rmtree(args.output_dir, ignore_errors=True)
    xm.eval()
    clf = _xlora_classifier(xm)
    recipe = {"kind": "xlora", "loramix_version": __version__, "base": str(base_path),
              "experts": [str(p.resolve()) for p in paths], "experts_sha256": _digests(paths),
              "options": options, "seed": seed, "trained": bool(history),
              "traces": str(traces) if traces is not None else None, "steps": steps if history else 0}
    metrics = {"kind": "xlora", "train_seconds": round(seconds, 3), "trainable_parameters": _trainable(clf),
               "loss_curve": _loss_curve(history)}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}, str(tmp / XLORA_WEIGHTS))
        write_json(tmp / BASELINE_FILE, recipe)
        write_json(tmp / METRICS_FILE, metrics)
    return out


def _arrow_model(model, paths: Sequence[Path], options: dict):
    from peft import ArrowConfig, create_arrow_model

    try:
        return create_arrow_model(model, [str(p) for p in paths], ArrowConfig(**options))
    except (ValueError, TypeError) as err:
        raise LoramixError(f"Arrow over {[str(p) for p in paths]}: {err}") from None


def build_arrow(base: str | Path, experts: Sequence[str | Path], out: str | Path, *, top_k: int = 3,
                router_temperature: float = 1.0, seed: int = 0) -> Path:
    """PEFT Arrow (training-free routing) over the experts: checks that PEFT accepts them (Arrow needs
    equal ranks and targets) and saves a recipe folder (``loramix_baseline.json``, kind ``arrow``).
    ``top_k`` is capped at the number of experts."""
    paths = _expert_paths(experts)
    options = {"top_k": min(int(top_k), len(paths)), "router_temperature": float(router_temperature), "rng_seed": seed}
    model, _tok, base_path = _load_base(base)
    _arrow_model(model, paths, options)
    recipe = {"kind": "arrow", "loramix_version": __version__, "base": str(base_path),
              "experts": [str(p.resolve()) for p in paths], "experts_sha256": _digests(paths), "options": options}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / BASELINE_FILE, recipe)
    return out


def is_baseline(folder: str | Path) -> bool:
    return (Path(folder) / BASELINE_FILE).is_file()


def baseline_kind(folder: str | Path) -> str:
    return str(json.loads((Path(folder) / BASELINE_FILE).read_text()).get("kind"))


def load_baseline(folder: str | Path, base: str | None = None, *, accept_changed_experts: bool = False):
    """``(model, tokenizer)`` from a recipe folder written by ``build_xlora`` or ``build_arrow``:
    the base (``base`` overrides the recorded one), the experts (sha256-checked) and, for X-LoRA, the
    trained classifier. The model is in eval mode; the tokenizer pads on the left."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / BASELINE_FILE
    recipe = read_json(path, "missing; not a loramix baseline folder")
    kind = recipe.get("kind")
    if kind not in BASELINE_KINDS:
        raise unknown_name("baseline kind", str(kind), BASELINE_KINDS)
    paths = [Path(p) for p in recipe["experts"]]
    _check_digests(path, paths, recipe.get("experts_sha256", [{}] * len(paths)), accept_changed_experts)
    model, tok, _ = _load_base(base or recipe["base"])
    if kind == "xlora":
        xm = _xlora_model(model, paths, recipe["options"], recipe.get("seed", 0))
        clf = _xlora_classifier(xm)
        state = load_file(str(folder / XLORA_WEIGHTS))
        missing, unexpected = clf.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LoramixError(f"{folder / XLORA_WEIGHTS}: keys do not match the X-LoRA classifier "
                               f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        return xm.eval(), tok
    return _arrow_model(model, paths, recipe["options"]).eval(), tok


__all__ = ["MERGE_METHODS", "MultitaskConfig", "PromptRouter", "build_arrow", "build_prompt_router", "build_xlora",
           "fit_prompt_router", "has_prompt_router", "is_baseline", "load_baseline", "load_prompt_router",
           "make_oracle_mixture", "merge_experts", "prompt_features", "prompt_router_hook", "recorded_expert_for_task",
           "route_prompts", "train_multitask"]
