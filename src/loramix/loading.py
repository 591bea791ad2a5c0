"""Loading a base model by name: an HF model folder, or ``default`` for the embedded tiny base.
Every command that takes ``--base`` goes through here."""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.base_model import ensure_base
from loramix.errors import LoramixError
from loramix.io import sha256_file

WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin", "pytorch_model-*-of-*.bin")


def processes():
    """accelerate's ``PartialState``: this process among those ``accelerate launch`` (or torchrun)
    started; one main process otherwise. CPU as ``training_arguments`` and ``TrainingArguments`` decide."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def resolve_base(base: str | Path) -> Path:
    """`default` -> the embedded default base (built on first use; under ``accelerate launch`` by the
    main process alone, the others wait and reuse it); anything else must be a folder holding an HF
    causal LM (config.json) and its tokenizer."""
    if str(base) == "default":
        with processes().main_process_first():
            return ensure_base()
    path = Path(base).expanduser()
    if not path.is_dir():
        raise LoramixError(f"{path}: --base: not a folder (give a model folder or 'default')")
    if not (path / "config.json").is_file():
        raise LoramixError(f"{path}: --base: no config.json; not a Hugging Face model folder")
    if not any(path.glob(p) for p in WEIGHT_PATTERNS):
        raise LoramixError(f"{path}: --base: no model weights (model.safetensors or pytorch_model.bin)")
    return path


def local_or_hub(name_or_path: str | Path, what: str = "--base") -> Path:
    """A local folder as is; a name that is no local path but looks like a Hub id (``owner/name``)
    is downloaded with huggingface_hub's ``snapshot_download`` (cached; honours HF_HUB_OFFLINE)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "~")):
        raise LoramixError(f"{path}: {what}: not found (give a local folder or a Hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text))
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        raise LoramixError(f"{text}: {what}: not a local folder, and the Hub download failed "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def base_fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 of each weights file of a model folder (one entry for an unsharded model)."""
    path = Path(path)
    files = sorted({f for p in WEIGHT_PATTERNS for f in path.glob(p)})
    return {f.name: sha256_file(f) for f in files}


def load_model_and_tokenizer(path: str | Path):
    """`(model, tokenizer)` in float32, eval mode; the tokenizer pads on the left and has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise LoramixError(f"{path}: --base: cannot load model/tokenizer ({str(err).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok



def load_base_model(base: str | Path):
    """``(model, tokenizer)`` for ``--base`` (a folder, or ``default``)."""
    return load_model_and_tokenizer(resolve_base(base))


def load_base(base: str | Path):
    """``(model, tokenizer, path)`` for ``--base``: ``load_base_model`` plus the resolved folder."""
    path = resolve_base(base)
    model, tok = load_model_and_tokenizer(path)
    return model, tok, path
