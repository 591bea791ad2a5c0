"""Shared fixtures: tiny random models (hidden 64) and PEFT adapters made from them, built once."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
import warnings

import pytest
import torch

# The tests never read or write the user's cache (~/.cache/loramix): LORAMIX_HOME is a fresh, empty
# folder for the whole run, set before any loramix import and whatever the caller set (a warm cache
# must not hide a test that builds the default base), removed at the end. Test helpers run as
# subprocesses (which import this file too) inherit LORAMIX_TEST_HOME and reuse the run's folder.
TEST_HOME = os.environ.get("LORAMIX_TEST_HOME", "")
OWN_TEST_HOME = not os.path.isdir(TEST_HOME)
if OWN_TEST_HOME:
    TEST_HOME = tempfile.mkdtemp(prefix="loramix-test-home-")
    os.environ["LORAMIX_TEST_HOME"] = TEST_HOME
    atexit.register(shutil.rmtree, TEST_HOME, True)
os.environ["LORAMIX_HOME"] = TEST_HOME
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torch_dtype.*")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))

MLP = ["gate_proj", "up_proj", "down_proj"]


def pytest_sessionfinish(session, exitstatus):
    if OWN_TEST_HOME:
        shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _never_build_the_default_base():
    """Building the embedded default base pretrains for minutes: a test that reaches it (``--base
    default``, ``resolve_base("default")``, ``ensure_base()``) fails at once instead. Tests build a
    tiny base (``saved_tiny_base``, ``memorised_base``) or a short ``build_base`` of their own."""
    from loramix import base_model

    build = base_model._build

    def guarded(out, config, **kwargs):
        if config == base_model.DEFAULT_CONFIG:
            pytest.fail(f"a test started building the full default base into {out}; use a tiny base", pytrace=True)
        return build(out, config, **kwargs)

    base_model._build = guarded
    yield
    base_model._build = build


def tiny_model(arch: str = "llama", hidden: int = 64, layers: int = 2, vocab: int = 97, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                  max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    return model.eval()


def make_adapter(model, folder, r: int, alpha: float, targets=MLP, seed: int = 0, **kw):
    """A PEFT LoRA adapter with random (non-zero) A and B, saved as an ordinary PEFT folder."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **kw))
    with torch.no_grad():  # make deltas large enough that a wrong expert is obvious
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(str(folder))
    return str(folder)


def adapter_set(model, root):
    """Three experts of ranks 2, 4, 8; the second uses rsLoRA and the third lacks down_proj."""
    return [
        make_adapter(model, root / "e0", r=2, alpha=4, seed=10),
        make_adapter(model, root / "e1", r=4, alpha=6, seed=11, use_rslora=True),
        make_adapter(model, root / "e2", r=8, alpha=8, targets=["gate_proj", "up_proj"], seed=12),
    ]


def lora_stack(E, din, dout, ranks, gen):
    """Stacked LoRA factors for ``E`` experts of the given ranks (zero-padded to the largest): A
    ``(E, rmax, din)``, B ``(E, dout, rmax)`` and per-expert scales (0 for rank-0 experts)."""
    rmax = max(ranks)
    A = torch.zeros(E, rmax, din)
    B = torch.zeros(E, dout, rmax)
    for e, r in enumerate(ranks):
        if r:
            A[e, :r] = torch.randn(r, din, generator=gen)
            B[e, :, :r] = torch.randn(dout, r, generator=gen)
    scale = torch.tensor([0.5 + e for e in range(E)], dtype=torch.float32) * torch.tensor([r > 0 for r in ranks])
    return A, B, scale


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def arch_setup(request, tmp_path_factory):
    model = tiny_model(request.param)
    root = tmp_path_factory.mktemp(f"adapters_{request.param}")
    return request.param, model, adapter_set(model, root)


@pytest.fixture(scope="session")
def llama_setup(tmp_path_factory):
    model = tiny_model("llama")
    root = tmp_path_factory.mktemp("adapters_llama")
    return model, adapter_set(model, root)


@pytest.fixture
def fresh(llama_setup):
    """A fresh copy of the tiny Llama and its three adapter folders."""
    model, paths = llama_setup
    return copy.deepcopy(model), paths


def saved_tiny_base(root, hidden: int = 32, layers: int = 2):
    """A tiny random Llama and its tokenizer, saved under ``root / "base"``; returns (model, tokenizer)."""
    from loramix.base_model import tiny_random_llama

    model, tok = tiny_random_llama(hidden=hidden, layers=layers)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return model, tok


def addition_traces(path, a_values: int, b_values: int, **extra):
    """``add: a+b=`` prompt/completion trace rows (plus ``extra`` fields) for a < a_values, b < b_values,
    written as JSONL to ``path``; returns ``path``."""
    import json

    rows = [{"prompt": f"add: {a}+{b}=", "completion": f"<think>{a + b}</think>\n{{\"answer\": \"{a + b}\"}}",
             **extra} for a in range(a_values) for b in range(b_values)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def memorised_base(folder, tasks=("add",), n: int = 4, difficulty: str = "easy", steps: int = 150,
                   hidden: int = 64):
    """A tiny Llama (with the loramix tokenizer) trained to reproduce the reference completions of
    the first ``n`` train prompts of each task, saved at ``folder``: real models whose greedy
    answers on those prompts are correct, so distillation and evaluation have something to find."""
    from loramix.base_model import tiny_random_llama
    from loramix.tasks import get_task

    model, tok = tiny_random_llama(hidden=hidden, layers=2)
    texts = []
    for name in tasks:
        task = get_task(name)
        texts += [ex.prompt + task.reference_completion(ex) + tok.eos_token
                  for ex in task.examples("train", n, seed=0, difficulty=difficulty)]
    tok.padding_side = "right"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    tok.padding_side = "left"
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def digits_task(task_name: str):
    """A registered-able test task whose reward varies across random completions (the share of digit
    characters), so a few GRPO steps on an untrained model get non-zero advantages; ``is_correct``
    accepts anything, so distillation keeps every finished generation."""
    import random

    from loramix.tasks import Example, Task

    class DigitsTask(Task):
        name = task_name
        kind = "user"
        description = "test task: reward = share of digits"

        def examples(self, split="train", n=None, *, seed=0, difficulty="hard"):
            rng = random.Random(f"{split}|{seed}|{difficulty}")
            out = []
            for _ in range(16 if n is None else n):
                a = rng.randint(0, 999)
                out.append(Example(f"digits: {a}\n", str(a % 10), f"{a}%10={a % 10}", self.name))
            return out

        def reward(self, completion, ex):
            return sum(c.isdigit() for c in completion) / max(1, len(completion))

        def is_correct(self, completion, ex):
            return True

    return DigitsTask


# A Qwen-style chat template (ChatML): the markers are plain text to the character tokenizer and
# special tokens to `bpe_chat_tokenizer`.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(template: str = CHAT_TEMPLATE):
    """The tiny base's character tokenizer with a chat template."""
    from loramix.base_model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = template
    return tok


def bpe_chat_tokenizer(texts, vocab_size: int = 600, template: str = CHAT_TEMPLATE):
    """A real-shaped (Qwen2-like) tokenizer: byte-level BPE trained on ``texts``, so it encodes any
    text, with ``<|endoftext|>`` as pad, ``<|im_end|>`` as eos (what an Instruct model ends its turn
    with), ``<|im_start|>`` special, and ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"], padding_side="left",
                                  clean_up_tokenization_spaces=False, model_max_length=4096)
    tok.chat_template = template
    return tok
