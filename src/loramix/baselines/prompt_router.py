"""The prompt-level router, inference side: a linear classifier on the base model's mean-pooled
last hidden state of the prompt picks one expert per prompt. It lives in a loramix mixture folder
(``fixed`` router) as ``prompt_router.safetensors`` / ``prompt_router.json``; ``route_prompts`` /
``prompt_router_hook`` apply it around ``generate``. Training it: ``loramix.train.prompt_router``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loramix.errors import LoramixError
from loramix.io import write_json
from loramix.mixture import MixtureModel

PROMPT_ROUTER_WEIGHTS = "prompt_router.safetensors"
PROMPT_ROUTER_CONFIG = "prompt_router.json"


@contextlib.contextmanager
def _bare(model):
    """The base model's computation: a mixture with all-zero expert weights, a PEFT model with its
    adapters disabled, anything else as is."""
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


__all__ = ["PROMPT_ROUTER_CONFIG", "PROMPT_ROUTER_WEIGHTS", "PromptRouter", "has_prompt_router", "load_prompt_router",
           "prompt_features", "prompt_router_hook", "route_prompts"]
