"""Stage 2b of MoR-LoRA: train only the router (and an optional small attention LoRA) over frozen
experts, by cross-entropy on the completion tokens of distilled traces.

The trainer is the HF ``Trainer`` (so ``accelerate launch`` gives DDP/FSDP/DeepSpeed unchanged), as
``MixtureTrainer``: its checkpoints hold the trainable tensors, not the base model.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from loramix import __version__
from loramix.io import atomic_path, sha256_file, write_json
from loramix.loading import load_base_model
from loramix.mixture import MixtureModel, compose
from loramix.train.common import last_checkpoint
from loramix.train.data import completion_dataset, pad_collator, read_traces
from loramix.train.trainer import MixtureTrainer, RouterStepCallback


# --- config and trainer -------------------------------------------------------------------------


@dataclass
class RouterTrainConfig:
    """Stage 2b: router (+ attention LoRA) training over frozen experts."""

    base: str
    experts: list[str]
    traces: str
    out: str
    router: str = "hard"
    top_k: int | None = None
    shared_router: bool = True
    attention_lora_rank: int = 8
    attention_lora_alpha: float | None = None
    router_kwargs: dict = field(default_factory=dict)
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
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
    progress: bool = True


def _training_args(cfg: RouterTrainConfig, output_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed, report_to=[],
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), bf16=False,
        disable_tqdm=not cfg.progress, dataloader_num_workers=0, save_only_model=False,
    )


def train_router(cfg: RouterTrainConfig) -> Path:
    """Train the router over frozen experts and save the mixture folder at ``cfg.out`` (atomic).
    Rerunning resumes from the last checkpoint in ``<out>.partial``; a finished ``out`` is kept."""
    out = Path(cfg.out)
    if (out / "metrics.json").is_file():
        return out
    model, tok = load_base_model(cfg.base)
    rows = read_traces(cfg.traces)
    data = completion_dataset(tok, [(r["prompt"], r["completion"]) for r in rows], cfg.max_length)
    mixture = compose(model, cfg.experts, router=cfg.router, top_k=cfg.top_k, shared_router=cfg.shared_router,
                      attention_lora_rank=cfg.attention_lora_rank, attention_lora_alpha=cfg.attention_lora_alpha,
                      router_kwargs=cfg.router_kwargs, load_balance_coef=cfg.load_balance_coef,
                      z_loss_coef=cfg.z_loss_coef, seed=cfg.seed)
    mixture.record_routing = False
    work = out.with_name(out.name + ".partial")
    trainer = MixtureTrainer(model=mixture, args=_training_args(cfg, work), train_dataset=data,
                             data_collator=pad_collator(tok.pad_token_id), callbacks=[RouterStepCallback()],
                             router_learning_rate=cfg.router_learning_rate)
    resume = last_checkpoint(work)  # the last *complete* checkpoint: a kill mid-save leaves a torn one
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    mixture.record_routing = True
    save_mixture_run(mixture, out, cfg, trainer.state.log_history, seconds, resumed=resume is not None,
                     inputs=[cfg.traces] + [str(Path(e) / "adapter_model.safetensors") for e in cfg.experts])
    shutil.rmtree(work, ignore_errors=True)
    return out


def save_mixture_run(mixture: MixtureModel, out: Path, cfg, log_history: list[dict], seconds: float,
                     resumed: bool, inputs: list[str], extra: dict | None = None) -> None:
    """The mixture folder plus ``metrics.json`` (config, seed, version, input digests, loss curve)
    and ``train_log.json``, all appearing at once."""
    losses = [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h]
    metrics = {
        "loramix_version": __version__, "config": asdict(cfg), "seed": cfg.seed,
        "train_seconds": seconds, "resumed": resumed, "trainable_parameters": mixture.trainable_parameters(),
        "parameters": mixture.parameter_report(), "loss_curve": losses,
        "inputs_sha256": {p: sha256_file(p) for p in inputs if Path(p).is_file()},
        **(extra or {}),
    }
    with atomic_path(out) as tmp:
        mixture.save_pretrained(tmp)
        write_json(tmp / "train_log.json", log_history)
        write_json(tmp / "metrics.json", metrics)
