"""Stage 2b of MoR-LoRA: train only the router (and an optional small attention LoRA) over frozen
experts, by cross-entropy on the completion tokens of distilled traces.

The trainer is the HF ``Trainer`` (so ``accelerate launch`` gives DDP/FSDP/DeepSpeed unchanged), as
``MixtureTrainer``: its checkpoints hold the trainable tensors, not the base model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from loramix import __version__
from loramix.experts import WEIGHTS_NAME, adapter_folders
from loramix.io import sha256_file
from loramix.loading import load_base_model
from loramix.mixture import MixtureConfig, MixtureModel, compose
from loramix.train.common import RunFolder, run_trainer, training_arguments
from loramix.train.data import completion_dataset, pad_collator, read_traces, trace_pairs
from loramix.train.trainer import MixtureTrainer, RouterStepCallback

# Fields that change how a run is executed or shown, not what it produces.
RUN_FIELDS = frozenset({"out", "progress", "save_steps", "logging_steps"})


@dataclass
class RouterTrainConfig:
    """Stage 2b: router (+ attention LoRA) training over frozen experts."""

    base: str
    experts: list[str]
    traces: str
    out: str
    mixture: MixtureConfig = field(default_factory=lambda: MixtureConfig(attention_lora_rank=8))
    learning_rate: float = 1e-3
    router_learning_rate: float | None = None  # None: learning_rate
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    num_train_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    max_length: int = 512
    save_steps: int = 50
    logging_steps: int = 5
    seed: int = 0
    chat_template: bool = True  # render prompts with the tokenizer's chat template, when it has one
    progress: bool = True
    force: bool = False

    def identity(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in RUN_FIELDS | {"force"}}
        if not d["mixture"]["attention_lora_dropout"]:
            del d["mixture"]["attention_lora_dropout"]  # runs made before it existed keep their identity
        return d


def train_router(cfg: RouterTrainConfig) -> Path:
    """Train the router over frozen experts and save the mixture folder at ``cfg.out`` (atomic).
    Rerunning resumes from the last checkpoint in ``<out>.partial``; a finished ``out`` is kept."""
    run = RunFolder(cfg.out, cfg.identity(), force=cfg.force)
    if run.finished():
        return run.out
    adapter_folders(cfg.experts)  # bad input is refused before the base is built or loaded
    rows = read_traces(cfg.traces)
    model, tok = load_base_model(cfg.base)
    data = completion_dataset(tok, trace_pairs(tok, rows, chat_template=cfg.chat_template, path=cfg.traces),
                              cfg.max_length)
    mixture = compose(model, cfg.experts, cfg.mixture, seed=cfg.seed)
    mixture.record_routing = False
    args = training_arguments(
        run.open(), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, seed=cfg.seed,
        data_seed=cfg.seed, remove_unused_columns=False, ddp_find_unused_parameters=cfg.mixture.router == "remix")
    # DDP: the routers (but ReMix's, whose weights are constants: it learns by RLOO, in train-remix) and
    # the attention LoRA get a gradient every step, so no search for unused parameters, which would
    # also rebuild the model output and fail on its extra aux_loss key (--load-balance, --z-loss).
    trainer = MixtureTrainer(model=mixture, args=args, train_dataset=data,
                             data_collator=pad_collator(tok.pad_token_id),
                             router_learning_rate=cfg.router_learning_rate)
    resume = run.last_checkpoint()  # the last *complete* checkpoint: a kill mid-save leaves a torn one
    ledger = run_trainer(trainer, f"router {cfg.mixture.router}", resume=resume, progress=cfg.progress,
                         callbacks=[RouterStepCallback()])
    mixture.record_routing = True
    inputs = [cfg.traces] + [str(Path(e) / WEIGHTS_NAME) for e in cfg.experts]
    domains = dict(Counter(str(r["task"]) for r in rows if r.get("task") is not None))
    extra = {"rows_per_domain": domains, **domain_routing_accuracy(mixture, data, rows)} if domains else None
    return save_mixture_run(run, mixture, cfg, trainer, ledger.seconds, resume is not None, inputs, extra=extra)


@torch.no_grad()
def domain_routing_accuracy(mixture: MixtureModel, data, rows: list[dict], max_rows: int = 64) -> dict:
    """Routing accuracy on the training rows whose ``domain`` (``task``) names an expert: the share of
    their tokens, over every site, whose top-weighted expert is the domain's. The first ``max_rows``
    such rows; ``{}`` when no row's domain is an expert's name (name experts after their domains)."""
    names = list(mixture.expert_names)
    picked = [(names.index(r["task"]), data[i]["input_ids"]) for i, r in enumerate(rows) if r.get("task") in names]
    if not picked:
        return {}
    was_training = mixture.training
    mixture.eval()
    hits, totals = Counter(), Counter()
    for want, ids in picked[:max_rows]:
        mixture(input_ids=torch.tensor([ids]))
        for site in mixture.routing_trace():
            top = site.expert_ids.gather(-1, site.weights.argmax(-1, keepdim=True))[0, :, 0]
            hits[names[want]] += int((top == want).sum())
            totals[names[want]] += top.numel()
    mixture.train(was_training)
    return {"routing_accuracy": round(sum(hits.values()) / sum(totals.values()), 4),
            "routing_accuracy_per_domain": {d: round(hits[d] / totals[d], 4) for d in totals},
            "routing_accuracy_rows": min(len(picked), max_rows)}


def save_mixture_run(run: RunFolder, mixture: MixtureModel, cfg, trainer, seconds: float, resumed: bool,
                     inputs: list[str], extra: dict | None = None) -> Path:
    """The mixture folder plus ``metrics.json`` (config, seed, version, input digests, loss curve)
    and ``train_log.json``, all appearing at once."""
    log_history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h]
    metrics = {
        "loramix_version": __version__, "config": asdict(cfg), "seed": cfg.seed,
        "train_seconds": seconds, "resumed": resumed, "trainable_parameters": mixture.trainable_parameters(),
        "parameters": mixture.parameter_report(), "loss_curve": losses,
        "inputs_sha256": {p: sha256_file(p) for p in inputs if Path(p).is_file()},
        **(extra or {}),
    }
    return run.save(mixture.save_pretrained, metrics, log_history=log_history,
                    should_save=trainer.args.should_save)
