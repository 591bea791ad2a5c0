"""ReMix (arXiv 2603.10160): n fresh LoRA experts per layer trained jointly with per-layer routers
that *sample* k experts without replacement, each at a constant weight omega, and an RLOO
(REINFORCE leave-one-out) estimator for the routers. Also the MixLoRA-style baseline (learned top-k
soft weights, ordinary backprop) with the same n, k and r (``router="topk"``).

Design decisions (documented because the paper leaves room):

* **Reward granularity: per sequence.** Each sequence b of a batch is repeated M times; sample m of
  sequence b has its own routing J_{m,b} (every token, every layer) and its own SFT loss L_{m,b}
  (mean cross-entropy over its completion tokens; prompt tokens are masked with -100). The RLOO
  baseline of L_{m,b} is the mean of the other M-1 samples *of the same sequence*, so one sequence's
  luck does not leak into another's advantage. The batch objective is the mean over sequences.
* **log Q(J_{m,b})** = sum over all routed sites (layers) and over the sequence's tokens of
  ``Routing.log_prob`` (log-probability of the ordered without-replacement draw). By default
  (``logq_tokens="all"``) every attended token counts, prompt tokens included: a prompt token's expert
  choice changes its hidden state, which later layers' attention reads at completion positions, so
  dropping it from the score function would bias the estimator. ``logq_tokens="completion"`` keeps
  only positions whose output is scored (the paper-literal reading). It is biased, not slightly: an
  enumeration check put the layer-0 router's gradient 25% off the exact one (max |z| 29), because a
  prompt token's routing feeds the completion through attention. Kept only to reproduce that reading.
* **log Q of a set** (``logq="set"``): the loss depends only on which experts were drawn, so the score
  may use the unordered set's probability (the sum over its k! orders) instead of the ordered draw's.
  Both are unbiased; the same check measured 18% lower variance for the set at k=2.
* **Surrogate** (``rloo_surrogate``): ``mean L + mean_b [1/(M-1) sum_m stopgrad(L_m - Lbar) log Q_m]``,
  with the second term's value subtracted out so the logged loss is the SFT loss. Its gradient w.r.t.
  the routers is the RLOO estimator; w.r.t. the LoRAs it is the average over the M samples of grad L_m
  (the ReMix weights are constants, so the router gets no gradient through the LoRA path).
* **Router input is detached** (``detach_router_input=True``): the router's input x depends on the
  earlier layers' LoRAs, so without the detach the log Q term would push a score-function gradient
  into those LoRAs. ReMix gives the LoRAs *ordinary* gradients, so we cut that path: LoRAs get exactly
  the average SFT gradient, routers exactly RLOO. (Set it False for the full score-function gradient
  of E_J[L] w.r.t. every parameter: unbiased for the LoRAs too, but much noisier.)
* **Sharing the base forward across the M samples.** With an HF decoder the LoRA delta of layer 1
  changes the input of every later layer, and each sample routes differently, so after the first
  routed layer nothing can be shared exactly; only the token embedding is (and the first layer's
  attention, which we do not split out, to keep the HF model unmodified). We embed the batch once and
  repeat the embeddings M times along the batch dimension, so the M samples cost one batched forward
  and backward of M*B rows (M times the FLOPs of one sample, in one pass).
* **ESS** = ||pi||_1^2 / ||pi||_2^2 per layer, pi = the router softmax averaged over the batch's
  attended tokens, logged as ``ess/<site>`` and ``ess_mean`` into the Trainer logs (``train_log.json``),
  with the per-token ESS of the router's distribution q (``ess_q_token``): for ReMix the weights are
  constant, so their ESS is k by construction and only q can show a collapse.
* Expert scale is 1.0 for ReMix (omega is the weight); for the top-k baseline and the trainable soft
  mixture (``router="soft"``: MoLE-style dense softmax over the same n experts) it is
  ``lora_alpha / rank`` (default alpha = 2 * rank), as in PEFT.
* **The loss is chunked** (``loss_chunk_tokens``): the M*B repeated rows would otherwise hold
  M*B*T*V logits at once (150k-token vocabularies). The model returns its final hidden states, and the
  LM head and cross-entropy run on a few rows at a time under activation checkpointing, so only one
  chunk's logits exist in the forward and in the backward. Same value and gradients as the full loss.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformers import set_seed

from loramix import __version__
from loramix.chat import render_prompt
from loramix.errors import DataError, LoramixError
from loramix.experts import MLP_MODULES, Expert, LoraWeights
from loramix.io import sha256_file
from loramix.loading import base_fingerprint, load_model_and_tokenizer, resolve_base
from loramix.mixture import MIXTURE_CONFIG, MIXTURE_WEIGHTS, MixtureConfig, compose
from loramix.routers import LOGQ_MODES, OMEGAS, ReMixOptions, TopKOptions, effective_sample_size  # noqa: F401 - re-exported
from loramix.tasks.splits import build_task
from loramix.train.common import METRICS_FILE, RunFolder, run_trainer, torch_threads, training_arguments
from loramix.train.data import (TrainPair, completion_dataset, pad_collator, read_traces,
                               trace_pairs)
from loramix.train.trainer import MixtureTrainer

ROUTER_CHOICES = ("remix", "topk", "soft")
# Fields that change how a run is executed or shown, not what it produces.
RUN_FIELDS = frozenset({"out", "threads", "progress", "keep_checkpoints", "save_steps", "logging_steps", "force",
                        "loss_chunk_tokens"})


# --- pure pieces --------------------------------------------------------------------------------


def rloo_surrogate(losses: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The RLOO surrogate loss for ``losses [M, B]`` (per-sample losses, differentiable w.r.t. the
    LoRAs) and ``log_q [M, B]`` (log-probability of each sample's selection, differentiable w.r.t.
    the routers): ``mean(L) + mean_b 1/(M-1) sum_m stopgrad(L_mb - mean_m L_mb) * log_q_mb``.

    Its gradient is the average SFT gradient plus the RLOO estimate of grad E_J[L] through Q; its
    value equals ``losses.mean()`` (the score term's value is subtracted out)."""
    if losses.shape != log_q.shape or losses.dim() != 2:
        raise LoramixError(f"losses {tuple(losses.shape)} and log_q {tuple(log_q.shape)} must both be [M, B]")
    M = losses.shape[0]
    if M < 2:
        raise LoramixError("RLOO needs at least 2 samples per sequence (samples >= 2)")
    adv = (losses - losses.mean(0, keepdim=True)).detach()
    score = (adv * log_q).sum(0) / (M - 1)  # [B]
    return losses.mean() + (score - score.detach()).mean()


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy over labelled (!= -100) tokens: [N, T, V], [N, T]
    -> [N]. A sequence without labelled tokens gets 0."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    tok = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                          ignore_index=-100, reduction="none").view(shift_labels.shape)
    mask = (shift_labels != -100).to(tok.dtype)
    return (tok * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def chunked_sequence_losses(hidden: torch.Tensor, head, labels: torch.Tensor, chunk_tokens: int = 4096) -> torch.Tensor:
    """``sequence_losses(head(hidden), labels)`` computed a few rows at a time: each chunk's logits are
    made, reduced to per-row losses and dropped, and rebuilt in the backward (activation
    checkpointing), so at most ``chunk_tokens`` rows' worth of logits exist at once. [N, T, H] -> [N]."""
    from torch.utils.checkpoint import checkpoint

    rows = max(1, chunk_tokens // max(1, hidden.shape[1]))
    if rows >= hidden.shape[0]:
        return sequence_losses(head(hidden), labels)
    return torch.cat([checkpoint(lambda h, y: sequence_losses(head(h), y), hidden[i:i + rows], labels[i:i + rows],
                                 use_reentrant=False) for i in range(0, hidden.shape[0], rows)])


@contextlib.contextmanager
def final_hidden_states(model: nn.Module):
    """Inside, ``model(...)`` returns its final hidden states (after the last norm) as ``logits``;
    yields the head that turns them into logits (the LM head, then any final soft-capping, as the HF
    model's forward applies it). The head is swapped on the instance, not wrapped, so a DDP or
    accelerate wrapper around ``model`` still runs its own forward."""
    lm_head = model.get_output_embeddings()
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)

    def head(h):
        logits = lm_head.__class__.forward(lm_head, h)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    lm_head.forward = lambda h: h
    if cap is not None:
        config.final_logit_softcapping = None
    try:
        yield head
    finally:
        del lm_head.forward
        if cap is not None:
            config.final_logit_softcapping = cap


def fresh_experts(model: nn.Module, n: int, rank: int, targets=MLP_MODULES,
                  seed: int = 0, scale: float = 1.0, prefix: str = "remix") -> list[Expert]:
    """``n`` new LoRA experts on every Linear of ``model`` whose name ends with one of ``targets``,
    PEFT-initialised (A kaiming-uniform(a=sqrt(5)), B zero, so the mixture starts equal to the base)."""
    if n < 1 or rank < 1:
        raise LoramixError(f"experts-n and rank must be >= 1, got {n} and {rank}")
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rpartition(".")[2] in set(targets)]
    if not names:
        raise LoramixError(f"no Linear module named {list(targets)} in {type(model).__name__}")
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(seed)
    experts = []
    for i in range(n):
        weights = {}
        for name in names:
            lin = modules[name]
            A = torch.empty(rank, lin.in_features)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)
            weights[name] = LoraWeights(A, torch.zeros(lin.out_features, rank), float(scale))
        cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": scale * rank, "target_modules": list(targets)}
        experts.append(Expert(f"{prefix}_{i}", None, cfg, weights, {}))
    return experts


# --- config -------------------------------------------------------------------------------------


@dataclass
class ReMixConfig:
    """Everything ``train_remix`` needs. ``base``: an HF model folder or ``"default"`` (the embedded
    base, built if missing). Data: ``tasks`` (reference traces of each task's train split,
    ``n_examples`` per task) and/or ``traces`` (a JSONL of ``prompt``/``completion`` or chat
    ``messages`` rows, see ``loramix.train.data``)."""

    out: Path = Path("runs/remix")
    base: str = "default"
    tasks: tuple[str, ...] = ()
    task_kwargs: dict = field(default_factory=dict)  # per task: its data, e.g. {gsm8k: {train: FILE, test: FILE}}
    traces: Path | None = None
    n_examples: int = 512
    difficulty: str | None = None  # None: the task's default
    router: str = "remix"  # "remix" | "topk" (MixLoRA-style baseline)
    n_experts: int = 8
    top_k: int = 2
    rank: int = 8
    samples: int = 4  # M, RLOO samples per sequence (remix only)
    omega: str = "linear"  # 2/(k r) or "sqrt": 2/sqrt(k r)
    alpha: float | None = None  # topk only; default 2 * rank
    targets: tuple[str, ...] = MLP_MODULES
    logq_tokens: str = "all"  # "all" attended tokens | "completion" (scored positions only; biased)
    logq: str = "ordered"  # log Q of the ordered draw | "set" (of the unordered set; lower variance)
    loss_chunk_tokens: int = 4096  # rows of logits made at once, in tokens (memory, not the result)
    freeze_router: bool = False  # the "no RLOO" ablation: routers stay at their initialisation (learning
    # rate 0, so the saved mixture keeps its usual keys), selections still sampled
    detach_router_input: bool = True
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-3
    router_learning_rate: float | None = None  # None: learning_rate
    weight_decay: float = 0.0
    warmup_steps: int = 10
    lr_scheduler_type: str = "cosine"
    max_length: int = 512
    seed: int = 0
    chat_template: bool = True  # render prompts with the tokenizer's chat template, when it has one
    logging_steps: int = 10
    save_steps: int = 100
    keep_checkpoints: bool = False
    threads: int | None = None
    progress: bool = True
    force: bool = False  # retrain over a finished run or an interrupted one with another config

    def validate(self) -> None:
        if self.router not in ROUTER_CHOICES:
            raise LoramixError(f"router must be one of {', '.join(ROUTER_CHOICES)}, got {self.router!r}")
        if not 1 <= self.top_k <= self.n_experts:
            raise LoramixError(f"top_k must lie in 1..n_experts ({self.n_experts}), got {self.top_k}")
        if self.router == "remix" and self.samples < 2:
            raise LoramixError(f"RLOO needs samples >= 2, got {self.samples}")
        if self.logq_tokens not in ("all", "completion"):
            raise LoramixError(f"logq_tokens must be 'all' or 'completion', got {self.logq_tokens!r}")
        if self.logq not in LOGQ_MODES:
            raise LoramixError(f"logq must be one of {', '.join(LOGQ_MODES)}, got {self.logq!r}")
        if self.omega not in OMEGAS:
            raise LoramixError(f"omega must be one of {', '.join(OMEGAS)}, got {self.omega!r}")
        if not self.tasks and self.traces is None:
            raise LoramixError("no training data: give at least one task or a traces file")
        for name in self.task_kwargs:
            if name not in self.tasks:
                raise LoramixError(f"task_kwargs.{name}: not among the tasks ({', '.join(self.tasks)})")
        for name in self.tasks:  # before any model is loaded: an unknown name lists the valid ones
            build_task(name, self.task_kwargs)
        if self.traces is not None and not Path(self.traces).is_file():
            raise DataError(self.traces, "file", "not found")
        for name, v in (("steps", self.steps), ("batch_size", self.batch_size), ("rank", self.rank),
                        ("grad_accum", self.grad_accum), ("max_length", self.max_length)):
            if v < 1:
                raise LoramixError(f"{name} must be >= 1, got {v}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["out"], d["traces"] = str(self.out), None if self.traces is None else str(self.traces)
        d["tasks"], d["targets"] = list(self.tasks), list(self.targets)
        d["task_kwargs"] = {t: {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}
                            for t, kw in self.task_kwargs.items()}
        if not d["task_kwargs"]:
            del d["task_kwargs"]  # runs made before data could be given keep their identity
        return d

    def identity(self) -> dict:
        """The fields that determine the result (compared on rerun and resume)."""
        return {k: v for k, v in self.to_json().items() if k not in RUN_FIELDS}


# --- data ---------------------------------------------------------------------------------------


def training_pairs(config: ReMixConfig, tokenizer=None) -> list[TrainPair]:
    """The tasks' reference traces and the traces file's rows (checked). Prompts are rendered with
    ``tokenizer``'s chat template (``config.chat_template``); without a tokenizer the rows are only
    read and checked, and prompts stay plain."""
    pairs: list[TrainPair] = []
    render = (lambda p: render_prompt(tokenizer, p, config.chat_template)) if tokenizer is not None else (lambda p: p)
    if config.tasks:
        for i, name in enumerate(config.tasks):
            task = build_task(name, config.task_kwargs)
            kw: dict[str, Any] = {"seed": config.seed * 1000 + i}
            if config.difficulty is not None:
                kw["difficulty"] = config.difficulty
            exs = task.examples("train", config.n_examples, **kw)
            pairs += [TrainPair(render(ex.prompt), task.reference_completion(ex)) for ex in exs]
    if config.traces is not None:
        rows = read_traces(config.traces)
        if tokenizer is None:
            pairs += [TrainPair(r.get("prompt", ""), r.get("completion", "")) for r in rows]
        else:
            pairs += trace_pairs(tokenizer, rows, chat_template=config.chat_template, path=config.traces)
    return pairs


# --- trainer ------------------------------------------------------------------------------------


class ReMixTrainer(MixtureTrainer):
    """HF Trainer whose ``compute_loss`` is the ReMix RLOO surrogate (or, for the top-k baseline,
    the per-sequence SFT loss). Checkpoints hold only the trainable tensors."""

    def __init__(self, *args, remix_config: ReMixConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.remix_config = remix_config
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by GA steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.remix_config
        mix = self.accelerator.unwrap_model(model)
        input_ids, attn, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        B = input_ids.shape[0]
        M = cfg.samples if (cfg.router == "remix" and model.training) else 1
        embeds = mix.get_input_embeddings()(input_ids)  # the one exactly shareable piece

        def rep(t):
            return t.repeat(M, *([1] * (t.dim() - 1))) if M > 1 else t

        rep_labels, rep_attn = rep(labels), rep(attn)
        with final_hidden_states(mix) as head:
            outputs = model(inputs_embeds=rep(embeds), attention_mask=rep_attn, use_cache=False)
        seq_loss = chunked_sequence_losses(outputs.logits, head, rep_labels, cfg.loss_chunk_tokens).view(M, B)
        routings = [(s.name, s.routing) for s in mix.sites if s.routing is not None]
        if M > 1:
            if cfg.logq_tokens == "all":
                tok_mask = rep_attn.float()
            else:
                tok_mask = torch.zeros_like(rep_attn, dtype=torch.float32)
                tok_mask[:, :-1] = (rep_labels[:, 1:] != -100).float()
            log_q = sum((r.log_prob * tok_mask).sum(-1) for _, r in routings if r.log_prob is not None)
            if not torch.is_tensor(log_q):
                raise LoramixError("the routers produced no log-probabilities (is the model in training mode?)")
            loss = rloo_surrogate(seq_loss, log_q.view(M, B))
        else:
            loss = seq_loss.mean()
        if model.training:
            self._record(routings, rep_attn, seq_loss)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _record(self, routings, attn, seq_loss):
        self.record_routing(attn)
        if seq_loss.shape[0] > 1:
            self.log_metric("sample_loss_std", seq_loss.std(0).mean())


# --- entry point --------------------------------------------------------------------------------


def build_mixture(model: nn.Module, config: ReMixConfig):
    """Fresh experts + per-layer routers (``router`` remix or topk) on ``model``, experts trainable."""
    if config.router == "remix":
        scale, options = 1.0, ReMixOptions(rank=config.rank, omega=config.omega, logq=config.logq)
    else:
        alpha = config.alpha if config.alpha is not None else 2.0 * config.rank
        scale, options = alpha / config.rank, TopKOptions(normalize=True) if config.router == "topk" else None
    experts = fresh_experts(model, config.n_experts, config.rank, config.targets, seed=config.seed, scale=scale,
                            prefix=config.router)
    top_k = config.n_experts if config.router == "soft" else config.top_k
    mixture_config = MixtureConfig(router=config.router, top_k=top_k, shared_router=False,
                                   router_options=options, trainable_experts=True)
    mixture = compose(model, experts, mixture_config, seed=config.seed)
    if config.router == "remix" and config.detach_router_input:
        for router in mixture.routers:  # a hook, not a wrapper: state-dict keys stay those of load_mixture
            router.register_forward_pre_hook(lambda _mod, args: (args[0].detach(), *args[1:]))
    return mixture


def train_remix(config: ReMixConfig) -> Path:
    """Train a ReMix (or top-k baseline) mixture of fresh LoRA experts; returns ``config.out``.

    Writes ``config.out`` atomically: the mixture (``load_mixture(out, base_model)`` restores it),
    ``metrics.json`` and ``train_log.json`` (Trainer log history, with ESS per layer). Trainer
    checkpoints go to ``<out>.partial`` and a rerun resumes from the latest (also with more
    ``steps``); if ``out`` already holds this run the call does nothing."""
    return fit_remix(config)[0]


def fit_remix(config: ReMixConfig):
    """``train_remix`` that also returns the trained mixture (in eval mode): ``(out, mixture)``;
    ``mixture`` is None when ``out`` was already complete (nothing trained)."""
    config.validate()
    run = RunFolder(config.out, config.identity(), complete_files=(MIXTURE_CONFIG, MIXTURE_WEIGHTS, METRICS_FILE),
                    may_extend=("steps",), force=config.force)
    if run.finished():
        return run.out, None
    with torch_threads(config.threads):
        return run.out, _fit(config, run)


def _fit(config: ReMixConfig, run: RunFolder):
    set_seed(config.seed)
    training_pairs(config)  # the tasks' examples and every traces row, checked before the base loads
    base_path = resolve_base(config.base)
    model, tok = load_model_and_tokenizer(base_path)
    dataset = completion_dataset(tok, training_pairs(config, tok), config.max_length)
    mixture = build_mixture(model, config)
    mixture.train()
    args = training_arguments(
        run.open(), max_steps=config.steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, warmup_steps=min(config.warmup_steps, config.steps // 10),
        lr_scheduler_type=config.lr_scheduler_type, logging_steps=config.logging_steps,
        save_steps=config.save_steps, seed=config.seed, data_seed=config.seed, remove_unused_columns=False,
        label_names=["labels"], ddp_find_unused_parameters=False)
    # DDP: False, because ReMix's routers get their gradient only through log Q (their weights do not
    # reach the logits), which DDP's search for unused parameters from the outputs cannot see: it would
    # mark them ready twice. Every trainable tensor does get a gradient each step (a layer's experts
    # are one stacked tensor; the top-k baseline's routers reach the logits).
    trainer = ReMixTrainer(model=mixture, args=args, train_dataset=dataset,
                           data_collator=pad_collator(tok.pad_token_id), remix_config=config,
                           router_learning_rate=0.0 if config.freeze_router else config.router_learning_rate)
    resume = run.last_checkpoint()  # the last *complete* checkpoint: a kill mid-save leaves a torn one
    ledger = run_trainer(trainer, config.router, resume=resume, progress=config.progress)
    mixture.eval()
    metrics = _metrics(config, trainer, base_path, ledger.seconds, resume is not None, len(dataset))
    run.save(mixture.save_pretrained, metrics, log_history=trainer.state.log_history,
             should_save=trainer.args.should_save, keep_work=config.keep_checkpoints)
    return mixture


def _metrics(config: ReMixConfig, trainer, base_path, train_seconds: float, resumed: bool, examples: int) -> dict:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    summary = next((h for h in reversed(history) if "train_loss" in h), {})
    last_ess = next((h for h in reversed(history) if "ess_mean" in h), {})
    mixture = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "loramix_version": __version__,
        "config": config.to_json(),
        "inputs_sha256": {str(config.traces): sha256_file(config.traces)} if config.traces else {},
        "base_weights_sha256": base_fingerprint(base_path),
        "base_path": str(base_path),
        "seed": config.seed,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_step": round(train_seconds / max(1, config.steps), 4),
        "steps": trainer.state.global_step,
        "resumed": resumed,
        "final_loss": losses[-1] if losses else summary.get("train_loss"),
        "mean_train_loss": summary.get("train_loss"),
        "ess": {k.removeprefix("ess/"): v for k, v in last_ess.items() if k.startswith("ess/")},
        "ess_mean": last_ess.get("ess_mean"),
        "trainable_parameters": mixture.trainable_parameters(),
        "parameter_report": mixture.parameter_report(),
        "examples": examples,
    }


__all__ = ["ReMixConfig", "train_remix", "fit_remix", "rloo_surrogate", "fresh_experts", "effective_sample_size",
           "sequence_losses", "build_mixture", "training_pairs"]
