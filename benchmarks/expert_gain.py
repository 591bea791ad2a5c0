"""Does GRPO raise reward and accuracy where the tiny base model is weak?

Trains one stage-1 expert at the pipeline default size (`ExpertTrainConfig` defaults unless changed
here) on the pretrained tiny base, then prints greedy accuracy and mean reward before/after on the
validation split, and the training reward at the start and end of the run. Usage:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/expert_gain.py                # mod, medium, default base
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/expert_gain.py --task add --difficulty hard --steps 100

The expert folder is kept (default `runs/expert_gain/<task>-<method>`); rerunning with the same
arguments reuses it (pass --force to retrain).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loramix.train import ExpertTrainConfig, train_expert


def main(argv: list[str] | None = None) -> int:
    d = ExpertTrainConfig(task="mod")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="mod")
    ap.add_argument("--base", default="default", help="base model folder or 'default'")
    ap.add_argument("--method", default="grpo", choices=["grpo", "sft"])
    ap.add_argument("--difficulty", default=d.difficulty)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--num-generations", type=int, default=d.num_generations)
    ap.add_argument("--lr", type=float, default=d.learning_rate)
    ap.add_argument("--n-eval", type=int, default=d.n_eval)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    out = args.out or Path("runs/expert_gain") / f"{args.task}-{args.method}"
    cfg = ExpertTrainConfig(task=args.task, base=args.base, out=out, method=args.method,
                            difficulty=args.difficulty, steps=args.steps, batch_size=args.batch_size,
                            num_generations=args.num_generations, learning_rate=args.lr, n_eval=args.n_eval,
                            seed=args.seed, force=args.force)
    t0 = time.perf_counter()
    train_expert(cfg)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())

    curve = [r["reward"] for r in m["reward_curve"]]
    k = max(1, min(10, len(curve) // 4)) if curve else 0
    summary = {
        "task": m["task"], "method": m["method"], "difficulty": args.difficulty, "steps": m["steps"],
        "n_eval": m["eval"]["n"],
        "accuracy_before": m["accuracy_before"], "accuracy_after": m["accuracy_after"],
        "reward_before": m["reward_before"], "reward_after": m["reward_after"],
        "train_reward_first": round(sum(curve[:k]) / k, 4) if k else None,
        "train_reward_last": round(sum(curve[-k:]) / k, 4) if k else None,
        "train_seconds": m["train_seconds"], "wall_seconds_this_call": round(wall, 1),
        "max_completion_length": m["max_completion_length"], "folder": str(out),
    }
    print()
    print(f"| {m['task']} ({args.difficulty}, {m['method']}, {m['steps']} steps) | before | after |")
    print("| --- | --- | --- |")
    print(f"| greedy accuracy, validation n={m['eval']['n']} | {m['accuracy_before']:.1%} | {m['accuracy_after']:.1%} |")
    print(f"| mean reward, validation (greedy) | {m['reward_before']:+.3f} | {m['reward_after']:+.3f} |")
    if k:
        print(f"| train reward (sampled, mean of first/last {k} steps) | {summary['train_reward_first']:+.3f} "
              f"| {summary['train_reward_last']:+.3f} |")
    print(f"\ntrain {m['train_seconds']:.0f} s; this call {wall:.0f} s; expert in {out}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
