"""Peak memory of ReMix's loss, full against chunked, as the RLOO samples M grow.

A random Llama (hidden 64, 2 layers) with a 32k vocabulary, 2 sequences x M samples x 128 tokens, one
forward and backward. Each case runs in a fresh process and reports the growth of its peak RSS over the
step, in MB: the kernel's peak (VmHWM) is reset just before the step (``/proc/self/clear_refs``), so an
earlier transient peak (imports) cannot hide it. glibc's mmap threshold is pinned, or its dynamic
threshold keeps freed 32 MB chunks in the heap and RSS stops measuring live memory.

    .venv/bin/python benchmarks/remix_loss_memory.py            # the table
    .venv/bin/python benchmarks/remix_loss_memory.py 8 chunked  # one case (used by tests/test_remix.py)
"""

from __future__ import annotations

import os
import subprocess
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def one(M: int, mode: str) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loramix.train.remix import ReMixConfig, build_mixture, chunked_sequence_losses, final_hidden_states, sequence_losses

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=32000,
                                         max_position_embeddings=256))
    mix = build_mixture(model, ReMixConfig(tasks=("x",), n_experts=4, top_k=2, rank=4)).train()
    ids = torch.randint(4, 32000, (2 * M, 128))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    before = _status_kb("VmRSS")
    if mode == "chunked":
        with final_hidden_states(mix) as head:
            hidden = mix(input_ids=ids).logits
        loss = chunked_sequence_losses(hidden, head, ids, chunk_tokens=256).mean()
    else:
        loss = sequence_losses(mix(input_ids=ids).logits, ids).mean()
    loss.backward()
    return (_status_kb("VmHWM") - before) / 1024


def measure(M: int, mode: str) -> float:
    """``one(M, mode)`` in a fresh process (peak RSS is per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, str(M), mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.split()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(f"{one(int(sys.argv[1]), sys.argv[2]):.1f}")
    else:
        print("| M | full loss (MB) | chunked (MB) |\n|---|---|---|")
        for M in (2, 4, 8):
            print(f"| {M} | {measure(M, 'full'):.0f} | {measure(M, 'chunked'):.0f} |")
