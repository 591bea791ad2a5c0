"""Which file each split of a task reads, given in one form everywhere: a recipe's
``task_kwargs: {gsm8k: {train: FILE, test: FILE}}`` and the commands' repeatable
``--data gsm8k:train=FILE --data gsm8k:test=FILE`` (``--data gsm8k=FILE``: one file, or
``save_to_disk`` folder, for every split). Stages 1-3 read ``train``, evaluation reads ``test``
(for CoLA and BoolQ, the dev file). ``check_disjoint`` refuses a train and test that share rows,
by the sha256 of each example's prompt."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from loramix.errors import LoramixError
from loramix.tasks.registry import get_task

DATA_SPLITS = ("train", "validation", "test")


def parse_data(values: Sequence[str] | None, tasks: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """``["gsm8k:train=a.jsonl", "gsm8k:test=b.jsonl", "arc=c.jsonl"]`` ->
    ``{"gsm8k": {"train": "a.jsonl", "test": "b.jsonl"}, "arc": {"path": "c.jsonl"}}``, the
    ``task_kwargs`` form. With ``tasks``, a task not among them is refused (a typo would be ignored)."""
    out: dict[str, dict[str, str]] = {}
    for value in values or ():
        target, sep, file = value.partition("=")
        name, colon, split = (t.strip() for t in target.partition(":"))
        file = file.strip()
        if not sep or not name or not file or (colon and not split):
            raise LoramixError(f"--data {value!r}: expected TASK:SPLIT=FILE (SPLIT: {', '.join(DATA_SPLITS)}) "
                               "or TASK=FILE")
        if colon and split not in DATA_SPLITS:
            raise LoramixError(f"--data {value!r}: unknown split {split!r}; valid: {', '.join(DATA_SPLITS)}")
        if tasks is not None and name not in tasks:
            raise LoramixError(f"--data {value!r}: task {name!r} is not among the tasks ({', '.join(tasks)})")
        key = split if colon else "path"
        if key in out.get(name, {}):
            raise LoramixError(f"--data {value!r}: {name}:{key} given twice")
        out.setdefault(name, {})[key] = file
    return out


def build_task(name: str, task_kwargs: Mapping[str, Mapping[str, Any]] | None = None):
    """The task ``name`` with its data (``task_kwargs[name]``, e.g. ``{train: FILE, test: FILE}``);
    ``"a+b"`` is the mixed task of a and b, each with its own data. Every stage builds tasks here."""
    from loramix.tasks.mixed import MIXED_SEP, MixedTask, resolve_task

    kw = task_kwargs or {}
    if MIXED_SEP in name:
        resolve_task(name)  # a malformed pair is refused with its own message
        a, b = name.split(MIXED_SEP)
        return MixedTask(build_task(a, kw), build_task(b, kw))
    return get_task(name, **dict(kw.get(name, {})))


def prompt_hashes(examples: Sequence) -> list[str]:
    """sha256 of each example's prompt (the question as the model reads it)."""
    return [hashlib.sha256(ex.prompt.encode("utf-8")).hexdigest() for ex in examples]


def check_disjoint(task_kwargs: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
    """Refuse a benchmark task whose train and test splits are one file or share rows (the same
    prompt, by sha256), naming the task, both files and the overlap. Reads both files, so a missing
    or unreadable one is refused here too, before anything runs."""
    from loramix.tasks.benchmarks import BenchmarkTask

    for name in names:
        task = build_task(name, task_kwargs)
        if not isinstance(task, BenchmarkTask):
            continue
        (train_file, train_part), (test_file, test_part) = task.source("train"), task.source("test")
        train, test = prompt_hashes(task.examples("train")), set(prompt_hashes(task.examples("test")))
        shared = sum(h in test for h in set(train))
        same = Path(train_file).resolve() == Path(test_file).resolve() and (
            not Path(train_file).is_dir() or train_part == test_part)
        if same or shared:
            what = "are the same file" if same else f"share {shared} rows (the same prompt)"
            raise LoramixError(f"task {name!r}: train ({train_file}) and test ({test_file}) {what}; {shared} of "
                               f"{len(set(train))} train rows are test rows. Give each split its own file, e.g. "
                               f"task_kwargs: {{{name}: {{train: FILE, test: FILE}}}}")


__all__ = ["DATA_SPLITS", "build_task", "check_disjoint", "parse_data", "prompt_hashes"]
