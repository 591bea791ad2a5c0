"""PEFT X-LoRA over the experts with its classifier trained by SFT on the traces (the experts stay
frozen). Saved as a recipe folder that ``loramix.baselines.peft_mixtures.load_baseline`` reopens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file
from transformers import Trainer

from loramix import __version__
from loramix.baselines.peft_mixtures import BASELINE_FILE, XLORA_DEFAULTS, XLORA_WEIGHTS, _xlora_classifier, _xlora_model
from loramix.experts import adapter_folders, expert_digests
from loramix.io import write_json
from loramix.loading import load_base
from loramix.train.common import RunFolder, count_trainable, loss_curve, run_trainer, training_arguments
from loramix.train.data import completion_dataset, pad_collator, read_traces, trace_pairs


def build_xlora(base: str | Path, experts: Sequence[str | Path], out: str | Path, *, traces: str | Path | None = None,
                steps: int = 0, batch_size: int = 8, learning_rate: float = 1e-3, max_length: int = 512,
                seed: int = 0, chat_template: bool = True, progress: bool = True, **xlora_options) -> Path:
    """PEFT X-LoRA over the experts (adapter names ``"0"``, ``"1"``, ...). With ``traces`` and
    ``steps > 0`` its classifier is trained by SFT (HF Trainer, loss on completion tokens; the experts
    stay frozen; rows are prompt/completion or chat ``messages``, prompts rendered with the chat
    template when ``chat_template`` and the tokenizer has one, as evaluation renders them). Saved as
    a recipe folder: ``loramix_baseline.json`` (kind ``xlora``, base, experts and their sha256, the
    X-LoRA options) + ``xlora_classifier.safetensors`` (+ ``metrics.json``). Reopen with
    ``load_baseline``. Generation runs without a KV cache (X-LoRA's requirement).
    ``xlora_options``: fields of PEFT's ``XLoraConfig`` (defaults ``XLORA_DEFAULTS``)."""
    paths = adapter_folders(experts)
    options = {**XLORA_DEFAULTS, **xlora_options}
    identity = {"base": str(base), "experts": [str(p) for p in paths], "traces": None if traces is None else str(traces),
                "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "max_length": max_length,
                "seed": seed, "chat_template": chat_template, "options": options}
    run = RunFolder(out, identity, force=True, what="X-LoRA baseline")  # nothing to resume: rebuilt each time
    train = traces is not None and steps > 0
    rows = read_traces(traces) if train else []  # a bad traces file is refused before the base is loaded
    model, tok, base_path = load_base(base)
    xm = _xlora_model(model, paths, options, seed)
    trainer = None
    if train:
        data = completion_dataset(tok, trace_pairs(tok, rows, chat_template=chat_template, path=traces), max_length)
        args = training_arguments(
            run.open(), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
            lr_scheduler_type="constant", logging_steps=max(1, steps // 20), save_strategy="no", seed=seed,
            data_seed=seed, remove_unused_columns=False)
        xm.train()
        trainer = Trainer(model=xm, args=args, train_dataset=data, data_collator=pad_collator(tok.pad_token_id))
        seconds = run_trainer(trainer, "X-LoRA classifier", resume=None, progress=progress).seconds
    history = [dict(h) for h in trainer.state.log_history] if trainer is not None else []
    xm.eval()
    clf = _xlora_classifier(xm)
    recipe = {"kind": "xlora", "loramix_version": __version__, "base": str(base_path),
              "experts": [str(p.resolve()) for p in paths], "experts_sha256": [expert_digests(p) for p in paths],
              "options": options, "seed": seed, "trained": bool(history),
              "traces": str(traces) if traces is not None else None, "steps": steps if history else 0,
              "chat_template": chat_template}
    metrics = {"kind": "xlora", "train_seconds": round(seconds, 3) if trainer is not None else 0.0,
               "trainable_parameters": count_trainable(clf), "loss_curve": loss_curve(history)}

    def write(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}, str(folder / XLORA_WEIGHTS))
        write_json(folder / BASELINE_FILE, recipe)

    return run.save(write, metrics, should_save=trainer is None or trainer.args.should_save)


__all__ = ["build_xlora"]
