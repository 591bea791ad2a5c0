"""The task registry: names -> factories, with what `loramix tasks list` shows about each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from loramix.errors import LoramixError, unknown_name
from loramix.tasks.base import Task, trl_reward_fn
from loramix.tasks.jsonl import JsonlTask
from loramix.tasks.rewards import RewardFn
from loramix.tasks.verifiers import get_verifier

Factory = Callable[..., Task]


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # synthetic | benchmark | user
    answer_type: str
    verifier: str
    description: str
    factory: Factory


_REGISTRY: dict[str, TaskInfo] = {}


def register_task(name: str, factory: Factory | None = None, *, kind: str | None = None,
                  answer_type: str | None = None, verifier: str | None = None,
                  description: str | None = None):
    """Register `factory` (a Task subclass or a function returning a Task) under `name`.
    Works as a decorator: `@register_task("mytask") class MyTask(Task): ...`. Details not given
    are read from the factory's class attributes when it is a class."""

    def add(f: Factory) -> Factory:
        def attr(key: str, given: str | None, default: str) -> str:
            if given is not None:
                return given
            return getattr(f, key, default) if isinstance(f, type) else default

        info = TaskInfo(name, attr("kind", kind, "user"), attr("answer_type", answer_type, "text"),
                        attr("verifier", verifier, "exact"), attr("description", description, ""), f)
        get_verifier(info.verifier)  # fail at registration on an unknown verifier name
        _REGISTRY[name] = info
        return f

    return add(factory) if factory is not None else add


def register_jsonl_task(name: str, path: str | Path, verifier: str = "exact", **kwargs: Any) -> None:
    """Register a user task read from a data file; `kwargs` go to `JsonlTask` (field names,
    template, answer_type)."""
    get_verifier(verifier)
    register_task(name, lambda **kw: JsonlTask(name, path, verifier, **{**kwargs, **kw}), kind="user",
                  answer_type=kwargs.get("answer_type", "text"), verifier=verifier,
                  description=f"user task from {path}")


def get_task(name: str, **kwargs: Any) -> Task:
    """A new instance of the task `name` (kwargs go to its factory, e.g. `path=` for benchmarks)."""
    if name not in _REGISTRY:
        raise unknown_name("task", name, _REGISTRY)
    task = _REGISTRY[name].factory(**kwargs)
    task.name = name  # the registered name wins (prompts, the dataset's task column)
    return task


def make_reward_fn(task: Task | None = None) -> RewardFn:
    """A reward function in TRL's `GRPOTrainer` form: `f(prompts, completions, answer, **kw)`.
    `answer` is the dataset's gold column. With `task=None` each row's task is looked up from
    the `task` column (for mixed-task datasets)."""
    if task is not None:
        return trl_reward_fn(lambda _column, _i: task, f"{task.name}_reward")
    cache: dict[str, Task] = {}

    def task_for(column: Sequence[str] | None, i: int) -> Task:
        name = _row_task(column, i)
        if name not in cache:
            cache[name] = get_task(name)
        return cache[name]

    return trl_reward_fn(task_for, "task_reward")


def _row_task(task: Sequence[str] | None, i: int) -> str:
    if task is None:
        raise LoramixError("reward function: no task given and the dataset has no 'task' column")
    return task[i]


def list_tasks() -> list[str]:
    """Registered task names, in registration order (synthetic, then benchmarks, then user)."""
    return list(_REGISTRY)


def task_info(name: str) -> TaskInfo:
    if name not in _REGISTRY:
        raise unknown_name("task", name, _REGISTRY)
    return _REGISTRY[name]


def unregister_task(name: str) -> None:
    _REGISTRY.pop(name, None)
