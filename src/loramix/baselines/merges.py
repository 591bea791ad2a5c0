"""Static merges of the experts: one adapter by PEFT ``add_weighted_adapter`` (linear, cat, TIES,
DARE), no training. Output: an ordinary PEFT adapter folder (+ ``merge_info.json``)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from loramix import __version__
from loramix.experts import adapter_folders, expert_digests
from loramix.loading import load_base
from loramix.errors import LoramixError, unknown_name
from loramix.io import atomic_path, write_json

MERGE_METHODS = {"linear": "linear", "cat": "cat", "ties": "ties", "dare": "dare_ties",
                 "dare_ties": "dare_ties", "dare_linear": "dare_linear"}
MERGED_ADAPTER = "merged"
MERGE_INFO = "merge_info.json"


def merge_experts(base: str | Path, experts: Sequence[str | Path], method: str, out: str | Path,
                  weights: Sequence[float] | None = None, density: float = 0.5, seed: int = 0) -> Path:
    """Merge the expert adapters into one by PEFT ``add_weighted_adapter`` and save it as an ordinary
    PEFT adapter folder at ``out`` (atomic): ``adapter_config.json`` + ``adapter_model.safetensors``
    directly in ``out``, plus ``merge_info.json``.

    method: ``linear``, ``cat``, ``ties``, ``dare`` (= ``dare_ties``), ``dare_ties`` or ``dare_linear``.
    weights: one per expert; default equal weights ``1/E`` (an average). ``cat`` is exact
    (``sum_i w_i * scale_i * B_i A_i``, rank = sum of ranks); ``linear``/``ties``/``dare_*`` combine the
    A and B factors separately (PEFT's definition) and need equal ranks: unequal ranks raise an error
    (use ``cat``) rather than falling back. density: kept share for ties/dare. DARE's random drop is
    seeded by ``seed``.
    """
    if method not in MERGE_METHODS:
        raise unknown_name("merge method", method, MERGE_METHODS)
    combo = MERGE_METHODS[method]
    paths = adapter_folders(experts)
    E = len(paths)
    weights = [1.0 / E] * E if weights is None else [float(w) for w in weights]
    if len(weights) != E:
        raise LoramixError(f"{len(weights)} weights for {E} experts")
    if combo in ("ties", "dare_ties", "dare_linear") and not 0.0 < density <= 1.0:
        raise LoramixError(f"density must lie in (0, 1], got {density}")
    model, _tok, base_path = load_base(base)
    names = [f"expert{i}" for i in range(E)]
    pm = _load_peft_experts(model, paths, names)
    if combo != "cat" and E > 1:
        ranks = {p.name: _max_rank(pm.peft_config[n]) for p, n in zip(paths, names)}
        if len(set(ranks.values())) != 1:
            raise LoramixError(f"merge method {method!r} needs experts of equal rank, got {ranks}; "
                               "use --method cat for experts of different ranks")
    kwargs = {"density": density} if combo in ("ties", "dare_ties", "dare_linear") else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pm.add_weighted_adapter(names, weights, MERGED_ADAPTER, combination_type=combo, **kwargs)
    _fix_merged_scaling(pm, MERGED_ADAPTER)
    cfg = pm.peft_config[MERGED_ADAPTER]
    cfg.base_model_name_or_path = str(base_path)
    info = {"loramix_version": __version__, "method": method, "combination_type": combo, "weights": weights,
            "density": density if kwargs else None, "seed": seed, "rank": cfg.r, "base": str(base_path),
            "experts": [str(p.resolve()) for p in paths], "experts_sha256": [expert_digests(p) for p in paths]}
    out = Path(out)
    with atomic_path(out) as tmp:
        stage = tmp.with_name(tmp.name + ".stage")
        pm.save_pretrained(str(stage), selected_adapters=[MERGED_ADAPTER])
        src = stage / MERGED_ADAPTER if (stage / MERGED_ADAPTER / "adapter_config.json").is_file() else stage
        shutil.move(str(src), str(tmp))
        write_json(tmp / MERGE_INFO, info)
    return out


def _load_peft_experts(model, paths: Sequence[Path], names: Sequence[str]):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(model, str(paths[0]), adapter_name=names[0])
    for p, n in zip(paths[1:], names[1:]):
        pm.load_adapter(str(p), adapter_name=n)
    return pm


def _max_rank(cfg) -> int:
    return max([cfg.r, *(cfg.rank_pattern or {}).values()])


def _fix_merged_scaling(pm, name: str) -> None:
    """PEFT copies the first adapter's config into the merged one (``lora_alpha = r``). If that
    adapter used rsLoRA the merged scale would be ``sqrt(r)`` although the factors already carry each
    expert's scale: switch rsLoRA off so the merged scale is exactly 1."""
    from peft.tuners.lora import LoraLayer

    cfg = pm.peft_config[name]
    if not getattr(cfg, "use_rslora", False):
        return
    cfg.use_rslora = False
    for module in pm.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scaling[name] = 1.0


__all__ = ["MERGED_ADAPTER", "MERGE_INFO", "MERGE_METHODS", "merge_experts"]
