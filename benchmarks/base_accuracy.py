"""Greedy accuracy of the base model on each synthetic domain, at easy and hard difficulty.

Test split, greedy decoding, batched with left padding, scored by each task's own verifier
(`task.is_correct`). Usage:

    .venv/bin/python benchmarks/base_accuracy.py                 # the default cached base (built if missing)
    .venv/bin/python benchmarks/base_accuracy.py --path DIR --n 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from loramix.base_model import ensure_base, greedy_completions, load_base
from loramix.tasks import SYNTHETIC_TASKS, get_task


def evaluate(path: Path, *, n: int, difficulties: list[str], domains: list[str] | None, seed: int,
             batch_size: int) -> dict:
    model, tok = load_base(path)
    max_pos = model.config.max_position_embeddings
    results: dict = {"path": str(path), "n": n, "seed": seed, "accuracy": {}, "seconds": {}}
    for name in domains or list(SYNTHETIC_TASKS):
        task = get_task(name)
        for diff in difficulties:
            exs = task.examples(split="test", n=n, seed=seed, difficulty=diff)
            prompts = [ex.prompt for ex in exs]
            longest = max(len(tok(task.reference_completion(ex))["input_ids"]) for ex in exs)
            longest_prompt = max(len(tok(p)["input_ids"]) for p in prompts)
            budget = max(8, min(longest + 32, max_pos - longest_prompt))
            t0 = time.perf_counter()
            outs = greedy_completions(model, tok, prompts, batch_size=batch_size, max_new_tokens=budget)
            acc = sum(task.is_correct(o, ex) for o, ex in zip(outs, exs)) / len(exs)
            results["accuracy"].setdefault(name, {})[diff] = round(acc, 4)
            results["seconds"].setdefault(name, {})[diff] = round(time.perf_counter() - t0, 1)
            print(f"{name:10s} {diff:6s} acc={acc:6.1%}  ({time.perf_counter() - t0:.0f} s)  "
                  f"e.g. {outs[0]!r}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", type=Path, default=None, help="base model folder (default: cached default)")
    ap.add_argument("--n", type=int, default=200, help="test problems per domain and difficulty")
    ap.add_argument("--difficulty", nargs="+", default=["easy", "hard"])
    ap.add_argument("--domains", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = args.path if args.path is not None else ensure_base()
    res = evaluate(path, n=args.n, difficulties=args.difficulty, domains=args.domains, seed=args.seed,
                   batch_size=args.batch_size)
    print()
    print("| domain | " + " | ".join(args.difficulty) + " |")
    print("| --- | " + " | ".join("---" for _ in args.difficulty) + " |")
    for name, accs in res["accuracy"].items():
        print(f"| {name} | " + " | ".join(f"{accs[d]:.1%}" for d in args.difficulty) + " |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
