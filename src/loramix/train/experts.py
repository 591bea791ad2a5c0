"""Stage 1: train one LoRA expert on one task, by RLVR (TRL `GRPOTrainer`, rewarded by the task's
verifiable reward) or by SFT on the task's reference traces (TRL `SFTTrainer`, loss on completion
tokens only), or SFT warm-up followed by GRPO.

    from loramix.train import ExpertTrainConfig, train_expert
    path = train_expert(ExpertTrainConfig(task="mod", base="default", out="experts/mod"))

The output is an ordinary PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`) on
the MLP projections, plus `metrics.json` (reward curve, greedy accuracy before/after on validation
prompts, timings, config, seed, versions, base-weights sha256).

Robustness: work happens in `<out>.partial/`; the HF Trainer checkpoints every `save_steps` and a rerun
resumes from the last checkpoint (optimizer, scheduler, RNG and data order included). The final folder
is renamed into place only when complete; rerunning on a complete folder with the same config is a
no-op.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel
from rich.console import Console
from transformers import set_seed

import loramix
from loramix.chat import render_prompt, user_message, uses_chat_template
from loramix.errors import LoramixError
from loramix.experts import MLP_MODULES
from loramix.io import atomic_path, read_json, sha256_file, write_json
from loramix.loading import base_fingerprint, load_model_and_tokenizer, resolve_base
from loramix.tasks import SYNTHETIC_TASKS, get_task
from loramix.tasks.mixed import MixedExample, mixed_reference_completion, with_public_partners
from loramix.train.common import (METRICS_FILE, RunFolder, greedy_eval, last_checkpoint, processes, quiet_hf, reward_fn,
                                  run_trainer, torch_threads, training_arguments)

# trl and datasets are imported where used: every `loramix.train.*` import loads this module, and they are slow.

METHODS = ("grpo", "sft")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Fields that change how a run is executed or shown, not what it produces.
RUN_FIELDS = frozenset({"out", "progress", "threads", "force", "save_steps", "eval_batch_size"})
# Settings added after runs were recorded: left out of the identity at these values (today's behaviour).
IDENTITY_DEFAULTS = {"top_p": 1.0, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "mixed_share": 0.0}
LR_SCHEDULERS = tuple(s.value for s in transformers.SchedulerType)  # the names the HF Trainer accepts


@dataclass
class ExpertTrainConfig:
    """Everything `train_expert` needs. Defaults are the pipeline default size on the tiny base
    (a few minutes on 2 CPU cores)."""

    task: str
    task_kwargs: dict = field(default_factory=dict)  # get_task's kwargs: a benchmark's data, {train: FILE, test: FILE}
    out: str | Path = "experts/expert"
    base: str | Path = "default"  # a model folder, or "default" for the embedded base
    method: str = "grpo"  # grpo | sft
    sft_warmup_steps: int = 0  # with method=grpo: this many SFT steps first ("sft+grpo")
    steps: int = 60  # optimizer steps (of the GRPO phase for sft+grpo)
    batch_size: int = 64  # GRPO: completions per step (divisible by num_generations); SFT: examples per step
    num_generations: int = 8  # GRPO group size
    temperature: float = 1.0
    top_p: float = 1.0  # GRPO sampling nucleus (TRL's GRPOConfig.top_p); 1.0: the whole distribution
    max_completion_length: int | None = None  # None: longest reference completion + 25%
    learning_rate: float = 5e-4
    sft_learning_rate: float | None = None  # the SFT phase's rate (method=sft or the warm-up); None: learning_rate
    lr_scheduler_type: str = "linear"  # both phases: the HF Trainer's scheduler name (e.g. "cosine")
    warmup_ratio: float = 0.0  # both phases: learning-rate warm-up, a fraction of the phase's steps
    init_adapter: str | Path | None = None  # start from this PEFT adapter (e.g. the same-size SFT expert)
    rank: int = 8  # LoRA r
    alpha: float = 16.0  # LoRA alpha
    dropout: float = 0.0  # LoRA dropout
    target_modules: tuple[str, ...] = MLP_MODULES
    beta: float = 0.0  # KL coefficient; 0 skips the reference model entirely
    difficulty: str = "medium"
    # SFT only, built-in synthetic domains only: this share of the train prompts becomes a mixed
    # two-key prompt beside a public partner (another domain at easy, the base's pretraining level)
    mixed_share: float = 0.0
    n_train: int = 1000  # train prompts
    n_eval: int = 100  # held-out (validation split) prompts for the before/after accuracy
    seed: int = 0
    chat_template: bool = True  # prompts as chat (TRL applies the template), when the tokenizer has one
    logging_steps: int = 1
    save_steps: int = 10
    eval_batch_size: int = 100
    threads: int | None = None
    progress: bool = True
    force: bool = False  # retrain even if a complete output (or a partial with another config) exists

    @property
    def run_method(self) -> str:
        """How the adapter was made: grpo, sft, sft+grpo (warm-up here or in the init adapter), or
        init+grpo / init+sft (from an adapter whose method is unknown)."""
        if self.init_adapter is not None:
            return f"{init_method(self.init_adapter)}+{self.method}"
        return "sft+grpo" if self.method == "grpo" and self.sft_warmup_steps > 0 else self.method

    def identity(self) -> dict[str, Any]:
        """The fields that determine the result (compared on resume / rerun)."""
        d = {k: v for k, v in asdict(self).items() if k not in RUN_FIELDS}
        d["base"] = str(d["base"])
        d["init_adapter"] = None if d["init_adapter"] is None else str(d["init_adapter"])
        d["task_kwargs"] = {k: str(v) if isinstance(v, Path) else v for k, v in d["task_kwargs"].items()}
        if not d["task_kwargs"]:
            del d["task_kwargs"]  # runs made before data could be given keep their identity
        for name, default in IDENTITY_DEFAULTS.items():
            if d[name] == default:
                del d[name]  # runs made before these settings existed keep their identity
        d["target_modules"] = list(d["target_modules"])
        return d

    def validate(self) -> None:
        if self.method not in METHODS:
            raise _bad("method", f"unknown {self.method!r}; valid: {', '.join(METHODS)}")
        for name in ("steps", "batch_size", "rank", "n_train", "n_eval", "logging_steps", "save_steps",
                     "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _bad(name, f"must be a positive integer, got {v!r}")
        for name in ("learning_rate", "alpha", "temperature"):
            if not getattr(self, name) > 0:
                raise _bad(name, f"must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise _bad("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.beta < 0:
            raise _bad("beta", f"must be >= 0, got {self.beta!r}")
        if not 0 < self.top_p <= 1:
            raise _bad("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.mixed_share < 1:
            raise _bad("mixed_share", f"must be in [0, 1), got {self.mixed_share!r}")
        if self.mixed_share and self.task not in SYNTHETIC_TASKS:
            raise _bad("mixed_share", f"public partners exist only for the built-in synthetic domains "
                                      f"({', '.join(SYNTHETIC_TASKS)}), not {self.task!r}")
        if self.mixed_share and self.method == "grpo" and not self.sft_warmup_steps:
            raise _bad("mixed_share", "applies to SFT (--method sft, or an SFT warm-up before GRPO)")
        if not 0 <= self.warmup_ratio < 1:
            raise _bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio!r}")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise _bad("lr_scheduler_type", f"unknown {self.lr_scheduler_type!r}; valid: {', '.join(LR_SCHEDULERS)}")
        if self.sft_warmup_steps < 0:
            raise _bad("sft_warmup_steps", f"must be >= 0, got {self.sft_warmup_steps!r}")
        if self.sft_warmup_steps and self.method != "grpo":
            raise _bad("sft_warmup_steps", "only applies to --method grpo (SFT warm-up, then GRPO)")
        if self.init_adapter is not None:
            self._validate_init_adapter()
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise _bad("max_completion_length", f"must be a positive integer, got {self.max_completion_length!r}")
        if not self.target_modules:
            raise _bad("target_modules", "must name at least one module")
        if self.method == "grpo":
            self._validate_grpo_batch()

    def _validate_init_adapter(self) -> None:
        if self.sft_warmup_steps:
            raise _bad("init_adapter", "give either an init adapter or SFT warm-up steps, not both")
        init = Path(self.init_adapter)
        missing = [f for f in ADAPTER_FILES if not (init / f).is_file()]
        if missing:
            raise _bad("init_adapter", f"{init} is not a PEFT adapter folder (missing {', '.join(missing)})")
        acfg = read_json(init / "adapter_config.json")
        for field_name, key in (("rank", "r"), ("alpha", "lora_alpha")):
            if key in acfg and float(acfg[key]) != float(getattr(self, field_name)):
                raise _bad("init_adapter", f"{init / 'adapter_config.json'}: {key} is {acfg[key]}, "
                                           f"but this run asks for {field_name}={getattr(self, field_name)}")

    def _validate_grpo_batch(self) -> None:
        if self.num_generations < 2:
            raise _bad("num_generations", f"must be >= 2 (GRPO compares completions of a prompt), "
                                          f"got {self.num_generations}")
        if self.batch_size % self.num_generations:
            raise _bad("batch_size", f"{self.batch_size} completions per step is not divisible by "
                                     f"num_generations={self.num_generations}")
        if self.n_train < self.batch_size // self.num_generations:
            raise _bad("n_train", f"{self.n_train} prompts is fewer than the "
                                  f"{self.batch_size // self.num_generations} prompts of one step")


def _bad(name: str, problem: str) -> LoramixError:
    return LoramixError(f"train-expert: {name}: {problem}")


def _prior_metrics(adapter: str | Path) -> dict:
    """An init adapter's metrics.json when it is a loramix expert; {} for any other PEFT folder."""
    try:
        prior = json.loads((Path(adapter) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return prior if isinstance(prior, dict) else {}


def init_method(adapter: str | Path, prior: dict | None = None) -> str:
    """The method recorded in an init adapter's metrics.json (a loramix expert), else "init"."""
    method = (_prior_metrics(adapter) if prior is None else prior).get("method")
    return method if method in ("sft", "grpo", "sft+grpo") else "init"


def _init_record(adapter: Path) -> dict:
    prior = _prior_metrics(adapter)
    return {"path": str(adapter), "adapter_sha256": sha256_file(adapter / "adapter_model.safetensors"),
            "method": init_method(adapter, prior), "train_seconds": float(prior.get("train_seconds", 0.0) or 0.0),
            "steps": int(prior.get("steps", 0) or 0)}


# --- output folder state ----------------------------------------------------------------------------


def is_complete(out: str | Path) -> bool:
    out = Path(out)
    return all((out / f).is_file() for f in (*ADAPTER_FILES, METRICS_FILE))


def run_folder(cfg: ExpertTrainConfig, base_sha: dict, init: dict | None) -> RunFolder:
    """The expert's run folder; its identity adds the base weights and the init adapter's digests."""
    identity = {**cfg.identity(), "base_weights_sha256": base_sha}
    if init is not None:
        identity["init_adapter_sha256"] = init["adapter_sha256"]
    return RunFolder(cfg.out, identity, force=cfg.force, complete_files=(*ADAPTER_FILES, METRICS_FILE),
                     what="trained expert")


# --- data -------------------------------------------------------------------------------------------


def _examples(task, split: str, n: int, cfg: ExpertTrainConfig):
    try:
        return task.examples(split, n, seed=cfg.seed, difficulty=cfg.difficulty)
    except TypeError:  # tasks without difficulty levels
        return task.examples(split, n, seed=cfg.seed)


def auto_completion_length(task, tokenizer, examples, max_positions: int | None, chat_template: bool = True) -> int:
    """Longest reference completion (in tokens) plus 25% (at least 16), within the context window
    (prompts counted as rendered, ``loramix.chat.render_prompt``)."""
    refs = [task.reference_completion(ex) for ex in examples]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
    budget = longest + max(16, longest // 4)
    if max_positions:
        longest_prompt = max(len(tokenizer(render_prompt(tokenizer, ex.prompt, chat_template),
                                           add_special_tokens=False)["input_ids"]) for ex in examples)
        budget = min(budget, max_positions - longest_prompt)
    if budget < 1:
        raise LoramixError(f"task {task.name!r}: prompts do not fit the base model's context ({max_positions})")
    return budget


def _grpo_dataset(task, examples, chat: bool = False):
    """Prompts as text, or (``chat``) as one user message each: TRL then applies the template."""
    import datasets

    return datasets.Dataset.from_dict({
        "prompt": [user_message(e.prompt) if chat else e.prompt for e in examples],
        "answer": [e.answer for e in examples],
        "task": [e.task or task.name for e in examples],
    })


def _sft_dataset(task, examples, chat: bool = False):
    """Prompt/completion text, or (``chat``) conversational: TRL renders the template and keeps the
    loss on the assistant's reply."""
    import datasets

    completions = [mixed_reference_completion(e) if isinstance(e, MixedExample) else task.reference_completion(e)
                   for e in examples]
    return datasets.Dataset.from_dict({
        "prompt": [user_message(e.prompt) if chat else e.prompt for e in examples],
        "completion": [[{"role": "assistant", "content": c}] for c in completions] if chat else completions,
    })


# --- one training phase -----------------------------------------------------------------------------


def _lora_config(cfg: ExpertTrainConfig) -> LoraConfig:
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")


def _common_args(cfg: ExpertTrainConfig, steps: int, kind: str) -> dict[str, Any]:
    """The settings both phases share (TRL's configs turn gradient checkpointing on by default)."""
    return dict(
        max_steps=steps, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, seed=cfg.seed, gradient_checkpointing=False,
        learning_rate=cfg.sft_learning_rate if kind == "sft" and cfg.sft_learning_rate else cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,  # transformers 5: < 1 is a ratio
    )


def _grpo_args(cfg: ExpertTrainConfig, ckpt_dir: Path, steps: int, max_completion_length: int):
    """TRL's ``GRPOConfig`` for a GRPO phase: sampling, KL, scheduler and warm-up as ``cfg`` says."""
    from trl import GRPOConfig

    return training_arguments(ckpt_dir, args_class=GRPOConfig, **_common_args(cfg, steps, "grpo"),
                              num_generations=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_completion_length=max_completion_length, beta=cfg.beta, shuffle_dataset=True,
                              log_completions=False)


def _grpo_trainer(cfg: ExpertTrainConfig, model, tok, peft_config, ckpt_dir: Path, steps: int, task, train_exs,
                  max_completion_length: int):
    from trl import GRPOTrainer

    args = _grpo_args(cfg, ckpt_dir, steps, max_completion_length)
    return GRPOTrainer(model=model, reward_funcs=reward_fn(task), args=args,
                       train_dataset=_grpo_dataset(task, train_exs, uses_chat_template(tok, cfg.chat_template)),
                       processing_class=tok,
                       peft_config=peft_config)


def _sft_trainer(cfg: ExpertTrainConfig, model, tok, peft_config, ckpt_dir: Path, steps: int, task, train_exs):
    from trl import SFTConfig, SFTTrainer

    max_len = getattr(model.config, "max_position_embeddings", None) or 1024
    args = training_arguments(ckpt_dir, args_class=SFTConfig, **_common_args(cfg, steps, "sft"), max_length=max_len,
                              completion_only_loss=True, packing=False, shuffle_dataset=True)
    tok.padding_side = "right"
    train_exs = with_public_partners(train_exs, task, cfg.mixed_share, cfg.seed)
    return SFTTrainer(model=model, args=args,
                      train_dataset=_sft_dataset(task, train_exs, uses_chat_template(tok, cfg.chat_template)),
                      processing_class=tok, peft_config=peft_config)


def _phase_model(cfg: ExpertTrainConfig, base_path: Path, init_adapter: Path | None):
    """The base (seeded) with the init adapter loaded trainable, and the LoRA config for a fresh
    adapter (None when starting from `init_adapter`)."""
    model, tok = load_model_and_tokenizer(base_path)
    set_seed(cfg.seed)
    peft_config = _lora_config(cfg)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        peft_config = None
    model.train()
    return model, tok, peft_config


def _run_phase(kind: str, steps: int, cfg: ExpertTrainConfig, base_path: Path, work: Path, task, train_exs,
               max_completion_length: int, init_adapter: Path | None, callbacks: Sequence[Any],
               say: Callable[[str], None]) -> tuple[Path, dict]:
    """Train one phase (`sft` or `grpo`) into `work/<kind>_adapter`, resuming from its checkpoints.
    Returns the adapter folder and the phase record."""
    done = work / f"{kind}_adapter"
    record_file = done / "phase.json"
    if all((done / f).is_file() for f in ADAPTER_FILES) and record_file.is_file():
        return done, json.loads(record_file.read_text())

    ckpt_dir = work / f"{kind}_checkpoints"
    resume = last_checkpoint(ckpt_dir)
    if resume is not None:
        say(f"resuming {kind} from {resume.name}")
    model, tok, peft_config = _phase_model(cfg, base_path, init_adapter)
    if kind == "grpo":
        trainer = _grpo_trainer(cfg, model, tok, peft_config, ckpt_dir, steps, task, train_exs, max_completion_length)
    else:
        trainer = _sft_trainer(cfg, model, tok, peft_config, ckpt_dir, steps, task, train_exs)
    ledger = run_trainer(trainer, f"{kind} {task.name}", resume=resume, progress=cfg.progress, callbacks=callbacks)

    record = {"method": kind, "steps": steps, "train_seconds": round(ledger.seconds, 2),
              "resumed_from": resume.name if resume is not None else None,
              "log_history": [dict(h) for h in trainer.state.log_history]}
    if trainer.args.should_save:  # under accelerate launch: the main process alone writes
        with atomic_path(done) as tmp:
            trainer.model.save_pretrained(str(tmp))
            (tmp / "phase.json").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # every rank reads the adapter once it is complete
    return done, record


def _curve(history: list[dict], keys: dict[str, str]) -> list[dict]:
    rows = []
    for h in history:
        if "step" not in h or not any(k in h for k in keys):
            continue
        if "train_runtime" in h:
            continue
        row = {"step": h["step"]}
        for src, dst in keys.items():
            if src in h:
                row[dst] = round(float(h[src]), 5)
        rows.append(row)
    return rows


# --- the command ------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """What the training, evaluation and record steps share, fixed before training starts."""

    task: Any
    base_path: Path
    base_sha: dict[str, str]
    init: dict | None  # the init adapter's record (path, sha256, method, seconds, steps)
    train_exs: list
    eval_exs: list
    max_completion_length: int
    before: dict  # greedy accuracy / reward of the base on eval_exs


def train_expert(config: ExpertTrainConfig, *, callbacks: Sequence[Any] = (), console=None) -> Path:
    """Train one LoRA expert as `config` says and return its folder (`config.out`).

    Idempotent and resumable: an existing complete output with the same config is returned untouched;
    an interrupted run resumes from `<out>.partial/` (HF Trainer checkpoints). Extra HF
    `TrainerCallback`s in `callbacks` are added to each trainer."""
    with torch_threads(config.threads):
        return _train_expert(config, callbacks=callbacks, console=console)


def _train_expert(config: ExpertTrainConfig, *, callbacks: Sequence[Any] = (), console=None) -> Path:
    cfg = replace(config, out=Path(config.out), target_modules=tuple(config.target_modules))
    cfg.validate()
    console = console or Console(stderr=True)

    def say(msg: str) -> None:
        if cfg.progress:
            console.print(msg, highlight=False, soft_wrap=True)

    task = get_task(cfg.task, **cfg.task_kwargs)  # raises LoramixError naming the valid tasks
    quiet_hf()
    base_path = Path(resolve_base(cfg.base))
    base_sha = base_fingerprint(base_path)
    init = _init_record(Path(cfg.init_adapter)) if cfg.init_adapter is not None else None
    run = run_folder(cfg, base_sha, init)
    if run.finished():
        console.print(f"already trained: {cfg.out} (nothing to do)", highlight=False, soft_wrap=True)
        return cfg.out
    prep = _prepare(cfg, task, base_path, base_sha, init, run.open(), say)
    adapter, records = _train_phases(cfg, prep, run.work, callbacks, say)
    after = _accuracy_after(cfg, prep, adapter, say)
    metrics = _metrics(cfg, prep, records, after)
    run.save(lambda folder: [shutil.copy2(adapter / f, folder / f) for f in ADAPTER_FILES], metrics)
    before = prep.before
    say(f"{prep.task.name} expert ({cfg.run_method}): accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}, "
        f"reward {before['reward']:+.3f} -> {after['reward']:+.3f}, {metrics['train_seconds']:.0f} s; saved {cfg.out}")
    return cfg.out


def _prepare(cfg: ExpertTrainConfig, task, base_path: Path, base_sha: dict, init: dict | None, work: Path,
             say: Callable[[str], None]) -> _Prepared:
    """The examples, the completion budget and the accuracy before."""
    train_exs = _examples(task, "train", cfg.n_train, cfg)
    eval_exs = _examples(task, "validation", cfg.n_eval, cfg)
    if not train_exs or not eval_exs:
        raise LoramixError(f"task {cfg.task!r}: no train or validation examples")

    base_model, tok = load_model_and_tokenizer(base_path)
    max_pos = getattr(base_model.config, "max_position_embeddings", None)
    mcl = cfg.max_completion_length or auto_completion_length(task, tok, train_exs, max_pos, cfg.chat_template)
    before = _accuracy_before(cfg, work, base_model, tok, task, eval_exs, mcl, say)
    return _Prepared(task=task, base_path=base_path, base_sha=base_sha, init=init, train_exs=train_exs,
                     eval_exs=eval_exs, max_completion_length=mcl, before=before)


def _timed_eval(model, tok, task, examples, max_new_tokens: int, batch_size: int, chat_template: bool = True) -> dict:
    """Greedy accuracy on ``examples`` with their prompts rendered as training renders them."""
    t0 = time.perf_counter()
    rendered = [replace(ex, prompt=render_prompt(tok, ex.prompt, chat_template)) for ex in examples]
    result = greedy_eval(model, tok, task, rendered, max_new_tokens, batch_size)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _accuracy_before(cfg: ExpertTrainConfig, work: Path, base_model, tok, task, eval_exs, mcl: int,
                     say: Callable[[str], None]) -> dict:
    """The base model's accuracy, cached in the partial folder so a resume does not redo it."""
    before_file = work / "before.json"
    if before_file.is_file():
        return json.loads(before_file.read_text())
    say(f"evaluating the base model on {len(eval_exs)} validation prompts of {task.name}")
    before = _timed_eval(base_model, tok, task, eval_exs, mcl, cfg.eval_batch_size, cfg.chat_template)
    if processes().is_main_process:  # every rank evaluated; the main process alone caches it
        write_json(before_file, before)
    return before


def _phases(cfg: ExpertTrainConfig) -> list[tuple[str, int]]:
    """(kind, steps) of each training phase, in order."""
    if cfg.method == "sft":
        return [("sft", cfg.steps)]
    return ([("sft", cfg.sft_warmup_steps)] if cfg.sft_warmup_steps else []) + [("grpo", cfg.steps)]


def _train_phases(cfg: ExpertTrainConfig, prep: _Prepared, work: Path, callbacks: Sequence[Any],
                  say: Callable[[str], None]) -> tuple[Path, list[dict]]:
    """Each phase starts from the previous one's adapter (the first from the init adapter, if any).
    Returns the last adapter folder and the phase records."""
    adapter: Path | None = Path(cfg.init_adapter) if cfg.init_adapter is not None else None
    records = []
    for kind, steps in _phases(cfg):
        adapter, rec = _run_phase(kind, steps, cfg, prep.base_path, work, prep.task, prep.train_exs,
                                  prep.max_completion_length, adapter, callbacks, say)
        records.append(rec)
    return adapter, records


def _accuracy_after(cfg: ExpertTrainConfig, prep: _Prepared, adapter: Path, say: Callable[[str], None]) -> dict:
    """The saved adapter's accuracy, on a fresh copy of the base."""
    model, tok = load_model_and_tokenizer(prep.base_path)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    say(f"evaluating the expert on {len(prep.eval_exs)} validation prompts")
    return _timed_eval(model, tok, prep.task, prep.eval_exs, prep.max_completion_length, cfg.eval_batch_size,
                       cfg.chat_template)


def _metrics(cfg: ExpertTrainConfig, prep: _Prepared, records: list[dict], after: dict) -> dict:
    """The expert's metrics.json."""
    import trl

    before, init, mcl, base_sha = prep.before, prep.init, prep.max_completion_length, prep.base_sha
    grpo_hist = next((r["log_history"] for r in records if r["method"] == "grpo"), [])
    sft_hist = next((r["log_history"] for r in records if r["method"] == "sft"), [])
    return {
        "task": prep.task.name,
        "method": cfg.run_method,
        "seed": cfg.seed,
        "steps": sum(r["steps"] for r in records) + (init["steps"] if init else 0),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "reward_before": before["reward"],
        "reward_after": after["reward"],
        "eval": {"split": "validation", "n": len(prep.eval_exs), "decoding": "greedy",
                 "max_new_tokens": mcl, "difficulty": cfg.difficulty, "before": before, "after": after},
        "reward_curve": _curve(grpo_hist, {"reward": "reward", "reward_std": "reward_std", "loss": "loss",
                                           "completions/mean_length": "mean_length"}),
        "loss_curve": _curve(sft_hist, {"loss": "loss", "mean_token_accuracy": "token_accuracy"}),
        # wall-clock of everything that made this adapter, an init adapter's own training included
        "train_seconds": round(sum(r["train_seconds"] for r in records) + (init["train_seconds"] if init else 0), 2),
        "phases": [{k: v for k, v in r.items() if k != "log_history"} for r in records],
        "init_adapter": init,
        "max_completion_length": mcl,
        "config": {**asdict(cfg), **cfg.identity(), "out": str(cfg.out)},
        "base": {"path": str(prep.base_path), "weights_sha256": base_sha},
        "base_sha256": next(iter(base_sha.values())) if len(base_sha) == 1 else None,
        "lora": {"r": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
                 "target_modules": list(cfg.target_modules)},
        "versions": {"loramix": loramix.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__},
        "loramix_version": loramix.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
