"""The five built-in synthetic domains, each needing a distinct skill."""

from loramix.tasks.synthetic.add import AddTask
from loramix.tasks.synthetic.base import LEVELS, SyntheticTask, parse_difficulty, split_of
from loramix.tasks.synthetic.boolean import BoolTask
from loramix.tasks.synthetic.mod import ModTask
from loramix.tasks.synthetic.sort import SortTask
from loramix.tasks.synthetic.strings import StringsTask

SYNTHETIC_CLASSES = (AddTask, SortTask, BoolTask, ModTask, StringsTask)
SYNTHETIC_TASKS: tuple[str, ...] = tuple(c.name for c in SYNTHETIC_CLASSES)

__all__ = ["AddTask", "BoolTask", "LEVELS", "ModTask", "SYNTHETIC_CLASSES", "SYNTHETIC_TASKS",
           "SortTask", "StringsTask", "SyntheticTask", "parse_difficulty", "split_of"]
