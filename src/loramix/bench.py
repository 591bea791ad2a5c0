"""Speed benchmark: routed LoRA experts (loramix) against the bare base model, one PEFT LoRA, PEFT X-LoRA
and PEFT Arrow, on one random Llama-shaped model, in one process.

Every method shares the same frozen base weights (the model is copied with its tensors shared), and all
methods are timed *interleaved*: for each workload, after ``warmup`` untimed calls per method, repeat
``repeats`` rounds that each time every method once; the reported time is the median over rounds.

Workloads (batch ``B``, sequence ``S``):

``train``    forward + backward of the LM loss, in ``train()`` mode. Each method back-propagates into its
             own adapter-side parameters: the router for the loramix hard/soft mixtures, the LoRA A/B for
             PEFT single-LoRA, the X-LoRA classifier, the LoRA experts for Arrow (training-free routing,
             so the experts are the only adapter-side tensors), and for ReMix the router (through
             ``log Q``, its RLOO surrogate) plus the experts (``trainable_experts=True``), as ReMix
             trains both. The base floor back-propagates to the input embeddings (no parameter grads),
             so every row includes one activation backward through the whole network.
``prefill``  one no-grad forward over ``B x S`` tokens, ``eval()`` mode.
``decode``   ``generate`` of ``new_tokens`` greedy tokens after a short prompt, KV cache on; X-LoRA
             cannot use a cache (PEFT requires ``use_cache=False``), so its rows are without one
             (``note = "no KV cache"``).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call; on
CPU, the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set
before the call, in the last timed round (the window opens and closes outside the timer). The CPU figure is what the step needed on top of what the
process already held, so memory the allocator kept from an earlier method is not counted again: compare
it between methods with care (it is a lower bound on the step's working set).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

import loramix
from loramix.errors import LoramixError
from loramix.experts import MLP_MODULES
from loramix.io import read_json
from loramix.report import replace_readme_section
from loramix.routers import HardOptions, ReMixOptions

WORKLOADS = ("train", "prefill", "decode")
METHODS_SINGLE = ("base", "peft_lora")
METHODS_PER_E = ("hard", "hard_sparse", "soft", "remix", "xlora", "arrow")
# hard routing with the straight-through gradient on the chosen expert only: the same model as "hard"
# outside training, so it is timed in the train workload only
TRAIN_ONLY = ("hard_sparse",)
REF_EXPERTS = 8


@dataclass(frozen=True)
class BenchSize:
    """Model and workload sizes of one benchmark run."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int
    prompt: int
    new_tokens: int
    experts: tuple[int, ...]  # E for the hard and soft mixtures
    other_experts: tuple[int, ...] | None = None  # E for ReMix, X-LoRA and Arrow (None: the same E)
    rank: int = 16
    repeats: int = 5
    warmup: int = 1
    arch: str = "llama"  # "llama" or "qwen2" (Qwen2 has q/k/v biases)
    tie_embeddings: bool = False
    dtype: str = "float32"  # of the base model, the experts and every adapter
    shape: str | None = None  # the real model whose configuration this is (random weights)


@dataclass(frozen=True)
class ModelShape:
    """A released model's configuration, built with random weights, so that speed is measured at the
    shapes users run and not only at the toy sizes."""

    arch: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool = True


SHAPES: dict[str, ModelShape] = {
    "qwen2.5-0.5b": ModelShape("qwen2", 896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": ModelShape("qwen2", 1536, 8960, 28, 12, 2, 151936),
    "llama-3.2-1b": ModelShape("llama", 2048, 8192, 16, 32, 8, 128256),
    "llama-3.2-3b": ModelShape("llama", 3072, 8192, 28, 24, 8, 128256),
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


SIZES: dict[str, BenchSize] = {
    # The size: Llama-shaped, hidden 768, 4 layers, B 8 x S 256, 64 new tokens; hard and soft at
    # every E, ReMix, X-LoRA and Arrow at E = 8 (X-LoRA decodes without a KV cache: minutes at E = 32).
    "full": BenchSize("full", hidden=768, intermediate=2048, layers=4, heads=12, kv_heads=4, vocab=4096,
                      batch=8, seq=256, prompt=32, new_tokens=64, experts=(2, 4, 8, 16, 32), other_experts=(8,),
                      repeats=3),
    # Every method and workload at a reduced size, E in {2, 8, 32}: a few minutes on 2 CPU cores.
    "quick": BenchSize("quick", hidden=256, intermediate=704, layers=2, heads=4, kv_heads=2, vocab=1024,
                       batch=8, seq=64, prompt=8, new_tokens=8, experts=(2, 8, 32), repeats=3),
    # Smoke test only: seconds.
    "tiny": BenchSize("tiny", hidden=64, intermediate=128, layers=1, heads=4, kv_heads=2, vocab=97,
                      batch=2, seq=16, prompt=4, new_tokens=3, experts=(2,), rank=4, repeats=1, warmup=0),
}


@dataclass
class BenchRow:
    method: str
    experts: int | None
    workload: str
    seconds_median: float
    ratio_vs_peft_lora: float | None = None
    seconds_all: list[float] = field(default_factory=list)
    peak_mem_mib: float | None = None
    note: str = ""


@dataclass
class TargetCheck:
    name: str
    workload: str
    value: float | None
    threshold: float
    comparison: str  # "<=" or ">="
    met: bool | None
    detail: str = ""


@dataclass
class BenchResult:
    rows: list[BenchRow]
    targets: list[TargetCheck]
    meta: dict
    png: Path | None = None

    def to_json(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "targets": [asdict(t) for t in self.targets],
                "meta": self.meta}


# -- model and adapters -------------------------------------------------------------------------


def build_base(size: BenchSize, device: torch.device, seed: int = 0):
    """A random model of ``size``'s architecture, built directly on ``device`` in ``size.dtype`` (a 3B
    model initialised on the host first would cost more than the benchmark)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[size.arch]
    torch.manual_seed(seed)
    cfg = config_cls(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                     num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, vocab_size=size.vocab,
                     max_position_embeddings=max(512, size.seq + size.prompt + size.new_tokens),
                     tie_word_embeddings=size.tie_embeddings, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = model_cls._from_config(cfg, dtype=DTYPES[size.dtype]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def share_copy(model):
    """A structural copy of ``model`` whose parameters and buffers are the same tensors."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def make_expert_folders(base, size: BenchSize, num: int, root: Path, seed: int = 0) -> list[Path]:
    """``num`` ordinary PEFT LoRA folders (r = size.rank on gate/up/down, random non-zero A and B) named
    "0", "1", ... (X-LoRA wants those names)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(share_copy(base), LoraConfig(r=size.rank, lora_alpha=2 * size.rank,
                                                             target_modules=list(MLP_MODULES), lora_dropout=0.0),
                                autocast_adapter_dtype=False)  # experts in the bench's dtype, as the base
    device = next(base.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn where they live: no host round trip
    folders = []
    for i in range(num):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=gen, device=device) / math.sqrt(p.shape[1]))
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen, device=device) * 0.02)
        folder = root / str(i)
        peft_model.save_pretrained(str(folder))
        folders.append(folder)
    return folders


@dataclass
class Method:
    name: str
    experts: int | None
    model: object
    no_cache: bool = False
    embed_grad: bool = False  # base floor: backward into the input embeddings
    surrogate: bool = False  # ReMix: add the mean log Q of the sampled selection to the loss


def build_method(name: str, E: int | None, base, size: BenchSize, folders: list[Path]) -> Method:
    if name == "base":
        return Method(name, None, share_copy(base), embed_grad=True)
    if name == "peft_lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(share_copy(base), str(folders[0]), is_trainable=True,
                                          autocast_adapter_dtype=False)
        return Method(name, None, model)
    chosen = [str(f) for f in folders[:E]]
    if name in ("hard", "soft"):
        return Method(name, E, loramix.compose(share_copy(base), chosen, router=name, seed=0))
    if name == "hard_sparse":
        return Method(name, E, loramix.compose(share_copy(base), chosen, router="hard", seed=0,
                                               router_options=HardOptions(ste="chosen")))
    if name == "remix":
        mix = loramix.compose(share_copy(base), chosen, router="remix", top_k=2, seed=0,
                              router_options=ReMixOptions(rank=size.rank), trainable_experts=True)
        return Method(name, E, mix, surrogate=True)
    if name == "xlora":
        from peft import XLoraConfig, get_peft_model

        model = share_copy(base)
        model.config.use_cache = False
        cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=size.hidden,
                          adapters={str(i): c for i, c in enumerate(chosen)}, xlora_depth=1)
        return Method(name, E, _adapters_in_base_dtype(get_peft_model(model, cfg), base), no_cache=True)
    if name == "arrow":
        from peft import ArrowConfig, create_arrow_model

        model = create_arrow_model(share_copy(base), chosen, ArrowConfig(top_k=min(3, E), rng_seed=0))
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return Method(name, E, _adapters_in_base_dtype(model, base))
    raise LoramixError(f"unknown bench method {name!r}")


def _adapters_in_base_dtype(model, base):
    """PEFT loads adapters in fp32 over a bf16 base (and then computes the LoRA path in fp32): cast its
    LoRA weights to the base's dtype, so every method computes in the bench's dtype."""
    dtype = next(base.parameters()).dtype
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


def adapter_mib(method: Method, base) -> float:
    """Memory of the tensors a method adds to the shared base model (experts, routers, LoRA)."""
    shared = {id(t) for t in list(base.parameters()) + list(base.buffers())}
    seen, total = set(), 0
    m = method.model
    for t in list(m.parameters()) + list(m.buffers()):
        if id(t) in shared or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total / 2**20


# -- workloads ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_call(method: Method, workload: str, ids: torch.Tensor, prompt: torch.Tensor, new_tokens: int) -> Callable[[], None]:
    model = method.model
    if workload == "train":
        params = [p for p in model.parameters() if p.requires_grad]

        def train_step() -> None:
            model.train()
            if method.embed_grad:
                emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                out = model(inputs_embeds=emb, labels=ids)
            else:
                out = model(input_ids=ids, labels=ids)
            loss = out.loss
            if method.surrogate:
                log_q = [s.routing.log_prob for s in model.sites if s.routing is not None
                         and s.routing.log_prob is not None]
                if log_q:
                    loss = loss + torch.stack([q.mean() for q in log_q]).mean()
            loss.backward()
            for p in params:
                p.grad = None
            model.eval()

        return train_step
    if workload == "prefill":

        def prefill() -> None:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

        return prefill
    if workload == "decode":
        mask = torch.ones_like(prompt)

        def decode() -> None:
            with torch.no_grad():
                model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, use_cache=not method.no_cache,
                               pad_token_id=0)

        return decode
    raise LoramixError(f"unknown workload {workload!r}")


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _begin_peak(device: torch.device) -> float | None:
    """Start a peak-memory window (outside the timer); returns the baseline in MiB, None if unsupported."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    return _rss_kib("VmRSS") / 1024


def _end_peak(device: torch.device, before: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - before
    return max(0.0, _rss_kib("VmHWM") / 1024 - before)


def pick_size(quick: bool = False, tiny: bool = False) -> str:
    if quick and tiny:
        raise LoramixError("choose at most one of --quick and --tiny")
    return "tiny" if tiny else "quick" if quick else "full"


def parse_list(text: str | None, kind: type, option: str) -> tuple | None:
    """``"2,8,32"`` -> ``(2, 8, 32)``; None stays None."""
    if not text:
        return None
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise LoramixError(f"{option} must be a comma-separated list of {kind.__name__}, got {text!r}") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise LoramixError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LoramixError("--device cuda: no CUDA device is available")
    return torch.device(device)


# -- the benchmark ------------------------------------------------------------------------------

Key = tuple[str, int | None, str]  # (method, E, workload)


@dataclass
class Timings:
    """What the timed rounds measured: seconds of every call and the last round's peak memory per
    (method, E, workload), and the wall time of each workload's phase."""

    seconds: dict[Key, list[float]] = field(default_factory=dict)
    peaks: dict[Key, float | None] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def run_bench(size: BenchSize | str = "full", device: str = "auto", experts: tuple[int, ...] | None = None,
              methods: tuple[str, ...] | None = None, workloads: tuple[str, ...] = WORKLOADS,
              repeats: int | None = None, batch: int | None = None, json_path: Path | None = None,
              png_path: Path | None = None,
              measure_memory: bool = True, log: Callable[[str], None] | None = None, shape: str | None = None,
              dtype: str | None = None, rank: int | None = None, seq: int | None = None,
              new_tokens: int | None = None, other_experts: tuple[int, ...] | None = None) -> BenchResult:
    """Time every method on every workload; write ``json_path`` and ``png_path`` if given. ``shape`` swaps
    the model for a released model's configuration (random weights); ``dtype``, ``rank``, ``seq`` and
    ``new_tokens`` override the size's; ``other_experts`` gives ReMix, X-LoRA and Arrow their own E."""
    size = resolve_size(size, experts, batch, repeats, shape=shape, dtype=dtype, rank=rank, seq=seq,
                        new_tokens=new_tokens, other_experts=other_experts)
    check_workloads(workloads)
    methods = resolve_methods(methods)
    dev = resolve_device(device)
    log = log or (lambda _msg: None)
    _quiet_libraries()

    t_start = time.perf_counter()
    base = build_base(size, dev)
    ids, prompt = make_inputs(size, dev)
    with tempfile.TemporaryDirectory(prefix="loramix-bench-") as tmp:
        built = build_methods(methods, base, size, Path(tmp))
        setup_s = time.perf_counter() - t_start
        log(f"built {len(built)} models in {setup_s:.1f}s on {dev}")

    timings = Timings()
    for workload in workloads:
        t0 = time.perf_counter()
        time_workload(built, workload, ids, prompt, size, dev, measure_memory, timings)
        timings.phase_seconds[workload] = time.perf_counter() - t0
        log(f"{workload}: {timings.phase_seconds[workload]:.1f}s")

    rows = collect_rows(timings)
    meta = bench_meta(size, dev, base, built, setup_s, timings.phase_seconds)
    meta["command"] = bench_command(size, device, methods, workloads, json_path)
    result = BenchResult(rows, compute_targets(rows, size.experts, size.batch), meta)
    write_result(result, json_path, png_path, t_start)
    return result


def resolve_size(size: BenchSize | str, experts: tuple[int, ...] | None, batch: int | None,
                 repeats: int | None, *, shape: str | None = None, dtype: str | None = None,
                 rank: int | None = None, seq: int | None = None, new_tokens: int | None = None,
                 other_experts: tuple[int, ...] | None = None) -> BenchSize:
    """The named (or given) size with the model shape, expert counts, batch, repeats, dtype, rank,
    sequence length and decode length overridden where given."""
    if isinstance(size, str):
        if size not in SIZES:
            raise LoramixError(f"unknown bench size {size!r}; valid: {', '.join(SIZES)}")
        size = SIZES[size]
    if shape is not None:
        if shape not in SHAPES:
            raise LoramixError(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
        m = SHAPES[shape]
        size = BenchSize(**{**asdict(size), "arch": m.arch, "hidden": m.hidden, "intermediate": m.intermediate,
                            "layers": m.layers, "heads": m.heads, "kv_heads": m.kv_heads, "vocab": m.vocab,
                            "tie_embeddings": m.tie_embeddings, "shape": shape})
    if dtype is not None:
        if dtype not in DTYPES:
            raise LoramixError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        size = BenchSize(**{**asdict(size), "dtype": str(DTYPES[dtype]).removeprefix("torch.")})
    for option, field_name, value in (("--rank", "rank", rank), ("--seq-len", "seq", seq),
                                      ("--new-tokens", "new_tokens", new_tokens)):
        if value is not None:
            if value < 1:
                raise LoramixError(f"{option} must be >= 1, got {value}")
            size = BenchSize(**{**asdict(size), field_name: value})
    if experts:
        if any(e < 1 for e in experts):
            raise LoramixError(f"expert counts must be >= 1, got {list(experts)}")
        size = BenchSize(**{**asdict(size), "experts": tuple(sorted(set(experts))), "other_experts": None})
    if other_experts:
        if any(e < 1 for e in other_experts):
            raise LoramixError(f"--other-experts must be >= 1, got {list(other_experts)}")
        size = BenchSize(**{**asdict(size), "other_experts": tuple(sorted(set(other_experts)))})
    if batch is not None:
        if batch < 1:
            raise LoramixError(f"batch must be >= 1, got {batch}")
        size = BenchSize(**{**asdict(size), "batch": batch})
    if repeats is not None:
        if repeats < 1:
            raise LoramixError(f"repeats must be >= 1, got {repeats}")
        size = BenchSize(**{**asdict(size), "repeats": repeats})
    return size


def check_workloads(workloads: tuple[str, ...]) -> None:
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        raise LoramixError(f"unknown workload(s) {bad}; valid: {', '.join(WORKLOADS)}")


def resolve_methods(methods: tuple[str, ...] | None) -> tuple[str, ...]:
    """The methods to time (default: all), with ``peft_lora`` added first when missing: it is the
    reference of every ratio."""
    all_methods = METHODS_SINGLE + METHODS_PER_E
    methods = tuple(methods or all_methods)
    bad = [m for m in methods if m not in all_methods]
    if bad:
        raise LoramixError(f"unknown method(s) {bad}; valid: {', '.join(all_methods)}")
    if "peft_lora" not in methods:
        methods = ("peft_lora",) + methods  # the reference of every ratio
    return methods


def _quiet_libraries() -> None:
    """No warnings, no hub access, HF logging at error level: the bench prints only its own progress."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


def make_inputs(size: BenchSize, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random token ids: ``batch x seq`` for train and prefill, ``batch x prompt`` for decode."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, size.vocab, (size.batch, size.seq), generator=gen).to(dev)
    prompt = torch.randint(3, size.vocab, (size.batch, size.prompt), generator=gen).to(dev)
    return ids, prompt


def build_methods(methods: tuple[str, ...], base, size: BenchSize, root: Path) -> list[Method]:
    """Expert folders under ``root`` and every method built on ``base``: single-adapter methods once, the
    others once per E (``size.experts`` for hard/soft, ``size.other_experts`` where set for the rest)."""
    folders = make_expert_folders(base, size, max(size.experts + (size.other_experts or ())), root)
    built: list[Method] = []
    for name in methods:
        if name in METHODS_SINGLE:
            built.append(build_method(name, None, base, size, folders))
        else:
            per_e = (size.experts if name in ("hard", "hard_sparse", "soft") or size.other_experts is None
                     else size.other_experts)
            for E in per_e:
                built.append(build_method(name, E, base, size, folders))
    return built


def time_workload(built: list[Method], workload: str, ids: torch.Tensor, prompt: torch.Tensor,
                  size: BenchSize, dev: torch.device, measure_memory: bool, timings: Timings) -> None:
    """Warm-up calls, then ``size.repeats`` interleaved rounds of every method on ``workload`` (peak
    memory in the last round), recorded into ``timings``."""
    calls = [(m, make_call(m, workload, ids, prompt, size.new_tokens)) for m in built
             if workload == "train" or m.name not in TRAIN_ONLY]
    for _ in range(size.warmup):
        for m, call in calls:
            call()
    for rep in range(size.repeats):
        last = rep == size.repeats - 1
        for m, call in calls:  # interleaved: one call of every method per round
            key = (m.name, m.experts, workload)
            seconds, peak = time_call(call, dev, measure_memory and last)
            timings.seconds.setdefault(key, []).append(seconds)
            if peak is not None:
                timings.peaks[key] = peak


def time_call(call: Callable[[], None], dev: torch.device, measure_memory: bool) -> tuple[float, float | None]:
    """Seconds of one call and, when ``measure_memory`` (and supported), its peak memory in MiB; the
    memory window opens and closes outside the timer."""
    mem = _begin_peak(dev) if measure_memory else None
    _sync(dev)
    t = time.perf_counter()
    call()
    _sync(dev)
    seconds = time.perf_counter() - t
    return seconds, (_end_peak(dev, mem) if mem is not None else None)


def collect_rows(timings: Timings) -> list[BenchRow]:
    """One row per (method, E, workload): median seconds, and the ratio to PEFT LoRA's on that workload."""
    rows: list[BenchRow] = []
    for (name, E, workload), ts in timings.seconds.items():
        note = "no KV cache" if workload == "decode" and name == "xlora" else ""
        rows.append(BenchRow(name, E, workload, statistics.median(ts), None, ts,
                             timings.peaks.get((name, E, workload)), note))
    ref = {r.workload: r.seconds_median for r in rows if r.method == "peft_lora"}
    for r in rows:
        r.ratio_vs_peft_lora = r.seconds_median / ref[r.workload] if ref.get(r.workload) else None
    return rows


def bench_command(size: BenchSize, device: str, methods: tuple[str, ...], workloads: tuple[str, ...],
                  json_path: Path | None) -> str:
    """The ``loramix bench`` command line that reproduces a run (every setting that differs from
    the named size's default), for the README line generated from its JSON."""
    default = SIZES[size.name]
    flags = [] if size.name == "full" else [f"--{size.name}"]

    def flag(name: str, value, default_value) -> None:
        if value != default_value and value is not None:
            flags.append(f"--{name} {','.join(map(str, value)) if isinstance(value, tuple) else value}")

    flag("device", device, "auto")
    flag("shape", size.shape, default.shape)
    flag("dtype", size.dtype, default.dtype)
    flag("batch", size.batch, default.batch)
    flag("rank", size.rank, default.rank)
    flag("seq-len", size.seq, default.seq)
    flag("new-tokens", size.new_tokens, default.new_tokens)
    flag("repeats", size.repeats, default.repeats)
    flag("workloads", tuple(workloads), WORKLOADS)
    flag("methods", tuple(methods), resolve_methods(None))
    flag("experts", tuple(size.experts), tuple(default.experts))
    flag("other-experts", size.other_experts and tuple(size.other_experts), default.other_experts)
    flag("json", json_path, None)
    return " ".join(["loramix bench", *flags])


def bench_meta(size: BenchSize, dev: torch.device, base, built: list[Method], setup_s: float,
               phase_s: dict[str, float]) -> dict:
    """The run's ``meta``: sizes, machine, timing and memory method, adapter sizes and phase times."""
    return {
        "size": asdict(size),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "timing": f"interleaved rounds, {size.warmup} warm-up call(s) per method, median of {size.repeats}",
        "peak_memory": ("torch.cuda.max_memory_allocated above the allocation before the call (MiB)"
                        if dev.type == "cuda" else
                        "peak RSS (VmHWM after /proc/self/clear_refs) above the RSS before the call, last timed "
                        "round (MiB); a lower bound on the step's working set"),
        "adapter_mib": {f"{m.name}" + (f"@{m.experts}" if m.experts else ""): round(adapter_mib(m, base), 3)
                        for m in built},
        "train_backward_into": {"base": "input embeddings (no parameters)", "peft_lora": "LoRA A/B",
                                "hard": "router, full straight-through (every expert computed in training)",
                                "hard_sparse": "router, straight-through on the chosen expert only (sparse)",
                                "soft": "router",
                                "remix": "router (log Q surrogate) + experts (trainable_experts)",
                                "xlora": "X-LoRA classifier", "arrow": "LoRA experts (routing is training-free)"},
        "arrow_top_k": "min(3, E)",
        "xlora_decode": "no KV cache (PEFT X-LoRA requires use_cache=False)",
        "setup_seconds": round(setup_s, 2),
        "phase_seconds": {k: round(v, 2) for k, v in phase_s.items()},
    }


def write_result(result: BenchResult, json_path: Path | None, png_path: Path | None, t_start: float) -> None:
    """Write the JSON (before plotting, so it exists even if the plot fails), the plot, then the JSON
    again with ``meta["total_seconds"]``, which is set either way."""
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if png_path is not None:
        result.png = plot_scaling(result.rows, Path(png_path), result.meta)
    result.meta["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")


# -- targets, tables, plot ----------------------------------------------------------------------


def compute_targets(rows: list[BenchRow], experts: tuple[int, ...], batch: int | None = None) -> list[TargetCheck]:
    """The issue's derived checks, for the workloads the run timed. They use E = 8 where measured,
    else the middle E of the run. Decoding at ``batch`` 1 has the tighter limit (1.05)."""
    t = {(r.method, r.experts, r.workload): r.seconds_median for r in rows}
    ref_e = REF_EXPERTS if REF_EXPERTS in experts else sorted(experts)[len(experts) // 2]
    lo, hi = min(experts), max(experts)
    out: list[TargetCheck] = []

    def check(name, workload, value, threshold, comparison, detail):
        met = None if value is None else (value <= threshold if comparison == "<=" else value >= threshold)
        out.append(TargetCheck(name, workload, value, threshold, comparison, met, detail))

    def ratio(a, b):
        return None if a is None or b is None or b <= 0 else a / b

    for w in [w for w in WORKLOADS if any(r.workload == w for r in rows)]:
        # in training, the flat-cost claim is the sparse estimator's; the full one computes every expert
        hname = "hard_sparse" if w == "train" and ("hard_sparse", ref_e, w) in t else "hard"
        base, lora, hard = t.get(("base", None, w)), t.get(("peft_lora", None, w)), t.get((hname, ref_e, w))
        limit, flat = ((1.05 if batch == 1 else 1.08), 1.05) if w == "decode" else (1.10, 1.10)  # "one LoRA's cost"
        check(f"{hname} E={ref_e} vs PEFT LoRA", w, ratio(hard, lora), limit, "<=", "time ratio")
        if hi != lo:
            check(f"{hname} E={hi} vs E={lo} (flat in E)", w, ratio(t.get((hname, hi, w)), t.get((hname, lo, w))),
                  flat, "<=", "time ratio")
        soft = t.get(("soft", ref_e, w))
        ov_hard = None if hard is None or base is None else hard - base
        ov_soft = None if soft is None or base is None else soft - base
        ov_lora = None if lora is None or base is None else lora - base
        if ov_hard is not None and ov_soft is not None:
            value = None if ov_hard <= 0 else ov_soft / ov_hard  # None: hard's overhead is below the noise
            check(f"soft/hard LoRA overhead over base, E={ref_e}", w, value, 2.5, ">=",
                  f"soft +{ov_soft * 1e3:.1f} ms, hard +{ov_hard * 1e3:.1f} ms over base")
        if ov_hard is not None and ov_lora is not None:
            value = None if ov_lora <= 0 else ov_hard / ov_lora  # None: LoRA's overhead is below the noise
            check(f"{hname} E={ref_e} overhead / one-LoRA overhead", w, value, 1.10, "<=",
                  f"{hname} +{ov_hard * 1e3:.1f} ms, LoRA +{ov_lora * 1e3:.1f} ms over base")
        if w == "prefill":
            check(f"X-LoRA / hard time, E={ref_e}", w, ratio(t.get(("xlora", ref_e, w)), hard), 4.0, ">=",
                  "speed-up of hard over X-LoRA")
    return out


def load_result(path: str | Path) -> BenchResult:
    """A ``BenchResult`` back from the JSON ``run_bench`` wrote."""
    path = Path(path)
    data = read_json(path)
    try:
        rows = [BenchRow(**r) for r in data["rows"]]
        meta = dict(data.get("meta", {}))
        size = meta.get("size") or {}
        # recomputed from the rows, so that every table applies the current thresholds
        targets = (compute_targets(rows, tuple(size["experts"]), size.get("batch")) if size.get("experts")
                   else [TargetCheck(**t) for t in data.get("targets", [])])
    except (KeyError, TypeError) as e:
        raise LoramixError(f"{path}: not a loramix bench JSON ({e})") from None
    return BenchResult(rows, targets, meta)


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def readme_markers(json_path: str | Path) -> tuple[str, str]:
    """The README section of one bench JSON, ``<!-- bench:STEM:start -->`` ... ``end`` (several runs,
    several tables); a README without it gets the plain bench section."""
    stem = Path(json_path).stem
    return f"<!-- bench:{stem}:start -->", f"<!-- bench:{stem}:end -->"


def update_readme(result: BenchResult, json_path: str | Path, readme: str | Path = "README.md") -> Path:
    """Replace the README's section for ``json_path`` (``readme_markers``) with ``result``'s tables."""
    meta, size = result.meta, result.meta.get("size", {})
    where = (f"{meta.get('device', '?')} ({meta.get('device_name', '?')}, {meta.get('threads', '?')} threads), "
             f"torch {meta.get('torch', '?')}")
    phases = meta.get("phase_seconds") or dict.fromkeys(WORKLOADS)
    model = (f"{size.get('shape')} shapes (random weights)" if size.get("shape") else "Llama-shaped") + \
        f", hidden {size.get('hidden')}, {size.get('layers')} layers, {size.get('dtype', 'float32')}"
    work = [f"{w} at batch {size.get('batch')} x seq {size.get('seq')}" for w in ("train", "prefill") if w in phases]
    if "decode" in phases:
        work.append(f"decode {size.get('new_tokens')} new tokens at batch {size.get('batch')}")
    command = meta.get("command") or (f"loramix bench{'' if size.get('name') == 'full' else ' --' + str(size.get('name'))}"
                                      f" --json {json_path}")
    body = (f"\n_Generated by `loramix bench --from-json {json_path} --readme {readme}` from `{json_path}`, "
            f"measured by `{command}` on {where}: {model}, LoRA r={size.get('rank')} on gate/up/down; "
            f"{'; '.join(work)}; {meta.get('timing', '')}; {meta.get('total_seconds', '?')} s in all. "
            f"Times in seconds, ratios against PEFT single-LoRA._\n\n" + markdown_tables(result) + "\n")
    return replace_readme_section(readme, README_START, README_END, body, prefer=readme_markers(json_path))


def _fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def markdown_tables(result: BenchResult) -> str:
    rows = result.rows
    workloads = [w for w in WORKLOADS if any(r.workload == w for r in rows)]
    by = {(r.method, r.experts, r.workload): r for r in rows}
    keys = list(dict.fromkeys((r.method, r.experts) for r in rows))
    head = ["method", "E"]
    for w in workloads:
        head += [f"{w} s", f"{w} ×LoRA"]
    adapter = result.meta.get("adapter_mib", {})
    head += ["adapter MiB", "peak MiB " + "/".join(workloads), "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, E in keys:
        cells = [name, "-" if E is None else str(E)]
        peaks, notes = [], set()
        for w in workloads:
            r = by.get((name, E, w))
            cells += [_fmt(r.seconds_median if r else None, ".4f"), _fmt(r.ratio_vs_peft_lora if r else None, ".2f")]
            peaks.append(_fmt(r.peak_mem_mib if r else None, ".0f"))
            if r and r.note:
                notes.add(f"{w}: {r.note}")
        mib = adapter.get(name + (f"@{E}" if E else ""))
        cells += [_fmt(mib, ".1f"), "/".join(peaks), "; ".join(sorted(notes))]
        lines.append("| " + " | ".join(cells) + " |")
    t_lines = ["| target | workload | value | threshold | met | detail |", "|---|---|---|---|---|---|"]
    for c in result.targets:
        met = "n/a" if c.met is None else ("met" if c.met else "NOT met")
        t_lines.append(f"| {c.name} | {c.workload} | {_fmt(c.value, '.2f')} | {c.comparison} {c.threshold} | {met} | {c.detail} |")
    return "\n".join(lines) + "\n\n" + "\n".join(t_lines)


def plot_scaling(rows: list[BenchRow], path: Path, meta: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if any(r.workload == w for r in rows)]
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 3.6), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        for method, style in (("hard", "o-"), ("hard_sparse", "o--"), ("soft", "s-"), ("remix", "^--")):
            pts = sorted((r.experts, r.seconds_median) for r in rows if r.method == method and r.workload == w)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method)
        for method, color in (("base", "gray"), ("peft_lora", "black")):
            ref = [r.seconds_median for r in rows if r.method == method and r.workload == w]
            if ref:
                ax.axhline(ref[0], color=color, linestyle=":", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("experts E")
        ax.set_ylabel("seconds (median)")
        ax.set_title(w)
        ax.legend(fontsize=7)
    size = meta.get("size", {})
    fig.suptitle(f"loramix routed LoRA: time vs E ({meta.get('device')}, {size.get('shape') or 'hidden ' + str(size.get('hidden'))}, "
                 f"{size.get('layers')} layers, {size.get('dtype', 'float32')}, r={size.get('rank')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
