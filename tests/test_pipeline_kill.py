"""Issue 15: `loramix pipeline` survives ``kill -9``. The command runs as a real process
(``python -m loramix.cli pipeline``) on a miniature recipe over a tiny memorised base; it is killed with
SIGKILL at a seeded random point (a delay after a seeded stage's heading appears in its output), rerun
to completion, and its report must equal the report of an uninterrupted run apart from timing fields.
The uninterrupted run and the run that gets killed go side by side (two processes) to keep it fast.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import memorised_base

SEED = int(os.environ.get("LORAMIX_KILL_SEED", "0"))  # another seed, another kill point
KILL_STAGES = ("2. experts", "3. distill", "4. MoR-LoRA", "5. merges", "6. evaluate", "7. analyze")
COMPARED = ("methods", "routing", "mixed", "targets")
TIMING = ("train_seconds",)  # inside each method


def recipe_yaml(base: Path) -> dict:
    """A miniature recipe: two domains, every stage, one method of each kind, a few steps each;
    evaluated on the train prompts the base memorised, so generations end early."""
    return {
        "name": "kill", "base": str(base), "tasks": ["add", "strings"], "difficulty": "easy",
        "eval_difficulty": "easy", "max_length": 256,
        "methods": ["base", "expert_rl", "oracle", "mor_lora_hard", "prompt_router", "merge_linear",
                    "multitask_lora", "remix"],
        "expert": {"steps": 2, "batch_size": 4, "num_generations": 2, "n_train": 4, "n_eval": 2},
        "distill": {"n_prompts": 4, "samples": 1},
        "router": {"max_steps": 3, "batch_size": 4, "attention_lora_rank": 2},
        "remix": {"n_experts": 3, "top_k": 2, "rank": 2, "samples": 2, "steps": 3, "batch_size": 4},
        "multitask": {"steps": 3, "batch_size": 4},
        "evaluate": {"n": 2, "batch_size": 8, "split": "train", "mixed_pairs": [["add", "strings"]], "mixed_n": 1},
    }


def pipeline_process(config: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    return subprocess.Popen([sys.executable, "-m", "loramix.cli", "pipeline", "--config", str(config),
                             "--root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=config.parent)


def comparable(report: dict) -> dict:
    out = {k: report[k] for k in COMPARED}
    out["methods"] = {name: {k: v for k, v in m.items() if k not in TIMING} for name, m in out["methods"].items()}
    return out


def kill_at(proc: subprocess.Popen, heading: str, delay: float) -> list[str]:
    """Read ``proc``'s output; ``delay`` seconds after a line holding ``heading`` appears, SIGKILL it.
    Returns the lines read."""
    lines: list[str] = []
    timer = None
    for line in proc.stdout:
        lines.append(line)
        if timer is None and heading in line:
            timer = threading.Timer(delay, lambda: proc.poll() is None and os.kill(proc.pid, signal.SIGKILL))
            timer.start()
    proc.wait()
    if timer is not None:
        timer.cancel()
    return lines


def test_pipeline_killed_with_sigkill_reruns_to_the_same_report(tmp_path):
    base = memorised_base(tmp_path / "base", ("add", "strings"), n=4)
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(recipe_yaml(base)))
    rng = random.Random(SEED)
    heading, delay = rng.choice(KILL_STAGES), round(rng.uniform(0.0, 1.5), 2)

    reference = pipeline_process(config, tmp_path / "reference")
    killed = pipeline_process(config, tmp_path / "killed")
    lines = kill_at(killed, heading, delay)
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out[-3000:]
    where = f"killed {delay} s after {heading!r}"
    assert killed.returncode == -signal.SIGKILL, f"not {where}: exit {killed.returncode}\n{''.join(lines)[-3000:]}"
    assert not (tmp_path / "killed" / "kill" / "report.json").is_file()

    rerun = pipeline_process(config, tmp_path / "killed")
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, f"{where}; the rerun failed:\n{out[-3000:]}"
    assert "{'loss'" not in out and "{'loss'" not in ref_out  # the Trainer's log dicts stay off the terminal
    want = json.loads((tmp_path / "reference" / "kill" / "report.json").read_text())
    got = json.loads((tmp_path / "killed" / "kill" / "report.json").read_text())
    assert comparable(got) == comparable(want), where
    assert set(got["methods"]) == {"base", "expert_rl:add", "expert_rl:strings", "oracle", "mor_lora_hard",
                                   "prompt_router", "merge_linear", "multitask_lora", "remix"}
    assert set(got["stage_seconds"]) == set(want["stage_seconds"])
