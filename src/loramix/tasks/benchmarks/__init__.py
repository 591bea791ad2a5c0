"""Loaders for the paper's five real benchmarks (plus `medqa5`, MedQA's 5-option file)."""

from loramix.tasks.benchmarks.arc import ARCTask
from loramix.tasks.benchmarks.base import BenchmarkTask
from loramix.tasks.benchmarks.boolq import BoolQTask
from loramix.tasks.benchmarks.cola import CoLATask
from loramix.tasks.benchmarks.gsm8k import GSM8KTask
from loramix.tasks.benchmarks.medqa import MedQA5Task, MedQATask

BENCHMARK_CLASSES = (GSM8KTask, ARCTask, MedQATask, CoLATask, BoolQTask, MedQA5Task)
BENCHMARK_TASKS: tuple[str, ...] = tuple(c.name for c in BENCHMARK_CLASSES)

__all__ = ["ARCTask", "BENCHMARK_CLASSES", "BENCHMARK_TASKS", "BenchmarkTask", "BoolQTask",
           "CoLATask", "GSM8KTask", "MedQA5Task", "MedQATask"]
