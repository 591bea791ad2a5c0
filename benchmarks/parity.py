"""Parity of the routing core against PEFT, as numbers: forced expert i vs PEFT with adapter i
active, and soft routing with fixed weights vs PEFT's "cat" merge (max |delta logits|, fp32).

    .venv/bin/python benchmarks/parity.py
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import loramix

MLP = ["gate_proj", "up_proj", "down_proj"]


def tiny(arch: str):
    torch.manual_seed(0)
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=97, max_position_embeddings=128)
    return (LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))).eval()


def adapters(model, root: Path) -> list[str]:
    specs = [(2, 4, MLP, {}), (4, 6, MLP, {"use_rslora": True}), (8, 8, ["gate_proj", "up_proj"], {})]
    paths = []
    for i, (r, alpha, targets, kw) in enumerate(specs):
        torch.manual_seed(10 + i)
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                            init_lora_weights=False, **kw))
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        pm.save_pretrained(str(root / f"e{i}"))
        paths.append(str(root / f"e{i}"))
    return paths


@torch.no_grad()
def main() -> None:
    ids = torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    print("| model | check | max abs diff of logits |\n|---|---|---:|")
    for arch in ("llama", "qwen2"):
        model = tiny(arch)
        with tempfile.TemporaryDirectory() as tmp:
            paths = adapters(model, Path(tmp))
            mix = loramix.compose(copy.deepcopy(model), paths, router="hard").eval()
            for i, path in enumerate(paths):
                with mix.force_expert(i):
                    ours = mix(input_ids=ids).logits
                ref = PeftModel.from_pretrained(copy.deepcopy(model), path).eval()(input_ids=ids).logits
                print(f"| {arch} | forced expert {i} vs PEFT adapter {i} | {(ours - ref).abs().max().item():.2e} |")
            weights = [0.5, 0.3, 0.2]
            pm = PeftModel.from_pretrained(copy.deepcopy(model), paths[0], adapter_name="0")
            for i, p in enumerate(paths[1:], start=1):
                pm.load_adapter(p, adapter_name=str(i))
            pm.add_weighted_adapter(["0", "1", "2"], weights, "cat", combination_type="cat")
            pm.set_adapter("cat")
            soft = loramix.compose(copy.deepcopy(model), paths, router="soft").eval()
            with soft.fixed_weights(weights):
                ours = soft(input_ids=ids).logits
            print(f"| {arch} | soft, fixed weights {weights} vs PEFT cat merge | "
                  f"{(ours - pm.eval()(input_ids=ids).logits).abs().max().item():.2e} |")


if __name__ == "__main__":
    main()
