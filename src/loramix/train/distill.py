"""Stage 2a of MoR-LoRA: each frozen expert answers its own task's training prompts (greedy and
sampled); only finished, verified-correct generations with non-empty reasoning are kept as traces.

Prompts are generated from as the model sees them (``loramix.chat.render_prompt``: the chat template
when the base's tokenizer has one and ``chat_template`` is on) but stored raw: every trainer renders a
traces prompt at train time, and evaluation renders task prompts the same way.

The output is JSONL, appended batch by batch (each line complete and fsynced). A rerun skips the
prompts already done, and drops a torn last line, so an interrupted run resumes without duplicates.
Each row records its provenance: expert, task, sampling mode, reward.

Under ``accelerate launch`` the ranks share the prompts: each round gives one batch to each rank, the
main process gathers the generations and alone writes them, in batch order, so the file is the one a
single process writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loramix import __version__
from loramix.chat import render_prompts
from loramix.errors import LoramixError
from loramix.experts import adapter_folders, load_experts
from loramix.generation import generate
from loramix.io import atomic_path, write_json
from loramix.loading import base_fingerprint, load_base_model, resolve_base
from loramix.tasks import Task
from loramix.tasks.splits import build_task
from loramix.tasks.format import extract_answer, has_think
from loramix.train.common import processes

DONE_SUFFIX = ".done.json"
META_SUFFIX = ".meta.json"


@dataclass
class DistillConfig:
    base: str
    experts: list[str]  # PEFT adapter folders, one per task
    tasks: list[str]
    out: str  # traces JSONL
    n_prompts: int = 200  # training prompts per task
    samples: int = 4  # sampled generations per prompt (plus one greedy)
    temperature: float = 1.0
    max_per_prompt: int = 2
    max_per_task: int = 1000
    max_new_tokens: int = 256
    batch_size: int = 32
    difficulty: str = "medium"
    seed: int = 0
    chat_template: bool = True  # generate from the chat-rendered prompt, when the tokenizer has a template
    task_kwargs: dict = field(default_factory=dict)  # per task name: its data, e.g. {train: FILE, test: FILE}


def _reasoning(completion: str) -> str:
    start, end = completion.find("<think>"), completion.find("</think>")
    return completion[start + len("<think>"):end].strip() if 0 <= start < end else ""


def _read_existing(path: Path) -> list[dict]:
    """Rows already written; a torn last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return []
    rows, good = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


@dataclass
class _Resume:
    """What earlier, interrupted runs left: the prompts they finished and the rows they wrote."""
    done_path: Path
    done: set[str]  # "task:index" of every prompt already handled
    seen: set[str]  # ids of the rows already written
    per_task: dict[str, int]  # rows already written, per task

    @classmethod
    def load(cls, out: Path) -> _Resume:
        done_path = out.with_name(out.name + DONE_SUFFIX)
        rows = _read_existing(out)
        done = set(json.loads(done_path.read_text())) if done_path.is_file() else set()
        seen = {r["id"] for r in rows}
        per_task: dict[str, int] = {}
        for r in rows:
            per_task[r["task"]] = per_task.get(r["task"], 0) + 1
        return cls(done_path, done, seen, per_task)

    def count(self, task_name: str) -> int:
        return self.per_task.get(task_name, 0)

    def mark_done(self, task_name: str, chunk) -> None:
        self.done.update(f"{task_name}:{i}" for i, _ in chunk)
        _write_done(self.done_path, self.done)


@dataclass
class _Job:
    """One expert answering its own task's prompts."""
    index: int
    adapter: str  # the expert's adapter name inside the PeftModel
    folder: str
    task_name: str
    task: Task


def distill(cfg: DistillConfig, progress: bool = True) -> Path:
    """Write verified traces of each expert on its task to ``cfg.out``; returns the path."""
    if len(cfg.experts) != len(cfg.tasks):
        raise LoramixError(f"distill needs one task per expert: got {len(cfg.experts)} experts and {len(cfg.tasks)} tasks")
    from rich.progress import Progress

    procs = processes()  # accelerate's PartialState: one main process unless launched on several
    tasks = _check_inputs(cfg)  # unknown names, bad difficulty, missing folders: before any write or load
    out = _prepare_out(cfg.out)
    with procs.main_process_first():  # the main process cuts a torn last line before the others read
        state = _Resume.load(out)
    model, tok, experts = _load_models(cfg)
    jobs = [_Job(e, _adapter_name(e), folder, task_name, task)
            for e, (folder, task_name, task) in enumerate(zip(cfg.experts, cfg.tasks, tasks))]
    main = procs.is_main_process
    with Progress(disable=not progress or not main) as bar, \
            (open(out, "a") if main else contextlib.nullcontext()) as sink:
        for job in jobs:
            _distill_job(job, cfg, model, tok, state, bar, sink, procs)
    if main:
        _write_meta(out, cfg, experts)
    procs.wait_for_everyone()  # every rank returns once the file is complete
    return out


def _check_inputs(cfg: DistillConfig) -> list[Task]:
    """The tasks (each draws one train example, so a bad difficulty or a benchmark's unreadable data
    file is refused here) and the expert folders, checked before anything is written or loaded."""
    tasks = [build_task(t, cfg.task_kwargs) for t in cfg.tasks]
    for task in tasks:
        task.examples("train", 1, seed=cfg.seed, difficulty=cfg.difficulty)
    adapter_folders(cfg.experts)
    return tasks


def _prepare_out(path: str) -> Path:
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoramixError(f"{out}: cannot write there ({err.strerror or err})") from None
    return out


def _adapter_name(index: int) -> str:
    return f"expert{index}"


def _load_models(cfg: DistillConfig):
    """The base, the experts (for their digests), and a PeftModel holding every expert as an adapter."""
    from peft import PeftModel

    model, tok = load_base_model(cfg.base)
    experts = load_experts(cfg.experts, model, names=[f"{i}:{Path(f).name}" for i, f in enumerate(cfg.experts)])
    peft_model = None
    for i, folder in enumerate(cfg.experts):
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, folder, adapter_name=_adapter_name(i))
        else:
            peft_model.load_adapter(folder, adapter_name=_adapter_name(i))
    peft_model.eval()
    return peft_model, tok, experts


def _distill_job(job: _Job, cfg: DistillConfig, model, tok, state: _Resume, bar, sink, procs) -> None:
    """The expert's prompts not done yet, batch by batch: generate, verify, append, mark done. Each
    round, every rank generates one batch; all ranks verify the gathered batches in order (so they
    agree on the caps), and the main process (``sink`` not None) appends and marks them done."""
    from accelerate.utils import gather_object

    model.set_adapter(job.adapter)
    examples = job.task.examples("train", cfg.n_prompts, seed=cfg.seed, difficulty=cfg.difficulty)
    todo = [(i, ex) for i, ex in enumerate(examples) if f"{job.task_name}:{i}" not in state.done]
    bar_task = bar.add_task(f"distill {job.task_name}", total=len(examples), completed=len(examples) - len(todo))
    chunks = [todo[start:start + cfg.batch_size] for start in range(0, len(todo), cfg.batch_size)]
    for first in range(0, len(chunks), procs.num_processes):
        if state.count(job.task_name) >= cfg.max_per_task:
            break
        batches = chunks[first:first + procs.num_processes]
        with procs.split_between_processes(batches) as mine:  # one batch per rank (none for some at the end)
            generated = [_generate_batch(model, tok, cfg, job.index, chunk) for chunk in mine]
        for chunk, (greedy, sampled) in zip(batches, gather_object(generated)):  # in batch order
            if state.count(job.task_name) >= cfg.max_per_task:
                break
            rows = []
            for (i, ex), g, s in zip(chunk, greedy, sampled):
                candidates = [("greedy", 0, g[0])] + [("sample", j, c) for j, c in enumerate(s)]
                rows += _prompt_rows(job, cfg, state, i, ex, candidates)
            if sink is not None:
                _append_rows(sink, rows)
                state.mark_done(job.task_name, chunk)
            bar.advance(bar_task, len(chunk))
    bar.update(bar_task, completed=len(examples))  # done, also when max_per_task stopped it early


def _generate_batch(model, tok, cfg: DistillConfig, expert_index: int, chunk):
    """One greedy and ``cfg.samples`` sampled completions of each prompt in the chunk."""
    prompts = render_prompts(tok, [ex.prompt for _, ex in chunk], cfg.chat_template)
    greedy = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    if not cfg.samples:
        return greedy, [[] for _ in chunk]
    sampled = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                       do_sample=True, temperature=cfg.temperature, num_return_sequences=cfg.samples,
                       seed=cfg.seed * 1_000_003 + expert_index * 10_007 + chunk[0][0])
    return greedy, sampled


def _verified(task, completion, ex) -> bool:
    """Finished, with non-empty reasoning in a think block, an answer, and that answer correct."""
    text = completion.text
    return bool(completion.finished and _reasoning(text) and has_think(text)
                and extract_answer(text) is not None and task.is_correct(text, ex))


def _prompt_rows(job: _Job, cfg: DistillConfig, state: _Resume, i: int, ex, candidates) -> list[dict]:
    """New rows for one prompt: up to ``max_per_prompt`` distinct verified completions, in candidate
    order, within the task's ``max_per_task``; each is recorded in ``state``."""
    kept: set[str] = set()
    rows = []
    for mode, j, c in candidates:
        if len(kept) >= cfg.max_per_prompt or state.count(job.task_name) >= cfg.max_per_task:
            break
        row_id = f"{job.task_name}:{i}:{mode}:{j}"
        if not _verified(job.task, c, ex) or c.text in kept or row_id in state.seen:
            continue
        kept.add(c.text)
        state.seen.add(row_id)
        state.per_task[job.task_name] = state.count(job.task_name) + 1
        rows.append({"id": row_id, "prompt": ex.prompt, "completion": c.text, "task": job.task_name,
                     "expert": str(job.folder), "expert_index": job.index, "mode": mode,
                     "reward": job.task.reward(c.text, ex), "answer": ex.answer})
    return rows


def _append_rows(sink, rows: list[dict]) -> None:
    """Each row a complete JSON line, flushed and fsynced before the prompts are marked done."""
    sink.write("".join(json.dumps(r) + "\n" for r in rows))
    sink.flush()
    os.fsync(sink.fileno())


def _write_meta(out: Path, cfg: DistillConfig, experts) -> None:
    """``<out>.meta.json``: loramix version, config, seed and the sha256 of every input file."""
    meta = {"loramix_version": __version__, "config": asdict(cfg), "seed": cfg.seed,
            "inputs_sha256": {str(Path(e.path) / f): d for e in experts for f, d in e.sha256.items()},
            "base_weights_sha256": base_fingerprint(resolve_base(cfg.base)),
            "rows": sum(1 for _ in open(out))}
    write_json(out.with_name(out.name + META_SUFFIX), meta)


def _write_done(path: Path, done: set[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sorted(done)))
