"""Where decoding time goes: torch.profiler over KV-cached greedy decoding, PEFT single-LoRA against the
loramix hard top-1 mixture, on the `loramix bench` model (same base, same r=16 experts).

    .venv/bin/python benchmarks/profile_decode.py [--size full|quick] [--experts 8] [--new-tokens 16]

Prints each method's top ops by self CPU time and the share of the weight gathers (index_select),
the grouped GEMMs and the bmm's in the mixture's total.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from loramix import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="full", choices=sorted(bench.SIZES))
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()

    size = dataclasses.replace(bench.SIZES[args.size], new_tokens=args.new_tokens)
    base = bench.build_base(size, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, size.vocab, (size.batch, size.prompt), generator=gen)
    with tempfile.TemporaryDirectory(prefix="loramix-profile-") as tmp:
        folders = bench.make_expert_folders(base, size, args.experts, Path(tmp))
        methods = [bench.build_method("peft_lora", None, base, size, folders),
                   bench.build_method("hard", args.experts, base, size, folders)]
    totals = {}
    for m in methods:
        call = bench.make_call(m, "decode", prompt, prompt, size.new_tokens)
        for _ in range(2):
            call()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                call()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        totals[m.name] = total
        print(f"\n{m.name}" + (f" E={m.experts}" if m.experts else "") + f": {total / 1e3 / args.calls:.1f} ms per "
              f"{size.new_tokens}-token decode (self CPU, profiled)")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if m.name == "hard":
            for op in ("aten::index_select", "aten::_grouped_mm", "aten::bmm", "aten::argmax", "aten::_softmax"):
                t = sum(e.self_cpu_time_total for e in events if e.key == op)
                print(f"  {op:<22} {100 * t / total:5.1f}% of the mixture's self CPU time")
    print(f"\nhard / peft_lora self CPU time: {totals['hard'] / totals['peft_lora']:.2f}")


if __name__ == "__main__":
    main()
