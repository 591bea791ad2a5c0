"""MoR-LoRA router ablation on a finished tiny run: the straight-through estimator (full vs chosen),
epochs, the attention LoRA, a per-layer router and the router's learning rate, all over the run's
frozen RL experts and stage-2 traces.

    .venv/bin/python benchmarks/router_ablation.py [--run runs/tiny] [--out runs/router-ablation]
                                                   [--only full_e4,chosen_e4]

Each variant is `loramix train-router` then `loramix analyze` (50 test prompts per domain, greedy);
routing accuracy is the mean over domains of the share of tokens sent to the domain's own expert
(as in report.json). Prints a markdown table and writes it to <out>/ablation.json. Finished variants
are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASKS = ["add", "sort", "bool", "mod", "strings"]
# name -> extra train-router options (on top of the tiny recipe's: lr 5e-3, batch 16, attention rank 8)
VARIANTS = {
    "full_e4": ["--ste", "full", "--epochs", "4"],
    "full_e8": ["--ste", "full", "--epochs", "8"],
    "full_e4_router_lr_0.02": ["--ste", "full", "--epochs", "4", "--router-lr", "0.02"],
    "chosen_e4": ["--ste", "chosen", "--epochs", "4"],
    "chosen_e8": ["--ste", "chosen", "--epochs", "8"],
    "chosen_e4_no_attention": ["--ste", "chosen", "--epochs", "4", "--attention-rank", "0"],
    "chosen_e4_per_layer": ["--ste", "chosen", "--epochs", "4", "--per-layer-router"],
}


def loramix(*args: str) -> None:
    cli = Path(sys.executable).with_name("loramix")
    subprocess.run([str(cli), *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--out", type=Path, default=Path("runs/router-ablation"))
    ap.add_argument("--only", default="", help="Comma-separated variant names (default: all).")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    experts = ",".join(str(args.run / "experts" / "rl" / t) for t in TASKS)
    traces = args.run / "traces_stage2.jsonl"
    if not traces.is_file():
        sys.exit(f"{traces}: missing; run `loramix pipeline --config recipes/tiny.yaml` first")

    rows = []
    for name in names:
        mix, an = args.out / name, args.out / f"{name}.analysis"
        if not mix.is_dir():
            loramix("train-router", "--experts", experts, "--traces", str(traces), "--out", str(mix),
                    "--lr", "0.005", "--batch-size", "16", "--attention-rank", "8", "--quiet", *VARIANTS[name])
        if not (an / "analysis.json").is_file():
            loramix("analyze", str(mix), "--tasks", ",".join(TASKS), "--out", str(an), "--n", "50",
                    "--split", "test", "--difficulty", "medium", "--batch-size", "50")
        a = json.loads((an / "analysis.json").read_text())
        acc = {t: a["eval"][t]["accuracy"] for t in TASKS}
        routing = sum(a["tasks"][t]["routing_accuracy"]["overall"] for t in TASKS) / len(TASKS)
        rows.append({"variant": name, "options": " ".join(VARIANTS[name]), "routing_accuracy": round(routing, 3),
                     "average": round(sum(acc.values()) / len(acc), 3), "accuracy": acc})
        print(f"{name}: routing accuracy {routing:.3f}, average accuracy {rows[-1]['average']:.3f}", flush=True)

    (args.out / "ablation.json").write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=2) + "\n")
    print("\n| variant | train-router options | routing accuracy | average accuracy (%) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | `{r['options']}` | {r['routing_accuracy']:.3f} | {100 * r['average']:.1f} |")


if __name__ == "__main__":
    main()
