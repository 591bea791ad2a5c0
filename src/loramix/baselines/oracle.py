"""Oracle routing: a mixture folder (``fixed`` router) whose experts are named after their tasks and
whose ``mixture_config.json`` records ``expert_for_task``, for ``evaluate --routing oracle``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from loramix.experts import adapter_folders
from loramix.loading import load_base
from loramix.errors import LoramixError
from loramix.mixture import MIXTURE_CONFIG, compose


def make_oracle_mixture(base: str | Path, experts: Sequence[str | Path], tasks, out: str | Path) -> Path:
    """A mixture folder (``fixed`` router) for oracle routing. ``tasks``: one task name per expert
    (the experts are then *named* after their tasks, so ``evaluate --routing oracle`` maps tasks to
    experts with no flags), or a dict ``task -> expert index``. ``mixture_config.json`` also records
    ``expert_for_task``."""
    paths = adapter_folders(experts)
    if isinstance(tasks, dict):
        emap = {str(t): int(i) for t, i in tasks.items()}
        names = None
    else:
        tasks = [str(t) for t in tasks]
        if len(tasks) != len(paths):
            raise LoramixError(f"{len(tasks)} tasks for {len(paths)} experts (one task per expert)")
        if len(set(tasks)) != len(tasks):
            raise LoramixError(f"tasks must be distinct, got {tasks}; pass a task -> expert mapping instead")
        emap, names = {t: i for i, t in enumerate(tasks)}, tasks
    bad = {t: i for t, i in emap.items() if not 0 <= i < len(paths)}
    if bad:
        raise LoramixError(f"expert indices outside 0..{len(paths) - 1}: {bad}")
    model, _tok, _path = load_base(base)
    mixture = compose(model, paths, router="fixed", expert_names=names)
    mixture.metadata["expert_for_task"] = emap
    return mixture.save_pretrained(out)


def recorded_expert_for_task(mixture_dir: str | Path) -> dict[str, int] | None:
    """The ``expert_for_task`` a mixture folder recorded (``make_oracle_mixture``), or None."""
    path = Path(mixture_dir) / MIXTURE_CONFIG
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("expert_for_task")
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None


__all__ = ["make_oracle_mixture", "recorded_expert_for_task"]
