"""Routed LoRA speed against the base model, PEFT LoRA, X-LoRA and Arrow (issue 6): a thin wrapper of
`loramix.bench` (the same as `loramix bench`). Usage:

    .venv/bin/python benchmarks/bench_speed.py --quick --json runs/bench_quick.json
    .venv/bin/python benchmarks/bench_speed.py --json runs/bench.json --device auto      # full size
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loramix.bench import markdown_tables, parse_list, pick_size, run_bench
from loramix.errors import LoramixError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--experts", default=None, help="comma-separated, e.g. 2,8,32")
    ap.add_argument("--methods", default=None, help="comma-separated subset")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        png = args.png or (args.json.with_suffix(".png") if args.json else Path("runs/bench.png"))
        result = run_bench(pick_size(args.quick, args.tiny), device=args.device,
                           experts=parse_list(args.experts, int, "--experts"),
                           methods=parse_list(args.methods, str, "--methods"), repeats=args.repeats,
                           json_path=args.json, png_path=png, log=lambda m: print(m, file=sys.stderr, flush=True))
    except LoramixError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
