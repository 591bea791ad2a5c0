"""One multi-task LoRA (same targets as the experts) trained by SFT on the union of the traces, loss
on the completion only; rows are prompt/completion or chat ``messages`` (``loramix.train.data``).
``rank`` is exposed so a pipeline can match a mixture's active parameter count
(``single_lora_same_active``). Output: an ordinary PEFT adapter folder + ``metrics.json``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import Trainer, set_seed

from loramix import __version__
from loramix.errors import LoramixError
from loramix.experts import MLP_MODULES
from loramix.io import sha256_file
from loramix.loading import load_base
from loramix.train.common import RunFolder, count_trainable, loss_curve, run_trainer, torch_threads, training_arguments
from loramix.train.data import completion_dataset, pad_collator, read_traces, trace_pairs


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
    chat_template: bool = True  # render prompts with the tokenizer's chat template, when it has one
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
    with torch_threads(cfg.threads):
        return _train_multitask(cfg, callbacks)


def _train_multitask(cfg: MultitaskConfig, callbacks: Sequence) -> Path:
    if cfg.rank < 1:
        raise LoramixError(f"rank must be at least 1, got {cfg.rank}")
    if cfg.steps < 1:
        raise LoramixError(f"steps must be at least 1, got {cfg.steps}")
    run = RunFolder(cfg.out, cfg.identity(), force=cfg.force, what="multi-task LoRA")
    if run.finished():
        return run.out
    rows = read_traces(cfg.traces)  # a bad traces file is refused before the base is loaded
    model, tok, base_path = load_base(cfg.base)
    data = completion_dataset(tok, trace_pairs(tok, rows, chat_template=cfg.chat_template, path=cfg.traces),
                              cfg.max_length)
    set_seed(cfg.seed)
    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    pm = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    pm.train()
    args = training_arguments(
        run.open(), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False)
    trainer = Trainer(model=pm, args=args, train_dataset=data, data_collator=pad_collator(tok.pad_token_id))
    resume = run.last_checkpoint()
    ledger = run_trainer(trainer, f"multitask LoRA r{cfg.rank} ({Path(cfg.out).name})", resume=resume, progress=cfg.progress, callbacks=callbacks)
    history = [dict(h) for h in trainer.state.log_history]
    metrics = {"loramix_version": __version__, "kind": "multitask_lora", "config": cfg.identity(),
               "seed": cfg.seed, "base": str(base_path), "train_seconds": round(ledger.seconds, 3),
               "resumed_from": resume.name if resume is not None else None,
               "trainable_parameters": count_trainable(pm), "rank": cfg.rank, "alpha": alpha, "rows": len(rows),
               "rows_per_task": dict(Counter(str(r.get("task")) for r in rows)), "loss_curve": loss_curve(history),
               "inputs_sha256": {str(cfg.traces): sha256_file(cfg.traces)}}
    pm.peft_config["default"].base_model_name_or_path = str(base_path)
    return run.save(lambda folder: pm.save_pretrained(str(folder)), metrics, log_history=history,
                    should_save=trainer.args.should_save)


__all__ = ["MultitaskConfig", "train_multitask"]
