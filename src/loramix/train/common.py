"""Helpers shared by the training commands: base-model loading and fingerprinting, greedy accuracy,
a rich progress bar for HF Trainers, checkpoint discovery and per-checkpoint wall-clock bookkeeping."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import TrainerCallback

TIME_FILE = "loramix_time.json"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use `n` torch threads inside the block (unchanged if `n` is None), then restore."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- evaluation -----------------------------------------------------------------------------------


def greedy_completions(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       batch_size: int = 64) -> list[str]:
    """Greedy completion texts (see ``loramix.generation.generate``)."""
    from loramix.generation import generate

    was_training = model.training
    model.eval()
    try:
        return [c[0].text for c in generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size)]
    finally:
        model.train(was_training)


def greedy_accuracy(model, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 64) -> float:
    """Share of `examples` whose greedy completion `task.is_correct` accepts."""
    if not examples:
        return float("nan")
    outs = greedy_completions(model, tokenizer, [ex.prompt for ex in examples], max_new_tokens, batch_size)
    return sum(bool(task.is_correct(o, ex)) for o, ex in zip(outs, examples)) / len(examples)


def greedy_eval(model, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 64) -> dict[str, Any]:
    """Greedy accuracy and mean task reward, plus the first completion as a sample."""
    outs = greedy_completions(model, tokenizer, [ex.prompt for ex in examples], max_new_tokens, batch_size)
    n = max(1, len(examples))
    return {
        "accuracy": round(sum(bool(task.is_correct(o, ex)) for o, ex in zip(outs, examples)) / n, 4),
        "reward": round(sum(task.reward(o, ex) for o, ex in zip(outs, examples)) / n, 4),
        "n": len(examples),
        "sample": {"prompt": examples[0].prompt, "completion": outs[0]} if examples else None,
    }


# --- TRL reward adapter ---------------------------------------------------------------------------


def reward_fn(task):
    """The task's reward in TRL form `f(prompts, completions, answer, **kw) -> list[float]`."""
    if hasattr(task, "reward_fn"):
        return task.reward_fn()
    from loramix.tasks import make_reward_fn

    return make_reward_fn(task)


# --- checkpoints ----------------------------------------------------------------------------------

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint-N folder with the largest N that holds a trainer_state.json, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for d in folder.iterdir():
        m = _CKPT.match(d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def checkpoint_seconds(ckpt: Path | None) -> float:
    """Training wall-clock seconds spent up to a checkpoint (0 for none)."""
    if ckpt is None or not (ckpt / TIME_FILE).is_file():
        return 0.0
    return float(json.loads((ckpt / TIME_FILE).read_text()).get("train_seconds", 0.0))


class TimeLedger(TrainerCallback):
    """Stores in each checkpoint the training seconds spent so far (across resumed runs)."""

    def __init__(self, prior_seconds: float = 0.0):
        self.prior = prior_seconds
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / TIME_FILE).write_text(json.dumps({"train_seconds": round(self.seconds, 3),
                                                      "step": state.global_step}) + "\n")


class RichProgress(TrainerCallback):
    """A rich progress bar for an HF Trainer (replaces its tqdm bar): step/total, the latest
    reward (GRPO) or loss (SFT), elapsed and remaining time."""

    def __init__(self, description: str, enabled: bool = True):
        self.description, self.enabled = description, enabled
        self.bar = None
        self.task_id = None

    def on_train_begin(self, args, state, control, **kw):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{self.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stat]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            disable=not self.enabled)
        self.bar.start()
        self.task_id = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, stat="")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task_id, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is None or not logs:
            return
        if "reward" in logs:
            stat = f"reward {logs['reward']:+.3f}"
        elif "loss" in logs:
            stat = f"loss {logs['loss']:.4f}"
        else:
            return
        self.bar.update(self.task_id, stat=stat)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task_id, completed=state.global_step)
            self.bar.stop()
            self.bar = None


def quiet_hf() -> None:
    """Keep HF/TRL from printing per-step dicts and routine warnings (errors still show)."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    try:  # TRL's dataset preparation ("Tokenizing train dataset", "Building labels", ...) runs datasets.map
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets ships with TRL
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
