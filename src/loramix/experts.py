"""Frozen LoRA experts read from ordinary PEFT adapter folders, checked against the base model, and
stacked per target module so routed compute needs no loop over tokens.

An expert keeps its own rank and scale (``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with
``use_rslora``), honouring PEFT's ``rank_pattern`` and ``alpha_pattern``. Experts may cover different
modules: an expert that lacks a module contributes nothing there (its slot is zero).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from loramix.errors import AdapterError, LoramixError
from loramix.io import sha256_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")  # where experts live by default (MoR-LoRA, ReMix)
_PREFIX = "base_model.model."


@dataclass
class LoraWeights:
    """One expert's LoRA on one module: ``delta(x) = scale * B @ A @ x``."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass
class Expert:
    """A frozen LoRA expert: its folder, PEFT config and per-module weights."""

    name: str
    path: Path | None
    config: dict
    modules: dict[str, LoraWeights]  # full module name in the base model -> weights
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> digest

    @property
    def num_parameters(self) -> int:
        return sum(w.A.numel() + w.B.numel() for w in self.modules.values())


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rule: a pattern key matches a module name that ends with it (on a dot boundary)."""
    from peft.utils.other import get_pattern_key

    if not pattern:
        return default
    key = get_pattern_key(list(pattern), module)
    return pattern.get(key, default)


def _read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise AdapterError(folder, "folder", "not found")
    if not cfg_path.is_file():
        raise AdapterError(folder, CONFIG_NAME, "missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(folder, CONFIG_NAME, f"not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(folder, CONFIG_NAME, "must hold a JSON object")
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(folder, "peft_type", f"is {cfg.get('peft_type')!r}; only LORA adapters can be experts")
    for key in ("use_dora", "lora_bias"):
        if cfg.get(key):
            raise AdapterError(folder, key, "is set; loramix experts support plain LoRA only")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(folder, "fan_in_fan_out", "is set; only nn.Linear targets are supported")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise AdapterError(folder, key, f"must be a positive number, got {cfg.get(key)!r}")
    return cfg


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(folder, WEIGHTS_NAME, "missing (only safetensors adapters are supported)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(folder, WEIGHTS_NAME, f"corrupt or truncated ({err})") from None


def load_expert(folder: str | Path, model: nn.Module, name: str | None = None) -> Expert:
    """Read one PEFT LoRA folder and check it against ``model`` (the bare HF model, not a PeftModel).

    Raises ``AdapterError`` naming the folder and the key for: a non-LoRA type, a missing or corrupt
    file, a module the base model lacks or of another architecture, a shape that does not fit, or
    non-finite weights.
    """
    folder = Path(folder)
    cfg = _read_config(folder)
    arch = (cfg.get("auto_mapping") or {}).get("base_model_class")
    model_arch = type(model).__name__
    if arch and model_arch.endswith("ForCausalLM") and arch != model_arch:
        raise AdapterError(folder, "auto_mapping.base_model_class", f"is {arch}, but the base model is {model_arch}")
    tensors = _read_weights(folder)
    base_modules = dict(model.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if stem.endswith(suffix):
                pairs.setdefault(stem[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise AdapterError(folder, key, "is not a lora_A/lora_B weight; unsupported adapter content")
    modules: dict[str, LoraWeights] = {}
    for module_name, ab in sorted(pairs.items()):
        for part in ("A", "B"):
            if part not in ab:
                raise AdapterError(folder, f"{_PREFIX}{module_name}.lora_{part}.weight", "missing")
        A, B = ab["A"], ab["B"]
        key_a = f"{_PREFIX}{module_name}.lora_A.weight"
        base = base_modules.get(module_name)
        base = getattr(base, "base_layer", base)  # tolerate a model that already holds PEFT layers
        if base is None:
            raise AdapterError(folder, key_a, f"module {module_name!r} is not in the base model {model_arch} (another architecture?)")
        if not isinstance(base, nn.Linear):
            raise AdapterError(folder, key_a, f"module {module_name!r} is a {type(base).__name__}, not a Linear")
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise AdapterError(folder, key_a, f"lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not form a LoRA pair")
        if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
            raise AdapterError(
                folder, key_a,
                f"shape A{tuple(A.shape)} B{tuple(B.shape)} does not fit {module_name} "
                f"(in={base.in_features}, out={base.out_features})",
            )
        for part, t in (("A", A), ("B", B)):
            if not torch.isfinite(t).all():
                raise AdapterError(folder, f"{_PREFIX}{module_name}.lora_{part}.weight", "holds NaN or Inf values")
        r = A.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module_name, cfg["lora_alpha"]))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        modules[module_name] = LoraWeights(A.float(), B.float(), scale)
    if not modules:
        raise AdapterError(folder, WEIGHTS_NAME, "holds no LoRA weights")
    return Expert(name or folder.name, folder, cfg, modules, expert_digests(folder))


def _zero_delta(expert: Expert) -> bool:
    return all(not bool(w.B.any()) for w in expert.modules.values())


def load_experts(folders, model: nn.Module, names=None) -> list[Expert]:
    """Load several experts; refuse duplicates (the same weights twice) and name clashes."""
    folders = [Path(f) for f in folders]
    names = list(names) if names is not None else [f.name for f in folders]
    if len(names) != len(folders):
        raise LoramixError(f"got {len(folders)} expert folders but {len(names)} names")
    experts = [load_expert(f, model, n) for f, n in zip(folders, names)]
    seen: dict[str, Path | None] = {}
    for e in experts:
        digest = e.sha256[WEIGHTS_NAME]
        if digest in seen:
            why = ("; both are zero deltas (every lora_B is 0): the adapter never moved from its "
                   "initialisation, e.g. GRPO whose completions all got the same reward") if _zero_delta(e) else ""
            raise AdapterError(e.path, WEIGHTS_NAME, f"duplicate expert: same weights as {seen[digest]}{why}")
        seen[digest] = e.path
    if len(set(names)) != len(names):
        raise LoramixError(f"expert names must be unique, got {names}")
    return experts


def adapter_folders(folders) -> list[Path]:
    """The expert folders as paths; refuses an empty list or a folder without ``adapter_config.json``."""
    paths = [Path(f) for f in folders]
    if not paths:
        raise LoramixError("no experts given (--experts DIR ...)")
    for p in paths:
        if not (p / CONFIG_NAME).is_file():
            raise LoramixError(f"{p}: not a PEFT adapter folder (no {CONFIG_NAME})")
    return paths


def expert_digests(folder: str | Path) -> dict[str, str]:
    """The sha256 of an expert folder's config and weights, as a saved mixture records them."""
    folder = Path(folder)
    return {f: sha256_file(folder / f) for f in (CONFIG_NAME, WEIGHTS_NAME) if (folder / f).is_file()}


class ExpertNotFoundError(LoramixError):
    """A saved mixture (or baseline) names an expert file that is not there: moved or deleted, not
    changed. The cure is to say where it went (``--experts-dir`` / ``experts_dir=``)."""


class ExpertChangedError(LoramixError):
    """An expert file is there but its sha256 differs from the one recorded at save time."""


def check_expert_digests(folder: str | Path, recorded: dict[str, str], recorded_in: str, accept_changed: bool = False,
                         hint: str = "", name: str | None = None) -> None:
    """Refuse an expert folder whose files differ from the digests ``recorded`` (in ``recorded_in``)
    when a mixture or baseline was saved, unless ``accept_changed``. A missing file is an
    ``ExpertNotFoundError`` (even with ``accept_changed``), a different one an ``ExpertChangedError``."""
    for fname in recorded:
        f = Path(folder) / fname
        if not f.is_file():
            raise ExpertNotFoundError(f"expert {name or Path(folder).name} not found at {f} (recorded in {recorded_in}); "
                                      "pass --experts-dir DIR (experts_dir= in Python) naming a folder that holds it")
    if accept_changed:
        return
    for fname, digest in recorded.items():
        f = Path(folder) / fname
        if sha256_file(f) != digest:
            raise ExpertChangedError(f"{f}: sha256 differs from the one recorded in {recorded_in}; the expert changed "
                                     f"since it was saved" + (f" ({hint})" if hint else ""))


def find_expert(experts_dir: str | Path, names: list[str], digests: dict[str, str]) -> Path | None:
    """The folder under ``experts_dir`` that holds a saved expert: the first subfolder named one of
    ``names`` whose files match ``digests``, else any adapter folder below whose weights' sha256
    matches (a renamed folder), else a name match that differs (so the caller reports it as
    changed), else None."""
    root = Path(experts_dir).expanduser()
    if not root.is_dir():
        raise LoramixError(f"{root}: --experts-dir: not a folder")
    named = [root / n for n in dict.fromkeys(names) if n and (root / n / CONFIG_NAME).is_file()]

    def matches(folder: Path) -> bool:
        return all((folder / f).is_file() and sha256_file(folder / f) == d for f, d in digests.items())

    for folder in named:
        if matches(folder):
            return folder
    weights_digest = digests.get(WEIGHTS_NAME)
    if weights_digest:
        for w in sorted(root.rglob(WEIGHTS_NAME)):
            folder = w.parent
            if folder not in named and (folder / CONFIG_NAME).is_file() and sha256_file(w) == weights_digest:
                return folder
    return named[0] if named else None


@dataclass
class StackedLora:
    """All experts' LoRA weights for one module, zero-padded to the largest rank.

    A: [E, rmax, in], B: [E, out, rmax], scale: [E] (0 where an expert lacks the module),
    ranks: each expert's own rank (0 where absent), so the hard path can slice away the padding.
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: torch.Tensor
    ranks: list[int]


def stack_module(experts: list[Expert], module: str, in_features: int, out_features: int) -> StackedLora:
    ranks = [e.modules[module].rank if module in e.modules else 0 for e in experts]
    rmax = max(ranks)
    A = torch.zeros(len(experts), rmax, in_features)
    B = torch.zeros(len(experts), out_features, rmax)
    scale = torch.zeros(len(experts))
    for i, e in enumerate(experts):
        w = e.modules.get(module)
        if w is not None:
            A[i, : w.rank] = w.A
            B[i, :, : w.rank] = w.B
            scale[i] = w.scale
    return StackedLora(A, B, scale, ranks)
