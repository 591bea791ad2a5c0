"""Does the embedded tiny world let an experiment decide the MoR-LoRA paper's claims?

Builds a base (a `BaseConfig`, default or changed by --base-set), trains one SFT expert per domain
with the library's own `train_expert` (optionally GRPO on top, --grpo-steps), then evaluates with
greedy decoding on N test prompts per domain: the base, every expert on every domain, the PEFT
linear merge of the experts (`merge_experts(..., "linear")`, equal weights 1/E), the oracle (each
domain with its own expert) and, optionally, the base's format rate on mixed two-domain prompts.
It prints each precondition with its value, 95% interval and verdict:

1. specialisation: own expert - base >= 25 points on each domain; own expert - each other expert
   >= 15 points on each domain;
2. composition needed: oracle average - linear merge average >= 10 points;
3. no degenerate domain: base accuracy in [5%, 60%] on each domain (and, for a domain whose
   answer is a label, its majority-class rate);
4. budget: base build and per-expert training seconds (measured, at the thread count given).

Intervals: Wilson 95% for one accuracy; Newcombe's hybrid Wilson interval (method 10) for a
difference of two accuracies (the oracle and merge averages pool their N prompts per domain). A
verdict is "met" when the interval lies wholly on the good side of the threshold, "not met" when
it lies wholly on the bad side, else "undecided".

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LORAMIX_HOME=/tmp/world_home \\
        .venv/bin/python benchmarks/world_check.py --n 100 --threads 1 --json /tmp/world.json

Everything is cached under --home (the base by config hash, experts by settings), so a rerun with
a larger --n evaluates again without retraining.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from loramix.stats import verdict, verdict_between, wilson


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 and its 95% interval (Newcombe 1998, method 10; from two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def verdict_at_least(lo: float, hi: float, threshold: float) -> str:
    return verdict((lo, hi), threshold, ">=")


def verdict_inside(lo: float, hi: float, a: float, b: float) -> str:
    return verdict_between((lo, hi), a, b)


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_base(home: Path, overrides: dict, threads: int) -> tuple[Path, dict]:
    from loramix import base_model as bm

    if "domains" in overrides:
        overrides["domains"] = tuple(overrides["domains"] or ())
    config = bm.BaseConfig(**overrides)
    path = home / "base" / config.hash()
    if not bm.is_built(path):
        print(f"building base {config.hash()} at {threads} thread(s) ...", flush=True)
        bm._build(path, config, progress=False, threads=threads)
    info = bm.base_info(path)
    return path, info


def train_experts(base: Path, home: Path, tasks: list[str], args) -> dict[str, dict]:
    from loramix.train import ExpertTrainConfig, train_expert

    settings = dict(steps=args.sft_steps, sft_learning_rate=args.sft_lr, batch_size=args.batch_size,
                    n_train=args.n_train, rank=args.rank, alpha=args.alpha, difficulty=args.difficulty,
                    grpo_steps=args.grpo_steps, grpo_lr=args.grpo_lr, base=str(base))
    if args.mixed_share:
        settings["mixed_share"] = args.mixed_share
    root = home / "experts" / _digest(settings)
    out = {}
    for task in tasks:
        sft = ExpertTrainConfig(task=task, base=base, out=root / f"{task}-sft", method="sft", steps=args.sft_steps,
                                batch_size=args.batch_size, learning_rate=args.sft_lr, rank=args.rank,
                                alpha=args.alpha, difficulty=args.difficulty, n_train=args.n_train, n_eval=16,
                                mixed_share=args.mixed_share, threads=args.threads, progress=False,
                                save_steps=10_000)
        train_expert(sft)
        m = json.loads((Path(sft.out) / "metrics.json").read_text())
        path, secs = Path(sft.out), m["train_seconds"]
        if args.grpo_steps:
            rl = ExpertTrainConfig(task=task, base=base, out=root / f"{task}-rl", method="grpo",
                                   init_adapter=sft.out, steps=args.grpo_steps, batch_size=32, num_generations=8,
                                   learning_rate=args.grpo_lr, rank=args.rank, alpha=args.alpha,
                                   difficulty=args.difficulty, n_train=args.n_train, n_eval=16,
                                   threads=args.threads, progress=False, save_steps=10_000)
            train_expert(rl)
            m = json.loads((Path(rl.out) / "metrics.json").read_text())
            path, secs = Path(rl.out), m["train_seconds"]
        out[task] = {"path": str(path), "train_seconds": secs, "sft_seconds": m["phases"][0]["train_seconds"]
                     if not args.grpo_steps else None}
        print(f"  expert {task}: {secs:.1f} s", flush=True)
    return out


def evaluate_all(base: Path, experts: dict[str, dict], merged: Path, tasks: list[str], args) -> dict:
    from peft import PeftModel

    from loramix.generation import generate
    from loramix.loading import load_base
    from loramix.tasks import get_task

    model, tok, _ = load_base(str(base))
    model.eval()
    names = list(experts)
    pm = PeftModel.from_pretrained(model, experts[names[0]]["path"], adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(experts[n]["path"], adapter_name=n)
    pm.load_adapter(str(merged), adapter_name="merge")
    pm.eval()
    data = {}
    for t in tasks:
        task = get_task(t)
        exs = task.examples("test", args.n, seed=args.seed, difficulty=args.eval_difficulty)
        refs = [task.reference_completion(e) for e in exs]
        longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs)
        answers = Counter(e.answer for e in exs)
        data[t] = {"examples": exs, "max_new_tokens": longest + args.slack, "majority_rate": answers.most_common(1)[0][1] / len(exs),
                   "reference_mean_length": sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs) / len(refs)}
    results: dict[str, dict[str, dict]] = {}
    for who in ["base", *names, "merge"]:
        results[who] = {}
        for t in tasks:
            task, d = get_task(t), data[t]
            t0 = time.perf_counter()
            prompts = [e.prompt for e in d["examples"]]
            if who == "base":
                with pm.disable_adapter():
                    comps = generate(pm, tok, prompts, max_new_tokens=d["max_new_tokens"], batch_size=args.eval_batch)
            else:
                pm.set_adapter(who)
                comps = generate(pm, tok, prompts, max_new_tokens=d["max_new_tokens"], batch_size=args.eval_batch)
            comps = [c[0] for c in comps]
            k = sum(bool(task.is_correct(c.text, e)) for c, e in zip(comps, d["examples"]))
            results[who][t] = {"k": k, "n": len(comps), "mean_length": sum(c.tokens for c in comps) / len(comps),
                               "seconds": round(time.perf_counter() - t0, 2)}
        row = " ".join(f"{t}={results[who][t]['k'] / results[who][t]['n']:.0%}" for t in tasks)
        print(f"  {who:>8}: {row}", flush=True)
    mixed = None
    if args.mixed_n:
        mixed = mixed_format_rate(pm, tok, tasks, args)
    segment = segment_oracle(base, experts, args) if args.segment_pairs else None
    meta = {t: {k: v for k, v in d.items() if k != "examples"} for t, d in data.items()}
    return {"results": results, "domains": meta, "mixed": mixed, "segment_oracle": segment}


def segment_oracle(base: Path, experts: dict[str, dict], args) -> dict:
    """The segment oracle on mixed prompts of each pair in --segment-pairs: every token, prompt and
    completion, routed to its sub-question's expert (``evaluate --routing segment``); joint and
    per-part accuracy and the two-key format rate, as the pipeline reports them."""
    from loramix.evaluate import evaluate_model
    from loramix.loading import load_base
    from loramix.mixture import MixtureConfig, compose

    model, tok, _ = load_base(str(base))
    names = list(experts)
    mixture = compose(model, [experts[n]["path"] for n in names], MixtureConfig(router="hard")).eval()
    pairs = [p for p in args.segment_pairs.split(",") if p]
    report = evaluate_model(mixture, tok, pairs, n=args.mixed_n or 50, difficulty=args.eval_difficulty,
                            batch_size=args.eval_batch, routing="segment", seed=args.seed,
                            expert_for_task={n: i for i, n in enumerate(names)}, keep_samples=3)
    out = {}
    for pair in pairs:
        m = report.per_task[pair]
        out[pair] = {k: m.get(k) for k in ("accuracy", "format_rate", "part_accuracy", "n")}
        out[pair]["samples"] = m.get("samples", [])[:3]
        print(f"  segment_oracle {pair}: both {m['accuracy']:.0%}, format {m['format_rate']:.0%}, "
              f"parts {m.get('part_accuracy')}", flush=True)
    return out


def mixed_format_rate(pm, tok, tasks: list[str], args) -> dict:
    """The base's format rate (both keys present) on mixed prompts of every pair of domains."""
    from loramix.generation import generate
    from loramix.tasks.mixed import MixedTask

    out = {}
    with pm.disable_adapter():
        for i, a in enumerate(tasks):
            for b in tasks[i + 1:]:
                mt = MixedTask(a, b)
                exs = mt.examples("test", args.mixed_n, seed=args.seed, difficulty=args.eval_difficulty)
                longest = max(len(tok(mt.reference_completion(e), add_special_tokens=False)["input_ids"]) for e in exs)
                comps = [c[0] for c in generate(pm, tok, [e.prompt for e in exs], max_new_tokens=longest + args.slack,
                                                batch_size=args.eval_batch)]
                out[mt.name] = {"format": sum(mt.is_formatted(c.text) for c in comps), "correct":
                                sum(mt.is_correct(c.text, e) for c, e in zip(comps, exs)), "n": len(exs)}
    return out


def preconditions(ev: dict, tasks: list[str], base_info: dict, experts: dict) -> list[dict]:
    R = ev["results"]
    rows = []

    def kn(who, t):
        return R[who][t]["k"], R[who][t]["n"]

    for t in tasks:
        d, lo, hi = newcombe(*kn(t, t), *kn("base", t))
        rows.append({"check": f"1a {t}: own expert - base >= 25", "value": d, "lo": lo, "hi": hi,
                     "verdict": verdict_at_least(lo, hi, 0.25)})
    for t in tasks:
        for o in tasks:
            if o == t:
                continue
            d, lo, hi = newcombe(*kn(t, t), *kn(o, t))
            rows.append({"check": f"1b {t}: {t} expert - {o} expert >= 15", "value": d, "lo": lo, "hi": hi,
                         "verdict": verdict_at_least(lo, hi, 0.15)})
    ko = sum(R[t][t]["k"] for t in tasks)
    no = sum(R[t][t]["n"] for t in tasks)
    km = sum(R["merge"][t]["k"] for t in tasks)
    nm = sum(R["merge"][t]["n"] for t in tasks)
    d, lo, hi = newcombe(ko, no, km, nm)
    rows.append({"check": "2 oracle - linear merge >= 10", "value": d, "lo": lo, "hi": hi,
                 "verdict": verdict_at_least(lo, hi, 0.10)})
    for t in tasks:
        k, n = kn("base", t)
        lo, hi = wilson(k, n)
        rows.append({"check": f"3 {t}: base in [5, 60]", "value": k / n, "lo": lo, "hi": hi,
                     "verdict": verdict_inside(lo, hi, 0.05, 0.60),
                     "majority_rate": ev["domains"][t]["majority_rate"]})
    rows.append({"check": "4 base build seconds", "value": base_info.get("build_seconds"), "lo": None, "hi": None,
                 "verdict": f"threads={base_info.get('threads')}"})
    for t in tasks:
        rows.append({"check": f"4 {t} expert train seconds", "value": experts[t]["train_seconds"], "lo": None,
                     "hi": None, "verdict": ""})
    return rows


def print_table(rows: list[dict], ev: dict, tasks: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    R = ev["results"]
    acc = Table(title="greedy accuracy on test prompts (rows: model, columns: domain)")
    acc.add_column("model")
    for t in tasks:
        acc.add_column(t, justify="right")
    acc.add_column("mean", justify="right")
    oracle = {t: R[t][t] for t in tasks}
    for who, res in [*R.items(), ("oracle", oracle)]:
        vals = [res[t]["k"] / res[t]["n"] for t in tasks]
        acc.add_row(who, *(f"{v:.1%}" for v in vals), f"{sum(vals) / len(vals):.1%}")
    lens = Table(title="mean completion length (tokens) / max_new_tokens")
    lens.add_column("model")
    for t in tasks:
        lens.add_column(t, justify="right")
    for who, res in R.items():
        lens.add_row(who, *(f"{res[t]['mean_length']:.0f}/{ev['domains'][t]['max_new_tokens']}" for t in tasks))
    pre = Table(title="preconditions (95% intervals)")
    for c in ("check", "value", "95% interval", "verdict"):
        pre.add_column(c)
    for r in rows:
        if r["lo"] is None:
            pre.add_row(r["check"], f"{r['value']}", "", r["verdict"])
        else:
            extra = f" (majority {r['majority_rate']:.0%})" if "majority_rate" in r else ""
            pre.add_row(r["check"], f"{100 * r['value']:+.1f}{extra}", f"[{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]",
                        r["verdict"])
    c = Console()
    c.print(acc)
    c.print(lens)
    c.print(pre)
    if ev.get("mixed"):
        rates = {k: f"{v['format'] / v['n']:.0%} fmt, {v['correct'] / v['n']:.0%} ok" for k, v in ev["mixed"].items()}
        c.print("base on mixed prompts:", rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("LORAMIX_HOME", "/tmp/world_home")))
    ap.add_argument("--tasks", default="add,sort,bool,mod,strings")
    ap.add_argument("--base-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a BaseConfig field (repeatable), e.g. --base-set steps=600")
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--mixed-share", type=float, default=0.0,
                    help="share of each SFT expert's prompts made mixed beside a public (easy) partner")
    ap.add_argument("--grpo-steps", type=int, default=0, help="GRPO steps on top of each SFT expert (0: SFT only)")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--difficulty", default="medium", help="the experts' training difficulty")
    ap.add_argument("--eval-difficulty", default="medium")
    ap.add_argument("--n", type=int, default=100, help="test prompts per domain")
    ap.add_argument("--mixed-n", type=int, default=0, help="mixed prompts per pair for the base's format rate")
    ap.add_argument("--segment-pairs", default="", help="comma-separated pairs (add+mod,...): the segment oracle's "
                                                        "joint, per-part and format rates on --mixed-n prompts each")
    ap.add_argument("--eval-batch", type=int, default=300)
    ap.add_argument("--slack", type=int, default=4, help="tokens allowed beyond the longest reference completion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    os.environ["LORAMIX_HOME"] = str(args.home)
    torch.set_num_threads(args.threads)
    from loramix.baselines.merges import merge_experts
    from loramix.train.common import quiet_hf

    quiet_hf()
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    base, info = build_base(args.home, _parse_set(args.base_set), args.threads)
    print(f"base {base} built in {info['build_seconds']} s at {info['threads']} thread(s)", flush=True)
    experts = train_experts(base, args.home, tasks, args)
    merged = Path(experts[tasks[0]]["path"]).parent / "merge-linear"
    if not (merged / "adapter_config.json").is_file():
        merge_experts(base, [experts[t]["path"] for t in tasks], "linear", merged)
    t_eval = time.perf_counter()
    ev = evaluate_all(base, experts, merged, tasks, args)
    eval_seconds = time.perf_counter() - t_eval
    rows = preconditions(ev, tasks, info, experts)
    print_table(rows, ev, tasks)
    print(f"evaluation {eval_seconds:.0f} s; whole run {time.perf_counter() - t0:.0f} s")
    if args.json:
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "base": {"path": str(base), **info},
                   "experts": experts, "evaluation": ev, "preconditions": rows,
                   "eval_seconds": round(eval_seconds, 1)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
