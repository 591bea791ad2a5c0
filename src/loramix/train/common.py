"""What every training command shares: one run folder (resume, identity check, atomic output), one
way to build ``TrainingArguments``, the progress bar and wall-clock ledger callbacks, the torch thread
count, greedy accuracy, and the TRL reward adapter."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback, TrainingArguments

from loramix.errors import LoramixError
from loramix.generation import generate
from loramix.io import atomic_path, read_json, write_json
from loramix.loading import processes
from loramix.tasks import make_reward_fn

TIME_FILE = "loramix_time.json"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.json"
RUN_FILE = "run.json"  # in the work folder: the identity of the run that started it


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


# --- the run folder ---------------------------------------------------------------------------------


def partial_dir(out: str | Path) -> Path:
    """Where an unfinished run for ``out`` works: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class RunFolder:
    """A training command's output folder ``out`` and its work folder ``<out>.partial``.

    One policy for every command: ``out`` appears only when complete (an atomic rename) and its
    ``metrics.json`` records the run's ``identity`` (the settings that determine the result). A rerun
    with the same identity finds it and does nothing; another identity is refused unless ``force``.
    Work happens in ``<out>.partial``: ``run.json`` holds the identity and the HF Trainer's
    checkpoints land there, so an interrupted run resumes from its last complete checkpoint; a work
    folder of another identity is refused unless ``force``, which starts over. Fields named in
    ``may_extend`` (a step count) may differ there: the rerun continues the interrupted run."""

    def __init__(self, out: str | Path, identity: dict, *, force: bool = False,
                 complete_files: Sequence[str] = (METRICS_FILE,), may_extend: Sequence[str] = (),
                 what: str = "finished run"):
        self.out = Path(out)
        self.work = partial_dir(self.out)
        self.identity = json.loads(json.dumps(identity, default=str))  # as it reads back from JSON
        self.force = force
        self.complete_files = tuple(complete_files)
        self.may_extend = frozenset(may_extend)
        self.what = what  # in messages: "not a <what>"

    def is_complete(self) -> bool:
        return all((self.out / f).is_file() for f in self.complete_files)

    def finished(self) -> bool:
        """True when ``out`` already holds this run. Refuses ``out`` when it holds another run, or
        is something else, unless ``force``."""
        if self.out.exists() and not self.out.is_dir():
            raise LoramixError(f"{self.out}: --out exists and is not a folder")
        if self.is_complete() and not self.force:
            recorded = read_json(self.out / METRICS_FILE)
            if not isinstance(recorded, dict):
                raise LoramixError(f"{self.out / METRICS_FILE}: not a JSON object; use --force to retrain")
            if "identity" in recorded:
                diff = _diff(recorded["identity"], self.identity)
            else:  # written before run identities: compare the config keys both have
                old = recorded.get("config", {})
                diff = sorted(k for k in old if k in self.identity and old[k] != self.identity[k])
            if diff:
                raise LoramixError(f"{self.out}: already holds a {self.what} with another config (differs in: "
                                   f"{', '.join(diff)}); use --force or another --out")
            return True
        if self.out.is_dir() and any(self.out.iterdir()) and not self.is_complete() and not self.force:
            raise LoramixError(f"{self.out}: --out is a non-empty folder that is not a {self.what}; "
                               "use another --out or --force to replace it")
        return False

    def open(self) -> Path:
        """Create or reuse the work folder for this identity and return it. Under ``accelerate
        launch`` every rank checks (and refuses alike), then only the main process changes the folder,
        and every rank returns once it is ready."""
        state = processes()
        saved = self.work / RUN_FILE
        diff = None
        if saved.is_file():
            diff = [k for k in _diff(read_json(saved), self.identity) if k not in self.may_extend]
            if diff and not self.force:
                raise LoramixError(f"{self.work}: an interrupted run with another config is there (differs in: "
                                   f"{', '.join(diff)}); use --force to discard it")
        state.wait_for_everyone()  # every rank has read run.json before the main process replaces it
        if state.is_main_process:
            if diff or (diff is None and self.force and self.work.exists()):
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True, exist_ok=True)
            write_json(saved, self.identity)
        state.wait_for_everyone()
        return self.work

    def last_checkpoint(self, sub: str = "") -> Path | None:
        return last_checkpoint(self.work / sub if sub else self.work)

    def save(self, write: Callable[[Path], None], metrics: dict, *, log_history: list | None = None,
             should_save: bool | None = None, keep_work: bool = False) -> Path:
        """``out`` at once: ``write(folder)`` fills it, then ``metrics.json`` (with the identity) and
        ``train_log.json``; the work folder goes unless ``keep_work``. Only the main process writes
        (``should_save``: the trainer's ``args.should_save``; by default accelerate's main process);
        every rank returns once ``out`` is complete."""
        state = processes()
        if should_save is None:
            should_save = state.is_main_process
        if should_save:
            with atomic_path(self.out) as tmp:
                tmp.mkdir(exist_ok=True)
                write(tmp)
                if log_history is not None:
                    write_json(tmp / TRAIN_LOG_FILE, log_history)
                write_json(tmp / METRICS_FILE, {**metrics, "identity": self.identity})
            if not keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        state.wait_for_everyone()
        return self.out


def training_arguments(output_dir: str | Path, *, args_class: type = TrainingArguments, **settings: Any):
    """The one place a loramix trainer's ``TrainingArguments`` (or TRL's ``GRPOConfig``/``SFTConfig``,
    as ``args_class``) are built: checkpoints for resume (the last two kept), the device, no reporting
    and no tqdm (loramix shows its own bar), plus the run's own ``settings``. In transformers 5 a
    ``warmup_steps`` below 1 is a ratio of the total steps."""
    common = dict(output_dir=str(output_dir), save_strategy="steps", save_total_limit=2, report_to=[],
                  use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, dataloader_num_workers=0,
                  disable_tqdm=True)
    return args_class(**{**common, **settings})


def run_trainer(trainer, description: str, *, resume: Path | None, progress: bool = True,
                callbacks: Sequence[TrainerCallback] = ()) -> "TimeLedger":
    """Train with loramix's progress bar and wall-clock ledger (counting time before a resume);
    returns the ledger, whose ``seconds`` is the training time. The Trainer's own per-step log
    dicts go to ``<output_dir>/trainer_log.jsonl`` (``TrainerLogFile``), not the terminal."""
    ledger = TimeLedger(checkpoint_seconds(resume))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm, HF prints every log dict
    trainer.add_callback(TrainerLogFile())
    trainer.add_callback(RichProgress(description, enabled=progress))
    trainer.add_callback(ledger)
    for cb in callbacks:
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return ledger


def count_trainable(model) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def loss_curve(history: list[dict]) -> list[dict]:
    """``[{step, loss}]`` from a Trainer's log history (the final summary row left out)."""
    return [{"step": h["step"], "loss": round(float(h["loss"]), 6)} for h in history
            if "loss" in h and "step" in h and "train_runtime" not in h]


# --- evaluation -----------------------------------------------------------------------------------


def greedy_completions(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       batch_size: int = 64) -> list[str]:
    """Greedy completion texts (see ``loramix.generation.generate``)."""
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


TRAINER_LOG_FILE = "trainer_log.jsonl"  # in the work folder: the Trainer's log dicts, live


class TrainerLogFile(TrainerCallback):
    """Appends each of the Trainer's log dicts (loss, grad norm, reward, ...) as one JSON line to
    ``<output_dir>/trainer_log.jsonl``, where HF's ``PrinterCallback`` would print it. For watching
    a run; the finished output's ``train_log.json`` holds the whole log history."""

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if k != "total_flos"}}
        path = Path(args.output_dir) / TRAINER_LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row, default=_json_value) + "\n")


def _json_value(v):
    """A log value JSON does not know (a tensor, a numpy number): its float, else its text."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


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
