"""Pipeline recipes: a YAML file read into typed dataclasses. Unknown keys and wrong types are
refused with the file and the dotted field named."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from loramix.errors import DataError
from loramix.tasks.base import DEFAULT_DIFFICULTY


@dataclass
class ExpertStage:
    """Stage 1: one LoRA expert per task, by GRPO (and the same-size SFT experts)."""

    steps: int = 60
    sft_steps: int = 60
    sft_warmup_steps: int = 0
    grpo_from_sft: bool = False  # the RL expert's GRPO starts from the same task's SFT expert (sft+grpo)
    batch_size: int = 64
    num_generations: int = 8
    temperature: float = 1.0
    learning_rate: float = 5e-4
    sft_learning_rate: float = 5e-4
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # the experts' LoRA dropout (PEFT LoraConfig.lora_dropout)
    beta: float = 0.0  # GRPO's KL coefficient (TRL GRPOConfig.beta)
    top_p: float = 1.0  # GRPO sampling (TRL GRPOConfig.top_p)
    lr_scheduler_type: str = "linear"  # GRPO and SFT (HF Trainer scheduler name)
    warmup_ratio: float = 0.0  # GRPO and SFT: learning-rate warm-up, a fraction of the steps
    n_train: int = 1000
    n_eval: int = 50
    max_completion_length: int | None = None
    # SFT (the SFT experts and any SFT warm-up), built-in synthetic domains only: this share of the
    # prompts is made mixed beside a public partner (another domain at easy), so that each expert
    # learns its part's place in the two-key format
    mixed_share: float = 0.0


@dataclass
class DistillStage:
    n_prompts: int = 200
    samples: int = 4
    temperature: float = 1.0
    max_per_prompt: int = 2
    max_per_task: int = 1000
    mixed_references: int = 0  # per evaluate.mixed_pairs pair: reference mixed traces added for stage 2
    max_new_tokens: int = 256  # tokens per generated trace (the authors use 2048 on real models)


@dataclass
class RouterStage:
    """Stage 2: MoR-LoRA's router (and the soft / top-2 / Gumbel baselines) over frozen experts."""

    num_train_epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-3
    router_learning_rate: float | None = None
    batch_size: int = 16
    attention_lora_rank: int = 8
    attention_lora_alpha: float | None = None
    attention_lora_dropout: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    # mor_lora_hard's straight-through estimator: "full" (the paper's formula) or "chosen" (the
    # authors' code); the mor_lora_hard_chosen method is "chosen" either way
    ste: str = "full"


@dataclass
class ReMixStage:
    n_experts: int = 8
    top_k: int = 2
    rank: int = 8
    samples: int = 4
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-3


@dataclass
class MultitaskStage:
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-4


@dataclass
class EvalStage:
    n: int = 100
    batch_size: int = 50
    split: str = "test"
    mixed_pairs: list[list[str]] = field(default_factory=list)
    mixed_n: int = 50
    # tokens per completion; None: each task's own default (its longest reference x 1.25 + 8), so a
    # task's budget does not depend on which tasks are evaluated with it
    max_new_tokens: int | None = None


@dataclass
class Recipe:
    """The whole experiment. ``methods``: which rows of the report to produce (default: all)."""

    name: str = "tiny"
    base: str = "default"
    # base "default" only: BaseConfig fields of the embedded base changed from their defaults, e.g.
    # {layers: 4, steps: 1000} (a larger base, built and cached under its own config hash)
    embedded_base: dict = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: ["add", "sort", "bool", "mod", "strings"])
    # per task: get_task's kwargs, its data, e.g. {gsm8k: {train: FILE, test: FILE}} (loramix.tasks.splits)
    task_kwargs: dict = field(default_factory=dict)
    difficulty: str = DEFAULT_DIFFICULTY
    eval_difficulty: str = DEFAULT_DIFFICULTY
    max_length: int = 512
    # prompts rendered with the base tokenizer's chat template (a user message), when it has one
    # (Instruct models); the embedded tiny base has none and keeps plain prompts. false: raw prompts
    chat_template: bool = True
    seed: int = 0
    seeds: int = 1  # stage-2 methods are trained with seeds seed, seed + 1, ..., seed + seeds - 1
    methods: list[str] | None = None
    expert: ExpertStage = field(default_factory=ExpertStage)
    distill: DistillStage = field(default_factory=DistillStage)
    router: RouterStage = field(default_factory=RouterStage)
    remix: ReMixStage = field(default_factory=ReMixStage)
    multitask: MultitaskStage = field(default_factory=MultitaskStage)
    evaluate: EvalStage = field(default_factory=EvalStage)


def _check(value, tp, path: Path, where: str):
    """``value`` converted to the annotated type ``tp`` (dataclasses recursively), or a DataError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], path, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DataError(path, where, f"must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path, where)
    if origin is list:
        if not isinstance(value, list):
            raise DataError(path, where, f"must be a list, got {type(value).__name__}")
        return [_check(v, args[0], path, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DataError(path, where, f"must be a mapping, got {type(value).__name__}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise DataError(path, where, f"must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, path: Path, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise DataError(path, where, f"unknown key; valid: {', '.join(sorted(names))}")
    kwargs = {k: _check(v, hints[k], path, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def load_recipe(path: str | Path | None) -> Recipe:
    """The recipe at ``path`` (YAML), or the built-in tiny default when ``path`` is None."""
    if path is None:
        return Recipe()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DataError(path, "file", f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(path, "file", "must hold a mapping")
    recipe = from_dict(Recipe, data, path)
    _check_embedded_base(recipe, path)
    return recipe


def _check_embedded_base(recipe: Recipe, path: Path) -> None:
    if not recipe.embedded_base:
        return
    from loramix.base_model import BaseConfig

    if recipe.base != "default":
        raise DataError(path, "embedded_base", f"applies to base: default only, not base: {recipe.base}")
    hints = typing.get_type_hints(BaseConfig)
    for key, value in recipe.embedded_base.items():
        if key not in hints:
            raise DataError(path, f"embedded_base.{key}", f"unknown key; valid: {', '.join(sorted(hints))}")
        if key != "domains":
            _check(value, hints[key], path, f"embedded_base.{key}")


def with_overrides(recipe: Recipe, base: str | None = None, task_kwargs: dict | None = None) -> Recipe:
    """``recipe`` with the command line's ``--base`` and ``--data`` (``parse_data``'s form) in place
    of its own: a data entry replaces the recipe's file for that task and split (``TASK=FILE``
    replaces the task's whole entry), so a recipe written for one machine runs, or dry-runs, on
    another's copies of the model and data."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.task_kwargs.items()}
    for name, entry in (task_kwargs or {}).items():
        keep = data.get(name) if isinstance(data.get(name), dict) and "path" not in entry else {}
        data[name] = {**keep, **entry}
    return dataclasses.replace(recipe, base=recipe.base if base is None else str(base), task_kwargs=data)
