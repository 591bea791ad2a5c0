# Compose three PEFT LoRA adapters into one hard-routed model and show each token's expert.
import sys
import loramix
from loramix.base_model import load_base

base_dir, *adapters = sys.argv[1:]          # an HF model folder and three PEFT adapter folders
model, tok = load_base(base_dir)
mixture = loramix.compose(model, adapters, router="hard", seed=0).eval()
print(f"trainable parameters: {mixture.trainable_parameters():,}")
ids = tok("add: 482+739\n", return_tensors="pt", add_special_tokens=False)
mixture(**ids)                               # any forward records the routing
first_layer = mixture.routing_trace()[0]     # per-site: expert_ids [batch, seq, k]
for token, expert in zip(tok.convert_ids_to_tokens(ids["input_ids"][0]), first_layer.expert_ids[0, :, 0]):
    print(f"{token!r:>6} -> {mixture.expert_names[expert]}")
