"""PEFT mixtures over the experts, inference side: X-LoRA and Arrow model objects, ``build_arrow``
(training-free) and ``load_baseline``, which turns a recipe folder (``loramix_baseline.json`` naming
base and experts, plus the X-LoRA classifier weights) back into ``(model, tokenizer)``. Training the
X-LoRA classifier lives in ``loramix.train.xlora``.

"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from loramix import __version__
from loramix.errors import LoramixError, unknown_name
from loramix.experts import adapter_folders, check_expert_digests, expert_digests
from loramix.io import atomic_path, read_json, write_json
from loramix.loading import load_base
from loramix.mixture import _text_config

BASELINE_FILE = "loramix_baseline.json"
XLORA_WEIGHTS = "xlora_classifier.safetensors"
BASELINE_KINDS = ("xlora", "arrow")
XLORA_DEFAULTS = {"xlora_depth": 1, "xlora_size": 256, "layerwise_scalings": False, "enable_softmax": True,
                  "softmax_temperature": 1.0, "top_k_lora": None, "xlora_dropout_p": 0.0}


def _check_digests(recipe_path: Path, paths: Sequence[Path], recorded: Sequence[dict], accept_changed: bool) -> None:
    for i, (p, digests) in enumerate(zip(paths, recorded)):
        check_expert_digests(p, digests, f"{recipe_path} (experts[{i}])", accept_changed)


def _xlora_model(model, paths: Sequence[Path], options: dict, seed: int):
    from peft import XLoraConfig, get_peft_model

    model.config.use_cache = False  # X-LoRA refuses a KV cache
    cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=_text_config(model.config).hidden_size,
                      adapters={str(i): str(p) for i, p in enumerate(paths)}, **options)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        xm = get_peft_model(model, cfg)
    return xm


def _xlora_classifier(xm):
    return xm.base_model.internal_xlora_classifier


def _arrow_model(model, paths: Sequence[Path], options: dict):
    from peft import ArrowConfig, create_arrow_model

    try:
        return create_arrow_model(model, [str(p) for p in paths], ArrowConfig(**options))
    except (ValueError, TypeError) as err:
        raise LoramixError(f"Arrow over {[str(p) for p in paths]}: {err}") from None


def build_arrow(base: str | Path, experts: Sequence[str | Path], out: str | Path, *, top_k: int = 3,
                router_temperature: float = 1.0, seed: int = 0) -> Path:
    """PEFT Arrow (training-free routing) over the experts: checks that PEFT accepts them (Arrow needs
    equal ranks and targets) and saves a recipe folder (``loramix_baseline.json``, kind ``arrow``).
    ``top_k`` is capped at the number of experts."""
    paths = adapter_folders(experts)
    options = {"top_k": min(int(top_k), len(paths)), "router_temperature": float(router_temperature), "rng_seed": seed}
    model, _tok, base_path = load_base(base)
    _arrow_model(model, paths, options)
    recipe = {"kind": "arrow", "loramix_version": __version__, "base": str(base_path),
              "experts": [str(p.resolve()) for p in paths], "experts_sha256": [expert_digests(p) for p in paths], "options": options}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / BASELINE_FILE, recipe)
    return out


def is_baseline(folder: str | Path) -> bool:
    return (Path(folder) / BASELINE_FILE).is_file()


def baseline_kind(folder: str | Path) -> str:
    return str(json.loads((Path(folder) / BASELINE_FILE).read_text()).get("kind"))


def load_baseline(folder: str | Path, base: str | None = None, *, accept_changed_experts: bool = False):
    """``(model, tokenizer)`` from a recipe folder written by ``build_xlora`` or ``build_arrow``:
    the base (``base`` overrides the recorded one), the experts (sha256-checked) and, for X-LoRA, the
    trained classifier. The model is in eval mode; the tokenizer pads on the left."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / BASELINE_FILE
    recipe = read_json(path, "missing; not a loramix baseline folder")
    kind = recipe.get("kind")
    if kind not in BASELINE_KINDS:
        raise unknown_name("baseline kind", str(kind), BASELINE_KINDS)
    paths = [Path(p) for p in recipe["experts"]]
    _check_digests(path, paths, recipe.get("experts_sha256", [{}] * len(paths)), accept_changed_experts)
    model, tok, _ = load_base(base or recipe["base"])
    if kind == "xlora":
        xm = _xlora_model(model, paths, recipe["options"], recipe.get("seed", 0))
        clf = _xlora_classifier(xm)
        state = load_file(str(folder / XLORA_WEIGHTS))
        missing, unexpected = clf.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LoramixError(f"{folder / XLORA_WEIGHTS}: keys do not match the X-LoRA classifier "
                               f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        return xm.eval(), tok
    return _arrow_model(model, paths, recipe["options"]).eval(), tok


__all__ = ["BASELINE_FILE", "BASELINE_KINDS", "XLORA_DEFAULTS", "XLORA_WEIGHTS", "baseline_kind", "build_arrow",
           "is_baseline", "load_baseline"]
