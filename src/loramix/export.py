"""``loramix export``: a saved mixture and copies of its experts in one self-contained folder, with a
README model card, so it can be moved, shared or uploaded as one piece.

The folder holds the mixture's own files, ``experts/<name>/`` (each expert's files, checked against
the sha256 the mixture recorded) and a ``mixture_config.json`` naming them by relative path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loramix.errors import LoramixError
from loramix.experts import CONFIG_NAME, WEIGHTS_NAME
from loramix.io import atomic_path, read_json
from loramix.mixture import MIXTURE_CONFIG, check_saved_expert, saved_expert_folder

EXPERTS_SUBDIR = "experts"
CARD_NAME = "README.md"


def export_mixture(mixture_dir: str | Path, out: str | Path, *, experts_dir: str | Path | None = None) -> Path:
    """Write ``out``: the mixture at ``mixture_dir`` with its experts copied in (found as
    ``load_mixture`` finds them, ``experts_dir`` included; each checked against its recorded sha256)
    and a model card. Atomic: ``out`` appears complete or not at all. Refuses an ``out`` that exists."""
    mixture_dir, out = Path(mixture_dir), Path(out)
    cfg_path = mixture_dir / MIXTURE_CONFIG
    cfg = read_json(cfg_path, "missing; not a loramix mixture folder")
    entries = cfg.get("experts")
    if not isinstance(entries, list):
        raise LoramixError(f"{cfg_path}: field 'experts' missing or not a list")
    if out.exists():
        raise LoramixError(f"{out}: --out: already exists; give a new folder")
    sources = []
    for i, entry in enumerate(entries):
        folder = saved_expert_folder(entry, i, mixture_dir, experts_dir)
        if folder is not None:
            check_saved_expert(entry, i, folder, cfg_path)
        sources.append(folder)
    new_cfg = dict(cfg)
    new_cfg["experts"] = []
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for f in sorted(mixture_dir.iterdir()):  # the mixture's files (weights, prompt router, ...)
            if f.is_file() and f.name not in (MIXTURE_CONFIG, CARD_NAME) and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        for entry, folder in zip(entries, sources):
            entry = {k: v for k, v in entry.items() if k != "absolute_path"}
            if folder is not None:
                rel = Path(EXPERTS_SUBDIR) / _folder_name(entry["name"])
                (tmp / rel).mkdir(parents=True)
                for f in sorted(folder.iterdir()):  # the adapter's own files, not its checkpoints
                    if f.is_file() and not f.name.startswith("."):
                        shutil.copy2(f, tmp / rel / f.name)
                entry["path"] = rel.as_posix()
            new_cfg["experts"].append(entry)
        base = dict(new_cfg.get("base_model") or {})
        if base.get("path") and not Path(base["path"]).is_absolute():  # the base is not copied
            base["path"] = str((mixture_dir / base["path"]).resolve())
        new_cfg["base_model"] = base
        (tmp / MIXTURE_CONFIG).write_text(json.dumps(new_cfg, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(new_cfg, title=out.name, root=tmp))
    return out


def _folder_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip(".")
    if not safe:
        raise LoramixError(f"expert name {name!r} gives no usable folder name")
    return safe


def _targets(entry: dict, folder: Path | None) -> tuple[str, str, str]:
    """(rank, alpha, target modules) of an expert, from its adapter_config.json (or the shapes a
    trainable expert recorded)."""
    if folder is not None and (folder / CONFIG_NAME).is_file():
        c = json.loads((folder / CONFIG_NAME).read_text())
        targets = c.get("target_modules")
        targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
        return str(c.get("r")), str(c.get("lora_alpha")), targets
    modules = entry.get("modules") or {}
    ranks = sorted({m["rank"] for m in modules.values()})
    kinds = sorted({m.rpartition(".")[2] for m in modules})
    return "/".join(map(str, ranks)) or "-", "-", ", ".join(kinds) or "-"


def model_card(cfg: dict, title: str = "loramix mixture", root: Path | None = None) -> str:
    """A README.md for a mixture folder: experts (name, path, sha256, rank/alpha/targets), router,
    attention LoRA, the base model it records and how to load it. ``root`` is the folder the expert
    paths are relative to (default: none; relative paths then read from ``cfg`` alone)."""
    lines = [f"# {title}", "", "A mixture of LoRA experts made with loramix: frozen PEFT LoRA "
             "experts inside a causal LM, chosen per token by a router.", "", "## Experts", "",
             "| # | name | path | rank | alpha | targets | sha256 (adapter_config.json / adapter_model.safetensors) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, e in enumerate(cfg.get("experts") or []):
        path = e.get("path")
        folder = None if not path else root / path if root is not None else Path(path) if Path(path).is_absolute() \
            else None
        r, alpha, targets = _targets(e, folder if folder is not None and folder.is_dir() else None)
        sha = e.get("sha256") or {}
        digests = " / ".join(f"`{sha[k]}`" for k in (CONFIG_NAME, WEIGHTS_NAME) if k in sha) or "-"
        lines.append(f"| {i} | {e.get('name')} | {path or '(trained; in mixture.safetensors)'} | {r} | {alpha} | "
                     f"{targets} | {digests} |")
    top_k = cfg.get("top_k")
    shared = cfg.get("shared_router", True)
    att = cfg.get("attention_lora_rank") or 0
    att_text = (f"rank {att}, alpha {cfg.get('attention_lora_alpha') or att}, on "
                f"{', '.join(cfg.get('attention_targets') or [])}" if att else "none")
    base = cfg.get("base_model") or {}
    lines += ["", "## Router", "",
              f"- kind: {cfg.get('router')}", f"- top_k: {top_k}",
              f"- {'one router shared by all layers' if shared else 'one router per layer'} "
              f"({len(cfg.get('sites') or [])} routed sites)",
              f"- router options: {json.dumps(cfg.get('router_options'))}",
              f"- attention LoRA: {att_text}",
              f"- trainable parameters: {cfg.get('trainable_parameters')}", "",
              "## Base model", "",
              f"- class: {base.get('class')}", f"- recorded as: {base.get('path') or base.get('name_or_path')}"]
    if cfg.get("base_weights_sha256"):
        lines += [f"- weights sha256: {', '.join(f'{k} `{v}`' for k, v in cfg['base_weights_sha256'].items())}"]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM", "import loramix", "",
              "model = AutoModelForCausalLM.from_pretrained(\"BASE\")",
              "mixture = loramix.load_mixture(\"THIS_FOLDER\", model)", "```", "",
              "or `loramix evaluate THIS_FOLDER --base BASE --tasks ...`. Each expert is checked against the "
              "sha256 above when it loads.", "",
              f"Saved by loramix {cfg.get('loramix_version')} (format {cfg.get('format_version')}).", ""]
    return "\n".join(lines)


__all__ = ["export_mixture", "model_card"]
