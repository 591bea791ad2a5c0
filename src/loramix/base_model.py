"""The tiny embedded base model: a character tokenizer, a small Llama, and its CPU pretraining.

`loramix base build` pretrains a ~1.6M-parameter Llama (hidden 256, 2 layers) from scratch on the five
synthetic domains at easy difficulty only, plus a share of mixed two-domain prompts (easy) in the
two-key answer format, so nothing is downloaded from a hub. The result is an ordinary HF model
folder: `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it
like any real model. Pretraining gives the format and the short-problem skills, not the skill at the
medium level where stage-1 experts train and everything is evaluated (longer inputs, more operands,
larger moduli: `tasks/synthetic/`): there the base is weak but not hopeless, which leaves each
domain's expert (LoRA trained by SFT, then GRPO) something of its own to learn.

Design choices:
- Tokenizer: one token per character (printable ASCII, tab, newline) plus `<pad>`, `<bos>`, `<eos>`,
  `<unk>`. It adds no special tokens when encoding, so `tokenizer(prompt)` gives exactly the prompt's
  characters; `padding_side="left"` for batched generation.
- Training sequences are `prompt + reference_completion + <eos>`, right-padded within a batch
  (batches are bucketed by length). The loss is on the completion tokens and the final `<eos>` only.
- The schedule is a fixed number of steps (linear warmup then cosine decay), never a wall-clock
  budget, so the same seed and config give bit-identical weights on the same machine.
- The build is cached under `$LORAMIX_HOME/base/<config-hash>` (`~/.cache/loramix` by default);
  `ensure_base()` builds it on first use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from loramix.errors import LoramixError
from loramix.generation import generate
from loramix.io import atomic_path
from loramix.tasks import SYNTHETIC_TASKS, get_task

# Bump when anything that changes the built weights changes (tokenizer, data, loop).
BUILD_VERSION = 4
META_FILE = "loramix_base.json"

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARS = ("\t", "\n") + tuple(chr(i) for i in range(32, 127))
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIAL_TOKENS)


# --- tokenizer ----------------------------------------------------------------------------------


def build_tokenizer():
    """The character-level tokenizer (a `PreTrainedTokenizerFast`). Encoding adds no special tokens;
    decoding concatenates characters exactly (spaces and newlines round-trip)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    return tok


# --- model config -------------------------------------------------------------------------------


def llama_config(
    hidden: int = 256,
    layers: int = 2,
    *,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
):
    """A `LlamaConfig` for the character vocabulary: tied embeddings, special ids set."""
    from transformers import LlamaConfig

    if heads is None:
        heads = max(1, hidden // 64)
    if hidden % heads:
        raise LoramixError(f"hidden={hidden} is not divisible by heads={heads}")
    if intermediate is None:
        intermediate = int(round(hidden * 2.6875 / 8)) * 8
    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        use_cache=True,
    )


def _generation_config():
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=False, max_new_tokens=256
    )


def _new_model(cfg, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = _generation_config()
    return model


def tiny_random_llama(hidden: int = 64, layers: int = 2, *, heads: int | None = None,
                      intermediate: int | None = None, seed: int = 0):
    """An untrained small Llama with the base tokenizer, built instantly (for tests).
    Returns `(model, tokenizer)`; the model is in eval mode."""
    if heads is None:
        heads = max(1, hidden // 32)
    cfg = llama_config(hidden, layers, heads=heads, intermediate=intermediate or 2 * hidden)
    model = _new_model(cfg, seed).eval()
    return model, build_tokenizer()


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- build config -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseConfig:
    """Everything that determines the built weights (hashed into the cache path)."""

    seed: int = 0
    steps: int = 800
    hidden: int = 256
    layers: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 40  # capped at steps // 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    medium_share: float = 0.0  # share of each domain's pairs at medium (the eval level): 0 keeps it unseen
    mixed_share: float = 0.25  # share of all pairs that are mixed two-domain prompts (easy), for the two-key format
    domains: tuple[str, ...] = field(default_factory=tuple)  # empty = all synthetic domains

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = list(self.domains)
        d["build_version"] = BUILD_VERSION
        d["data_digest"] = _data_digest(self)
        return d

    def hash(self) -> str:
        blob = json.dumps(self.key(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


DEFAULT_CONFIG = BaseConfig()


@functools.lru_cache(maxsize=16)
def _data_digest(config: BaseConfig) -> str:
    """A digest of a sample of the pretraining pairs, part of the cache key: a change to a domain's
    generator or trace gives a new cache path even when no config field or BUILD_VERSION moved."""
    return hashlib.sha256(json.dumps(pretraining_pairs(config, 200)).encode()).hexdigest()[:12]


def loramix_home() -> Path:
    return Path(os.environ.get("LORAMIX_HOME") or Path.home() / ".cache" / "loramix").expanduser()


def default_base_path(config: BaseConfig = DEFAULT_CONFIG) -> Path:
    """`$LORAMIX_HOME/base/<config-hash>` (LORAMIX_HOME defaults to `~/.cache/loramix`)."""
    return loramix_home() / "base" / config.hash()


def is_built(path: str | Path) -> bool:
    path = Path(path)
    return all((path / f).is_file() for f in ("config.json", "tokenizer.json", META_FILE))


# --- data ---------------------------------------------------------------------------------------


Pair = tuple[str, str]  # (prompt, completion)


def _task_pairs(name: str, n: int, seed: int, difficulty: str) -> list[Pair]:
    task = get_task(name)
    exs = task.examples(split="train", n=n, seed=seed, difficulty=difficulty)
    return [(ex.prompt, task.reference_completion(ex)) for ex in exs]


def _domains(config: BaseConfig) -> tuple[str, ...]:
    if config.domains:
        return tuple(config.domains)
    return tuple(SYNTHETIC_TASKS)


def _mixed_pairs(a: str, b: str, n: int, seed: int, difficulty: str) -> list[Pair]:
    from loramix.tasks.mixed import MixedTask

    task = MixedTask(a, b)
    return [(ex.prompt, task.reference_completion(ex))
            for ex in task.examples("train", n, seed=seed, difficulty=difficulty)]


def pretraining_pairs(config: BaseConfig, n: int,
                      source: Callable[[str, int, int, str], list[Pair]] | None = None) -> list[Pair]:
    """`n` deterministic (prompt, completion) pairs from the train split, shuffled by seed:
    `mixed_share` of them mixed two-domain prompts at easy difficulty (an equal share of each
    unordered pair of domains; which part comes first is drawn per example), and the rest an equal
    share of each domain, `medium_share` of those at medium difficulty and the others at easy.

    With the defaults (`medium_share=0`) the base never sees the medium level that experts train
    and are evaluated on: pretraining gives the format and the short-problem skill, not the
    medium-length skill. A custom `source` replaces the single-domain pairs only."""
    source = source or _task_pairs
    domains = _domains(config)
    pairs_of = [(a, b) for i, a in enumerate(domains) for b in domains[i + 1:]]
    n_mixed = int(round(n * config.mixed_share)) if pairs_of else 0
    per = math.ceil((n - n_mixed) / len(domains))
    n_med = int(round(per * config.medium_share))
    pairs: list[Pair] = []
    for i, name in enumerate(domains):
        s = config.seed * 1000 + i
        pairs += source(name, per - n_med, s, "easy")
        if n_med:
            pairs += source(name, n_med, s + 500, "medium")
    if n_mixed:
        per_pair = math.ceil(n_mixed / len(pairs_of))
        mixed: list[Pair] = []
        for j, (a, b) in enumerate(pairs_of):
            mixed += _mixed_pairs(a, b, per_pair, config.seed * 1000 + 700 + j, "easy")
        random.Random(config.seed + 7).shuffle(mixed)
        pairs = pairs[: n - n_mixed] + mixed[:n_mixed]
    random.Random(config.seed).shuffle(pairs)
    return pairs[:n]


def _encode(tok, pairs: Sequence[Pair], max_len: int) -> list[tuple[list[int], int]]:
    """Token ids of prompt + completion + eos, and the prompt length (loss starts there)."""
    prompts = tok([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    comps = tok([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, comps):
        ids = (p + c + [EOS_ID])[:max_len]
        out.append((ids, len(p)))
    return out


def _batches(encoded: list[tuple[list[int], int]], batch_size: int, steps: int, seed: int,
             bucket: int = 4) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`steps` batches; rows grouped by length within chunks of `bucket` batches to cut padding."""
    rng = random.Random(seed + 1)
    order: list[int] = []
    while len(order) < steps * batch_size:
        perm = list(range(len(encoded)))
        rng.shuffle(perm)
        order += perm
    order = order[: steps * batch_size]
    batches: list[list[int]] = []
    chunk = batch_size * bucket
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda j: len(encoded[j][0]))
        group = [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
        rng.shuffle(group)
        batches += group
    for rows in batches:
        width = max(len(encoded[j][0]) for j in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, j in enumerate(rows):
            seq, plen = encoded[j]
            ids[r, : len(seq)] = torch.tensor(seq)
            att[r, : len(seq)] = 1
            labels[r, plen : len(seq)] = ids[r, plen : len(seq)]
        yield ids, att, labels


# --- build --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n or os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _lr_at(step: int, config: BaseConfig) -> float:
    warmup = max(1, min(config.warmup, config.steps // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_base(config: BaseConfig, *, progress: bool = True, threads: int | None = None,
               source: Callable[[str, int, int, str], list[Pair]] | None = None,
               log: Callable[[int, float], None] | None = None):
    """Pretrain a fresh model in memory; returns `(model, tokenizer, stats)`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if config.steps < 1 or config.batch_size < 1:
        raise LoramixError(f"steps and batch_size must be positive (got {config.steps}, {config.batch_size})")
    t0, c0 = time.perf_counter(), time.process_time()
    tok = build_tokenizer()
    cfg = llama_config(config.hidden, config.layers)
    n_pool = min(config.steps * config.batch_size, 40_000)
    pairs = pretraining_pairs(config, max(n_pool, len(_domains(config))), source=source)
    encoded = _encode(tok, pairs, cfg.max_position_embeddings)

    with _threads(threads):
        model = _new_model(cfg, config.seed)
        model.config._attn_implementation = "eager"
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95), eps=1e-8,
        )
        torch.manual_seed(config.seed)
        losses: list[float] = []
        bar = Progress(
            TextColumn("[bold]base build"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not progress, transient=False,
        )
        with bar:
            task_id = bar.add_task("train", total=config.steps, loss=float("nan"))
            for step, (ids, att, labels) in enumerate(_batches(encoded, config.batch_size, config.steps, config.seed)):
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, config)
                out = model(input_ids=ids, attention_mask=att, labels=labels)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                loss = float(out.loss.detach())
                losses.append(loss)
                if log is not None:
                    log(step, loss)
                bar.update(task_id, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
        model.config._attn_implementation = "sdpa"
        model.eval()
    stats = {
        "build_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "threads": max(1, threads or os.cpu_count() or 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "parameters": count_parameters(model),
        "train_examples": len(encoded),
    }
    return model, tok, stats


def build_base(
    out: str | Path,
    *,
    seed: int = DEFAULT_CONFIG.seed,
    steps: int = DEFAULT_CONFIG.steps,
    hidden: int = DEFAULT_CONFIG.hidden,
    layers: int = DEFAULT_CONFIG.layers,
    batch_size: int = DEFAULT_CONFIG.batch_size,
    lr: float = DEFAULT_CONFIG.lr,
    warmup: int = DEFAULT_CONFIG.warmup,
    domains: Sequence[str] = (),
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Pretrain the base model and write it (model + tokenizer + `loramix_base.json`) to `out`
    atomically: the folder appears complete or not at all. Returns `out`."""
    config = BaseConfig(
        seed=seed, steps=steps, hidden=hidden, layers=layers, batch_size=batch_size, lr=lr,
        warmup=warmup,
        domains=tuple(domains),
    )
    return _build(Path(out), config, progress=progress, threads=threads)


def _build(out: Path, config: BaseConfig, *, progress: bool, threads: int | None) -> Path:
    model, tok, stats = train_base(config, progress=progress, threads=threads)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {"config": config.key(), "hash": config.hash(), **stats}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def ensure_base(path: str | Path | None = None, *, config: BaseConfig = DEFAULT_CONFIG,
                progress: bool = True) -> Path:
    """The path of a built base model, building it first if it is missing (cached)."""
    out = Path(path) if path is not None else default_base_path(config)
    if not is_built(out):
        _build(out, config, progress=progress, threads=None)
    return out


def build_or_reuse(out: str | Path | None = None, *, force: bool = False, progress: bool = True,
                   threads: int | None = None, **overrides: Any) -> tuple[Path, bool]:
    """Build the base model with `DEFAULT_CONFIG` changed by `overrides` (BaseConfig fields) into `out`
    (default: the cache path of that config). An existing complete build is reused unless `force`.
    Returns `(path, built_now)`."""
    names = {f.name for f in fields(BaseConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise LoramixError(f"unknown base config field(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
    if "domains" in overrides:
        overrides["domains"] = tuple(overrides["domains"] or ())
    config = replace(DEFAULT_CONFIG, **overrides)
    path = Path(out) if out is not None else default_base_path(config)
    if is_built(path) and not force:
        return path, False
    return _build(path, config, progress=progress, threads=threads), True


def load_base(path: str | Path | None = None):
    """`(model, tokenizer)` from a base folder (default: the cached default build, built if
    missing). The model is in eval mode; the tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_base() if path is None else Path(path)
    if not is_built(path) and not (path / "config.json").is_file():
        raise LoramixError(f"{path}: not a base model folder (no config.json); run `loramix base build`")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return model, tok


def base_info(path: str | Path) -> dict[str, Any]:
    """The build record (`loramix_base.json`) of a base folder."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise LoramixError(f"{path}: no {META_FILE}; not built by `loramix base build`")
    return json.loads(f.read_text())


# --- evaluation ---------------------------------------------------------------------------------


def greedy_completions(model, tok, prompts: Sequence[str], *, batch_size: int = 64,
                       max_new_tokens: int = 256) -> list[str]:
    """Greedy completions of `prompts`, batched with left padding, stopping at `<eos>`."""
    return [c[0].text for c in generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]


__all__ = [
    "BaseConfig", "DEFAULT_CONFIG", "VOCAB", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID",
    "build_tokenizer", "llama_config", "tiny_random_llama", "count_parameters",
    "default_base_path", "loramix_home", "is_built", "pretraining_pairs", "train_base",
    "build_base", "build_or_reuse", "ensure_base", "load_base", "base_info", "greedy_completions",
]
