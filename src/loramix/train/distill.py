"""Stage 2a of MoR-LoRA: each frozen expert answers its own task's training prompts (greedy and
sampled); only finished, verified-correct generations with non-empty reasoning are kept as traces.

The output is JSONL, appended batch by batch (each line complete and fsynced). A rerun skips the
prompts already done, and drops a torn last line, so an interrupted run resumes without duplicates.
Each row records its provenance: expert, task, sampling mode, reward.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from loramix.errors import LoramixError
from loramix.generation import generate
from loramix.tasks import get_task
from loramix.tasks.format import extract_answer, has_think

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
    task_kwargs: dict = field(default_factory=dict)  # per task name: kwargs for get_task (e.g. path=)


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


def distill(cfg: DistillConfig, progress: bool = True) -> Path:
    """Write verified traces of each expert on its task to ``cfg.out``; returns the path."""
    if len(cfg.experts) != len(cfg.tasks):
        raise LoramixError(f"distill needs one task per expert: got {len(cfg.experts)} experts and {len(cfg.tasks)} tasks")
    from peft import PeftModel
    from rich.progress import Progress

    from loramix.loading import load_base_model

    out = Path(cfg.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoramixError(f"{out}: cannot write there ({err.strerror or err})") from None
    done_path = out.with_name(out.name + DONE_SUFFIX)
    rows = _read_existing(out)
    done = set(json.loads(done_path.read_text())) if done_path.is_file() else set()
    seen = {r["id"] for r in rows}
    per_task: dict[str, int] = {}
    for r in rows:
        per_task[r["task"]] = per_task.get(r["task"], 0) + 1

    tasks = [get_task(t, **cfg.task_kwargs.get(t, {})) for t in cfg.tasks]  # unknown names fail before any write
    model, tok = load_base_model(cfg.base)
    from loramix.experts import load_experts

    experts = load_experts(cfg.experts, model, names=[f"{i}:{Path(f).name}" for i, f in enumerate(cfg.experts)])
    peft_model = None
    names = [f"expert{i}" for i in range(len(cfg.experts))]
    for name, folder in zip(names, cfg.experts):
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, folder, adapter_name=name)
        else:
            peft_model.load_adapter(folder, adapter_name=name)
    peft_model.eval()

    with Progress(disable=not progress) as bar, open(out, "a") as sink:
        for e, (name, folder, task_name, task) in enumerate(zip(names, cfg.experts, cfg.tasks, tasks)):
            peft_model.set_adapter(name)
            examples = task.examples("train", cfg.n_prompts, seed=cfg.seed, difficulty=cfg.difficulty)
            todo = [(i, ex) for i, ex in enumerate(examples) if f"{task_name}:{i}" not in done]
            job = bar.add_task(f"distill {task_name}", total=len(examples), completed=len(examples) - len(todo))
            for start in range(0, len(todo), cfg.batch_size):
                if per_task.get(task_name, 0) >= cfg.max_per_task:
                    break
                chunk = todo[start:start + cfg.batch_size]
                prompts = [ex.prompt for _, ex in chunk]
                greedy = generate(peft_model, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.batch_size)
                sampled = generate(peft_model, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                   batch_size=cfg.batch_size, do_sample=True, temperature=cfg.temperature,
                                   num_return_sequences=cfg.samples, seed=cfg.seed * 1_000_003 + e * 10_007 + chunk[0][0]
                                   ) if cfg.samples else [[] for _ in chunk]
                lines = []
                for (i, ex), g, s in zip(chunk, greedy, sampled):
                    kept: set[str] = set()
                    for mode, j, c in [("greedy", 0, g[0])] + [("sample", j, c) for j, c in enumerate(s)]:
                        if len(kept) >= cfg.max_per_prompt or per_task.get(task_name, 0) >= cfg.max_per_task:
                            break
                        if not (c.finished and _reasoning(c.text) and has_think(c.text)
                                and extract_answer(c.text) is not None and task.is_correct(c.text, ex)):
                            continue
                        if c.text in kept:
                            continue
                        row_id = f"{task_name}:{i}:{mode}:{j}"
                        if row_id in seen:
                            continue
                        kept.add(c.text)
                        seen.add(row_id)
                        per_task[task_name] = per_task.get(task_name, 0) + 1
                        lines.append({"id": row_id, "prompt": ex.prompt, "completion": c.text, "task": task_name,
                                      "expert": str(folder), "expert_index": e, "mode": mode,
                                      "reward": task.reward(c.text, ex), "answer": ex.answer})
                sink.write("".join(json.dumps(r) + "\n" for r in lines))
                sink.flush()
                os.fsync(sink.fileno())
                done.update(f"{task_name}:{i}" for i, _ in chunk)
                _write_done(done_path, done)
                bar.advance(job, len(chunk))
    _write_meta(out, cfg, experts)
    return out


def _write_meta(out: Path, cfg: DistillConfig, experts) -> None:
    """``<out>.meta.json``: loramix version, config, seed and the sha256 of every input file."""
    from dataclasses import asdict

    from loramix import __version__
    from loramix.io import write_json
    from loramix.loading import base_fingerprint, resolve_base

    meta = {"loramix_version": __version__, "config": asdict(cfg), "seed": cfg.seed,
            "inputs_sha256": {str(Path(e.path) / f): d for e in experts for f, d in e.sha256.items()},
            "base_weights_sha256": base_fingerprint(resolve_base(cfg.base)),
            "rows": sum(1 for _ in open(out))}
    write_json(out.with_name(out.name + META_SUFFIX), meta)


def _write_done(path: Path, done: set[str]) -> None:
    from loramix.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sorted(done)))
