"""Baselines over the same LoRA experts, each saved in a form ``loramix evaluate`` opens. Inference
side only (nothing here imports ``loramix.train``):

* ``merges``: static merges by PEFT ``add_weighted_adapter`` (linear, cat, TIES, DARE).
* ``peft_mixtures``: PEFT X-LoRA / Arrow model objects, ``build_arrow``, ``load_baseline``.
* ``prompt_router``: the prompt-level classifier (``PromptRouter``) and its routing hooks.
* ``oracle``: fixed-router mixtures for ``evaluate --routing oracle``.

The trained baselines are in ``loramix.train``: ``multitask`` (one multi-task LoRA), ``xlora``
(``build_xlora``) and ``prompt_router`` (``build_prompt_router``).
"""

from loramix.baselines.merges import MERGE_METHODS, merge_experts
from loramix.baselines.oracle import make_oracle_mixture, recorded_expert_for_task
from loramix.baselines.peft_mixtures import BASELINE_FILE, baseline_kind, build_arrow, is_baseline, load_baseline
from loramix.baselines.prompt_router import (
    PromptRouter,
    has_prompt_router,
    load_prompt_router,
    prompt_features,
    prompt_router_hook,
    route_prompts,
)

__all__ = ["BASELINE_FILE", "MERGE_METHODS", "PromptRouter", "baseline_kind", "build_arrow", "has_prompt_router",
           "is_baseline", "load_baseline", "load_prompt_router", "make_oracle_mixture", "merge_experts",
           "prompt_features", "prompt_router_hook", "recorded_expert_for_task", "route_prompts"]
