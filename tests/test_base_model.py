"""The tiny base model: tokenizer, config, a very short build, reload, reproducibility, generate."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from loramix import base_model as bm
from loramix.errors import LoramixError

TINY = dict(steps=4, hidden=32, layers=1, batch_size=4)


def test_tokenizer_round_trips_every_printable_char_and_newline():
    tok = bm.build_tokenizer()
    text = string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    text = text + "  two  spaces\n\nblank line\n  indented {\"answer\": \"4 2\"}\t</think>\n"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no special tokens added
    assert bm.BOS_ID not in ids and bm.EOS_ID not in ids and bm.UNK_ID not in ids
    assert tok.decode(ids) == text
    for ch in text:
        assert tok.decode(tok(ch)["input_ids"]) == ch
    assert tok.decode([bm.BOS_ID] + tok("a b\n")["input_ids"] + [bm.EOS_ID, bm.PAD_ID], skip_special_tokens=True) == "a b\n"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (bm.PAD_ID, bm.BOS_ID, bm.EOS_ID)
    assert tok.padding_side == "left"
    assert len(tok) == len(bm.VOCAB) <= 110


def test_default_config_parameter_count_in_range():
    from transformers import LlamaForCausalLM

    d = bm.DEFAULT_CONFIG
    cfg = bm.llama_config(d.hidden, d.layers)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    n = bm.count_parameters(model)
    assert 1_000_000 <= n <= 10_000_000, n
    assert cfg.tie_word_embeddings and cfg.vocab_size == len(bm.VOCAB)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (bm.BOS_ID, bm.EOS_ID, bm.PAD_ID)


def test_cache_path_follows_home_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAMIX_HOME", str(tmp_path))
    p = bm.default_base_path()
    assert p.parent == tmp_path / "base"
    assert bm.default_base_path(bm.BaseConfig(seed=1)) != p
    assert bm.default_base_path(bm.BaseConfig()) == p
    assert not bm.is_built(p)


def test_lr_schedule_warms_up_and_decays():
    cfg = bm.BaseConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [bm._lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_pretraining_pairs_are_deterministic_and_train_only():
    cfg = bm.BaseConfig(seed=3)
    a = bm.pretraining_pairs(cfg, 40)
    b = bm.pretraining_pairs(cfg, 40)
    assert a == b and len(a) == 40
    assert all(isinstance(p, str) and isinstance(c, str) and c for p, c in a)


def test_pretraining_pairs_mix_easy_domains_and_mixed_prompts():
    """By default the base sees each domain at easy only (never the medium eval level) and a
    `mixed_share` of two-domain prompts in the two-key format."""
    from loramix.tasks.synthetic import split_of

    cfg = bm.BaseConfig()
    assert cfg.medium_share == 0 and 0 < cfg.mixed_share < 0.5
    pairs = bm.pretraining_pairs(cfg, 1000)
    mixed = [(p, c) for p, c in pairs if "\nkeys: " in p]
    assert abs(len(mixed) - 1000 * cfg.mixed_share) <= 1
    for p, c in mixed:
        first, second, keys = p.splitlines()
        a, b = first.split(":")[0], second.split(":")[0]
        assert a != b and keys == f"keys: {a}_answer {b}_answer"
        assert f'"{a}_answer": ' in c and f'"{b}_answer": ' in c and ";" in c
    single = [p for p, _ in pairs if "\nkeys: " not in p]
    for p in single:  # easy sizes only: add 2-3 digits, strings 3-5 letters
        assert split_of(p) == "train"
        body = p.split(": ", 1)[1].strip()
        if p.startswith("add: "):
            assert max(len(x) for x in body.split("+")) <= 3, p
        if p.startswith("strings: "):
            assert len(body.split()[1]) <= 5, p
    none = bm.pretraining_pairs(bm.BaseConfig(mixed_share=0.0), 200)
    assert not [p for p, _ in none if "\nkeys: " in p]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "model"
    assert bm.build_base(out, seed=0, progress=False, **TINY) == out
    return out


def test_short_build_reloads_with_auto_classes(tiny_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert bm.is_built(tiny_build)
    assert not [p for p in tiny_build.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    model = AutoModelForCausalLM.from_pretrained(tiny_build)
    tok = AutoTokenizer.from_pretrained(tiny_build)
    assert model.config.model_type == "llama" and model.config.hidden_size == TINY["hidden"]
    assert tok.decode(tok("x = 1\n y")["input_ids"]) == "x = 1\n y"
    assert tok.pad_token_id == bm.PAD_ID and tok.padding_side == "left"
    assert model.generation_config.eos_token_id == bm.EOS_ID
    assert model.generation_config.pad_token_id == bm.PAD_ID
    info = bm.base_info(tiny_build)
    assert info["config"]["steps"] == TINY["steps"] and info["parameters"] == bm.count_parameters(model)
    m2, t2 = bm.load_base(tiny_build)
    assert not m2.training and t2.padding_side == "left"


def test_same_seed_gives_identical_weights(tiny_build):
    from transformers import AutoModelForCausalLM

    cfg = bm.BaseConfig(seed=0, warmup=bm.DEFAULT_CONFIG.warmup, **TINY)
    again, _, _ = bm.train_base(cfg, progress=False)
    saved = AutoModelForCausalLM.from_pretrained(tiny_build).state_dict()
    fresh = again.state_dict()
    assert saved.keys() == fresh.keys()
    for k in saved:
        assert torch.equal(saved[k], fresh[k]), k
    other, _, _ = bm.train_base(bm.BaseConfig(seed=1, **TINY), progress=False)
    assert not torch.equal(other.state_dict()["model.embed_tokens.weight"], fresh["model.embed_tokens.weight"])


def test_ensure_base_reuses_a_complete_build(tiny_build, monkeypatch):
    monkeypatch.setattr(bm, "_build", lambda *a, **k: pytest.fail("rebuilt an existing build"))
    assert bm.ensure_base(tiny_build) == tiny_build
    path, built = bm.build_or_reuse(tiny_build, **TINY)
    assert path == tiny_build and not built


def test_build_or_reuse_rejects_unknown_fields(tmp_path):
    with pytest.raises(LoramixError, match="unknown base config field"):
        bm.build_or_reuse(tmp_path / "x", hiden=3)


def test_generate_with_left_padding_matches_unpadded():
    model, tok = bm.tiny_random_llama(hidden=64, layers=2)
    assert 10_000 < bm.count_parameters(model) < 500_000
    prompts = ["Add: 1+2\n", "Sort the numbers: 3 1 2\n", "x"]
    batch = bm.greedy_completions(model, tok, prompts, batch_size=8, max_new_tokens=6)
    single = [bm.greedy_completions(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batch == single
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["input_ids"][2, 0].item() == bm.PAD_ID and enc["attention_mask"][2, 0].item() == 0
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (3, enc["input_ids"].shape[1] + 4)


def test_lora_on_mlp_projections_works():
    from peft import LoraConfig, get_peft_model

    model, tok = bm.tiny_random_llama()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"]))
    enc = tok(["ab", "c"], return_tensors="pt", padding=True)
    out = peft_model(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_cli_base_path(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    monkeypatch.setenv("LORAMIX_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["base", "path"])
    assert res.exit_code == 0, res.output
    assert "not built" in res.output and str(tmp_path) in res.output.replace("\n", "")


def test_cache_key_follows_the_pretraining_data(monkeypatch):
    """A change to a domain's generator changes the base's cache path, with no field bumped."""
    import loramix.base_model as bm

    config = bm.BaseConfig(steps=3)
    before = config.hash()
    assert bm.BaseConfig(steps=3).hash() == before  # deterministic
    real = bm._task_pairs
    monkeypatch.setattr(bm, "_task_pairs", lambda name, n, seed, difficulty: [
        (p, c.replace("</think>", " </think>")) for p, c in real(name, n, seed, difficulty)])
    bm._data_digest.cache_clear()
    try:
        assert config.hash() != before
    finally:
        monkeypatch.undo()
        bm._data_digest.cache_clear()
    assert config.hash() == before
