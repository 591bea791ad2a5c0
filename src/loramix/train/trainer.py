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
from loramix.routers import effective_sample_size

TRAINING_ARGS_NAME = "training_args.bin"
CHECKPOINT_MIXTURE = "mixture"


class MixtureTrainer(Trainer):
    """Also logs routing health with the loss, so ``train_log.json`` shows collapse over steps:
    ``ess/<site>`` (ESS of the router distribution q averaged over the batch's tokens), ``ess_mean``
    and ``ess_worst`` (its mean and minimum over sites), ``ess_token`` (the mean per-token ESS of the
    weights tokens used: k for ReMix by construction, toward 1 for a collapsing soft router) and
    ``ess_q_token`` / ``ess_q_token_worst`` (the mean per-token ESS of q itself, mean and minimum over
    sites: the measure that compares a soft mixture, top-k and ReMix on the same footing)."""

    def __init__(self, *args, router_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.router_learning_rate = router_learning_rate
        self._step_metrics: dict[str, list[torch.Tensor]] = {}

    def create_optimizer(self, model=None):
        """AdamW with the routers in their own group when ``router_learning_rate`` is set (a gate is
        a few thousand weights and may want a much larger rate than the LoRAs); else the stock one."""
        if self.optimizer is None and self.router_learning_rate is not None:
            params = [(n, p) for n, p in (model or self.model).named_parameters() if p.requires_grad]
            router = [p for n, p in params if n.startswith("routers.")]
            rest = [p for n, p in params if not n.startswith("routers.")]
            groups = [{"params": rest, "weight_decay": self.args.weight_decay},
                      {"params": router, "weight_decay": 0.0, "lr": self.router_learning_rate}]
            self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.args.learning_rate)
            return self.optimizer
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if (aux is not None and num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.accelerator.num_processes > 1):
            # HF multiplied the loss by the number of processes (its cross-entropy is this rank's share
            # of the global token count, and DDP averages); the auxiliary loss is this rank's own mean
            loss = loss - aux * (self.accelerator.num_processes - 1)
        if model.training:
            self.record_routing(inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss

    def log_metric(self, key: str, value: torch.Tensor) -> None:
        """Kept as a tensor until the next log, so a training step never waits on the device."""
        self._step_metrics.setdefault(key, []).append(value.detach().float())

    @torch.no_grad()
    def record_routing(self, attention_mask: torch.Tensor | None) -> None:
        """ESS per site of the last forward (``Routing.probs`` averaged over real tokens)."""
        mixture = self.accelerator.unwrap_model(self.model)
        values, tokens, q_tokens = [], [], []
        for site in mixture.sites:
            probs = site.routing.probs if site.routing is not None else None
            if probs is None or probs.dim() != 3:
                continue
            mask = (attention_mask if attention_mask is not None else probs.new_ones(probs.shape[:2]))
            mask = mask.to(probs.dtype).unsqueeze(-1)
            pi = (probs * mask).sum((0, 1)) / mask.sum().clamp_min(1.0)
            value = effective_sample_size(pi)
            values.append(value)
            self.log_metric(f"ess/{site.name}", value)
            w = site.routing.weights.float()  # per token: ESS of the weights it actually used
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
            tokens.append((effective_sample_size(w) * mask[..., 0]).sum() / mask.sum().clamp_min(1.0))
            q_tokens.append((effective_sample_size(probs.float()) * mask[..., 0]).sum() / mask.sum().clamp_min(1.0))
        if values:
            self.log_metric("ess_mean", torch.stack(values).mean())
            self.log_metric("ess_worst", torch.stack(values).min())
            self.log_metric("ess_token", torch.stack(tokens).mean())
            self.log_metric("ess_q_token", torch.stack(q_tokens).mean())
            self.log_metric("ess_q_token_worst", torch.stack(q_tokens).min())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._step_metrics and "loss" in logs:
            logs.update({k: round(float(torch.stack(v).mean()), 4) for k, v in self._step_metrics.items()})
            self._step_metrics = {}
        super().log(logs, start_time)

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
