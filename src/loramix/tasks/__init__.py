"""Verifiable tasks: the five synthetic domains, the paper's five benchmarks and user tasks, all
sharing one completion format (`<think>...</think>` then `{"answer": "..."}`) and the paper's
configurable reward."""

from loramix.tasks.base import SPLITS, Example, Task, examples_to_dataset
from loramix.tasks.benchmarks import BENCHMARK_CLASSES, BENCHMARK_TASKS, BenchmarkTask
from loramix.tasks.format import extract_answer, format_completion, has_json_answer, has_think
from loramix.tasks.jsonl import JsonlTask
from loramix.tasks.registry import (TaskInfo, get_task, list_tasks, make_reward_fn, register_jsonl_task,
                                    register_task, task_info, unregister_task)
from loramix.tasks.rewards import RewardConfig, score
from loramix.tasks.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_TASKS, SyntheticTask, split_of
from loramix.tasks.verifiers import get_verifier, list_verifiers, register_verifier
from loramix.tasks.verify import VerifyReport, verify_file

for _cls in SYNTHETIC_CLASSES + BENCHMARK_CLASSES:
    register_task(_cls.name, _cls)

__all__ = [
    "BENCHMARK_TASKS", "BenchmarkTask", "Example", "JsonlTask", "RewardConfig", "SPLITS", "SYNTHETIC_TASKS",
    "SyntheticTask", "Task", "TaskInfo", "VerifyReport", "examples_to_dataset", "extract_answer",
    "format_completion", "get_task", "get_verifier", "has_json_answer", "has_think", "list_tasks",
    "list_verifiers", "make_reward_fn", "register_jsonl_task", "register_task", "register_verifier",
    "score", "split_of", "task_info", "unregister_task", "verify_file",
]
