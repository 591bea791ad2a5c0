"""The HF ``Trainer`` for a ``MixtureModel``. Only what a checkpoint holds changes: the trainable
tensors (router, attention LoRA, trainable experts) as a mixture folder, not the frozen base. Resuming
loads them back; optimizer, scheduler and RNG states are the stock Trainer's."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from loramix.errors import LoramixError
from loramix.mixture import MIXTURE_WEIGHTS

TRAINING_ARGS_NAME = "training_args.bin"
CHECKPOINT_MIXTURE = "mixture"


class MixtureTrainer(Trainer):
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir / CHECKPOINT_MIXTURE)
        torch.save(self.args, output_dir / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        path = Path(resume_from_checkpoint) / CHECKPOINT_MIXTURE / MIXTURE_WEIGHTS
        if not path.is_file():
            raise LoramixError(f"{path}: missing; not a loramix mixture checkpoint (remove "
                               f"{resume_from_checkpoint} to start over)")
        model.load_trainable_state_dict(load_file(str(path)), path)


class RouterStepCallback(TrainerCallback):
    """Tells the routers the optimizer step (Gumbel temperature schedule)."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            getattr(model, "module", model).set_router_step(state.global_step)
