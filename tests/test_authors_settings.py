"""The MoR-LoRA authors' settings (recipes/authors-*.yaml) reach TRL's and PEFT's own configs, and
loramix's defaults stay what they were. Nothing here trains: the pipeline's trainer calls are
replaced by a recorder, and the configs they would have received are built as the trainers build them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from transformers import SchedulerType, get_scheduler

import loramix.pipeline as pipeline_module
from conftest import adapter_set, tiny_model
from loramix.errors import LoramixError
from loramix.mixture import MixtureConfig, compose
from loramix.pipeline import Pipeline
from loramix.recipe import Recipe, RouterStage, load_recipe
from loramix.train.experts import ExpertTrainConfig, _grpo_args, _lora_config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("authors-*.yaml"))


def _recorded(monkeypatch, tmp_path, recipe: Recipe, stage: str, methods: list[str]) -> list:
    """The configs the pipeline's ``stage`` hands to its trainer (``train_expert`` / ``train_router``)."""
    seen = []
    monkeypatch.setattr(pipeline_module, "train_expert", lambda cfg, **kw: seen.append(cfg))
    monkeypatch.setattr(pipeline_module, "train_router", lambda cfg: seen.append(cfg))
    small = dataclasses.replace(recipe, tasks=["add"], task_kwargs={}, methods=methods,
                                evaluate=dataclasses.replace(recipe.evaluate, mixed_pairs=[]))
    pipe = Pipeline(small, tmp_path / "runs", progress=False)
    pipe.base = str(tmp_path / "base")  # never loaded: the trainers are replaced
    getattr(pipe, stage)()
    return seen


def _lr_curve(args, steps: int) -> list[float]:
    """The learning rates HF's own scheduler gives ``args`` over ``steps`` optimizer steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(steps),
                          num_training_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_there_is_an_authors_recipe_per_real_base():
    assert [p.stem for p in RECIPES] == ["authors-llama-3.2-3b", "authors-qwen2.5-0.5b", "authors-qwen2.5-1.5b"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_authors_expert_settings_reach_grpo_config_and_lora_config(path, tmp_path, monkeypatch):
    recipe = load_recipe(path)
    rl, sft = _recorded(monkeypatch, tmp_path, recipe, "train_experts", ["expert_rl", "expert_sft"])
    assert (rl.method, sft.method) == ("grpo", "sft")
    args = _grpo_args(rl, tmp_path / "ckpt", rl.steps, 2048)
    assert args.top_p == 0.95 and args.temperature == 1.0 and args.num_generations == 2 and args.beta == 0.0
    assert args.lr_scheduler_type == SchedulerType.COSINE and args.learning_rate == 5e-6
    assert args.max_completion_length == 2048 and args.per_device_train_batch_size == 16
    assert args.get_warmup_steps(rl.steps) == math.ceil(0.03 * rl.steps)
    lrs = _lr_curve(args, 100)  # 3 warm-up steps rising from 0, then a cosine decay toward 0
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(5e-6) and lrs[50] == pytest.approx(5e-6 * 0.5258, rel=0.02)
    lora = _lora_config(rl)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (128, 256, 0.1)
    assert set(lora.target_modules) == {"gate_proj", "up_proj", "down_proj"}
    sft_args = _grpo_args(sft, tmp_path / "ckpt", sft.steps, 8)  # the phases share scheduler and warm-up
    assert sft_args.lr_scheduler_type == SchedulerType.COSINE and _lora_config(sft).lora_dropout == 0.1


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_authors_router_settings_reach_the_router_trainer(path, tmp_path, monkeypatch):
    recipe = load_recipe(path)
    (cfg,) = _recorded(monkeypatch, tmp_path, recipe, "train_mixtures", ["mor_lora_hard"])
    assert cfg.batch_size == 16 and cfg.learning_rate == 5e-6 and cfg.num_train_epochs == 1
    assert (cfg.lr_scheduler_type, cfg.warmup_ratio, cfg.max_length, cfg.seed) == ("cosine", 0.03, 5120, 1997)
    m = cfg.mixture
    assert (m.router, m.top_k, m.shared_router, m.router_options.ste) == ("hard", 1, True, "chosen")
    assert (m.attention_lora_rank, m.attention_lora_alpha, m.attention_lora_dropout) == (128, 256, 0.1)
    assert "mor_lora_hard_chosen" not in recipe.methods  # ste: chosen makes it a repeat of mor_lora_hard


def test_attention_lora_dropout_reaches_peft(tmp_path):
    """PEFT builds the attention LoRA with the mixture's dropout; 0 (the default) is no dropout."""
    model = tiny_model()
    experts = adapter_set(model, tmp_path)
    for dropout in (0.1, 0.0):
        mixture = compose(tiny_model(), experts, MixtureConfig(attention_lora_rank=4, attention_lora_alpha=8,
                                                                 attention_lora_dropout=dropout))
        drops = [m for name, m in mixture.named_modules() if name.endswith("lora_dropout.attention")
                 or ".lora_dropout." in name]
        assert drops, "no attention LoRA dropout module found"
        if dropout:
            assert {type(d).__name__ for d in drops} == {"Dropout"} and {d.p for d in drops} == {dropout}
        else:
            assert {type(d).__name__ for d in drops} == {"Identity"}
    with pytest.raises(LoramixError, match="attention_lora_dropout"):
        MixtureConfig(attention_lora_dropout=1.0)


def test_defaults_keep_todays_behaviour_and_run_identity(tmp_path, monkeypatch):
    """A recipe that names none of the new settings trains as before: linear schedule, no warm-up,
    top_p 1, no dropout, the paper's STE; and an expert's identity has no new keys (old runs resume)."""
    rl, = _recorded(monkeypatch, tmp_path, Recipe(), "train_experts", ["expert_rl"])
    args = _grpo_args(rl, tmp_path / "ckpt", 10, 8)
    assert args.lr_scheduler_type == SchedulerType.LINEAR and args.get_warmup_steps(10) == 0 and args.top_p == 1.0
    assert _lora_config(rl).lora_dropout == 0.0
    assert not {"top_p", "lr_scheduler_type", "warmup_ratio"} & set(ExpertTrainConfig(task="add").identity())
    assert ExpertTrainConfig(task="add", top_p=0.95).identity()["top_p"] == 0.95
    (router,) = _recorded(monkeypatch, tmp_path / "r", Recipe(), "train_mixtures", ["mor_lora_hard"])
    assert router.mixture.router_options.ste == "full" and router.mixture.attention_lora_dropout == 0.0
    assert "attention_lora_dropout" not in router.identity()["mixture"]


def test_bad_new_settings_are_refused(tmp_path):
    with pytest.raises(LoramixError, match=r"recipe router.ste: unknown 'half'; valid: full, chosen"):
        Pipeline(dataclasses.replace(Recipe(), router=RouterStage(ste="half")), tmp_path)
    for field, value in (("top_p", 0.0), ("warmup_ratio", 1.0), ("lr_scheduler_type", "cosinus")):
        with pytest.raises(LoramixError, match=f"train-expert: {field}"):
            ExpertTrainConfig(task="add", **{field: value}).validate()
