"""Baselines: PEFT merges, the multi-task LoRA, the prompt-level router, oracle mixtures, X-LoRA and Arrow."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import make_adapter
from safetensors.torch import load_file
from transformers import TrainerCallback

import loramix
from loramix.errors import LoramixError
from loramix.evaluate import evaluate_model, load_for_eval
from loramix.baselines.merges import MERGE_INFO, MERGED_ADAPTER, merge_experts
from loramix.baselines.oracle import make_oracle_mixture, recorded_expert_for_task
from loramix.baselines.peft_mixtures import (
    BASELINE_FILE,
    XLORA_DEFAULTS,
    XLORA_WEIGHTS,
    _xlora_classifier,
    _xlora_model,
    baseline_kind,
    build_arrow,
    load_baseline,
)
from loramix.baselines.prompt_router import (
    has_prompt_router,
    load_prompt_router,
    prompt_features,
    prompt_router_hook,
    route_prompts,
)
from loramix.generation import generate
from loramix.train.multitask import MultitaskConfig, train_multitask
from loramix.train.prompt_router import build_prompt_router
from loramix.train.xlora import build_xlora

TASKS = ("add", "sort", "mod")


def _completion(answer: str) -> str:
    return f"<think>{answer}</think>\n{{\"answer\": \"{answer}\"}}"


def _synthetic_rows(n: int, seed: int) -> list[dict]:
    """Prompts of three easy tasks, each starting with its own tag."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = TASKS[i % 3]
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        if task == "add":
            prompt, ans = f"add: {a}+{b}\n", str(a + b)
        elif task == "sort":
            xs = [rng.randint(0, 99) for _ in range(4)]
            prompt, ans = "sort: " + " ".join(map(str, xs)) + "\n", " ".join(map(str, sorted(xs)))
        else:
            prompt, ans = f"mod: {a}%{b}\n", str(a % b)
        rows.append({"prompt": prompt, "completion": _completion(ans), "task": task, "expert_index": TASKS.index(task)})
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from loramix.base_model import tiny_random_llama

    root = tmp_path_factory.mktemp("baselines")
    model, tok = tiny_random_llama(hidden=64, layers=2)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    experts = [make_adapter(model, root / f"e{i}", r=4, alpha=8, seed=30 + i) for i in range(3)]
    traces = root / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in _synthetic_rows(120, seed=0)))
    return root, str(root / "base"), experts, traces


def _logits(model, tok, text="add: 12+30\n"):
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits


# --- merges ---------------------------------------------------------------------------------------


def test_cat_merge_equals_the_soft_mixture_with_the_same_fixed_weights(setup, tmp_path):
    _, base, experts, _ = setup
    w = [0.5, 0.3, 0.2]
    out = merge_experts(base, experts, "cat", tmp_path / "cat", weights=w)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / MERGED_ADAPTER).exists()
    model, tok, kind = load_for_eval(out)  # the recorded base path is used
    assert kind == "peft"
    from loramix.loading import load_base_model

    base_model, _ = load_base_model(base)
    mix = loramix.compose(base_model, experts, router="soft")
    with mix.fixed_weights(torch.tensor(w)):
        ref = _logits(mix, tok)
    torch.testing.assert_close(_logits(model, tok), ref, atol=1e-5, rtol=0)
    assert loramix.load_expert(out, load_base_model(base)[0]).modules  # a valid expert folder too


def test_cat_merge_of_mixed_ranks_and_rslora_matches_the_mixture(setup, tmp_path):
    """The first expert uses rsLoRA (PEFT would copy that flag into the merged config) and the ranks differ."""
    _, base, experts, _ = setup
    from transformers import AutoModelForCausalLM

    from loramix.loading import load_base_model

    rs = make_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "rs", r=8, alpha=6, seed=7, use_rslora=True)
    folders = [rs, experts[0]]
    out = merge_experts(base, folders, "cat", tmp_path / "cat2")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 12 and not cfg["use_rslora"]
    model, tok, _ = load_for_eval(out, base)
    mix = loramix.compose(load_base_model(base)[0], folders, router="soft")
    with mix.fixed_weights(torch.tensor([0.5, 0.5])):
        torch.testing.assert_close(_logits(model, tok), _logits(mix, tok), atol=1e-5, rtol=0)


def test_linear_merge_holds_peft_combination_of_factors(setup, tmp_path):
    _, base, experts, _ = setup
    w = [0.2, 0.3, 0.5]
    out = merge_experts(base, experts, "linear", tmp_path / "lin", weights=w)
    merged = load_file(str(out / "adapter_model.safetensors"))
    srcs = [load_file(f"{e}/adapter_model.safetensors") for e in experts]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 4
    scale = 8 / 4
    for key in ("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
                "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"):
        want = sum((wi * scale) ** 0.5 * s[key] for wi, s in zip(w, srcs))
        torch.testing.assert_close(merged[key], want, atol=1e-6, rtol=1e-6)
    info = json.loads((out / MERGE_INFO).read_text())
    assert info["combination_type"] == "linear" and info["weights"] == w


def test_linear_merge_of_unequal_ranks_is_refused(setup, tmp_path):
    _, base, experts, _ = setup
    from transformers import AutoModelForCausalLM

    odd = make_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "r8", r=8, alpha=8, seed=5)
    with pytest.raises(LoramixError, match="equal rank"):
        merge_experts(base, experts[:1] + [odd], "linear", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(LoramixError, match="unknown merge method"):
        merge_experts(base, experts, "svd2", tmp_path / "bad")


def test_ties_and_dare_are_loadable_and_dare_is_seeded(setup, tmp_path):
    _, base, experts, _ = setup
    ties = merge_experts(base, experts, "ties", tmp_path / "ties", density=0.5)
    d1 = merge_experts(base, experts, "dare", tmp_path / "d1", density=0.5, seed=3)
    d2 = merge_experts(base, experts, "dare", tmp_path / "d2", density=0.5, seed=3)
    d3 = merge_experts(base, experts, "dare_linear", tmp_path / "d3", density=0.5, seed=4)
    a, b = load_file(str(d1 / "adapter_model.safetensors")), load_file(str(d2 / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for folder in (ties, d1, d3):
        model, tok, kind = load_for_eval(folder, base)
        assert kind == "peft" and torch.isfinite(_logits(model, tok)).all()


# --- multi-task LoRA ------------------------------------------------------------------------------


class _Interrupt(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_multitask_lora_lowers_its_loss_resumes_and_is_a_peft_folder(setup, tmp_path):
    _, base, _, traces = setup
    cfg = MultitaskConfig(base=base, traces=str(traces), out=str(tmp_path / "mt"), rank=4, alpha=8, steps=20,
                          batch_size=4, learning_rate=1e-2, logging_steps=2, save_steps=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_multitask(cfg, callbacks=[_Interrupt(10)])
    assert (tmp_path / "mt.partial" / "checkpoint-8").is_dir() and not (tmp_path / "mt").exists()
    out = train_multitask(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-8"
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert metrics["loss_curve"][-1]["step"] == 20 and losses[-1] < losses[0]
    # gate/up: 64 -> 128, down: 128 -> 64; r = 4; 2 layers
    assert metrics["trainable_parameters"] == 2 * 4 * ((64 + 128) * 3)
    assert metrics["train_seconds"] > 0
    from transformers import AutoModelForCausalLM

    expert = loramix.load_expert(out, AutoModelForCausalLM.from_pretrained(base))
    assert len(expert.modules) == 6 and {w.rank for w in expert.modules.values()} == {4}
    assert not (tmp_path / "mt.partial").exists()
    assert train_multitask(cfg) == out  # a finished run is kept
    with pytest.raises(LoramixError, match="another config"):
        train_multitask(MultitaskConfig(**{**cfg.__dict__, "rank": 2}))


# --- prompt router --------------------------------------------------------------------------------


def test_prompt_router_separates_tagged_tasks_and_routes_generation(setup, tmp_path):
    _, base, experts, traces = setup
    out = build_prompt_router(base, experts, tmp_path / "pr", traces=traces, steps=200)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_heldout"] >= 15 and metrics["heldout_accuracy"] > 0.9
    mixture, tok, kind = load_for_eval(out, base)
    assert kind == "mixture" and has_prompt_router(out)
    router = load_prompt_router(out)
    assert router.labels == sorted(TASKS) and dict(zip(router.labels, router.experts)) == {"add": 0, "mod": 2, "sort": 1}
    held = _synthetic_rows(30, seed=99)
    assert route_prompts(mixture, tok, [r["prompt"] for r in held], router) == [r["expert_index"] for r in held]
    # features through the mixture (experts off) equal the bare base model's
    from loramix.loading import load_base_model

    bare, _ = load_base_model(base)
    prompts = [r["prompt"] for r in held[:4]]
    torch.testing.assert_close(prompt_features(mixture, tok, prompts), prompt_features(bare, tok, prompts))
    # the evaluate contract: a before_batch hook around generate equals oracle routing here
    prompts = [r["prompt"] for r in held[:6]]
    got = generate(mixture, tok, prompts, max_new_tokens=4, batch_size=3,
                   before_batch=prompt_router_hook(mixture, tok, prompts, router))
    for p, r, c in zip(prompts, held, got):
        with mixture.force_expert(r["expert_index"]):
            assert generate(mixture, tok, [p], max_new_tokens=4)[0][0].text == c[0].text


def test_fair_prompt_router_keeps_the_mixture_and_routes_per_sequence(setup, tmp_path):
    """The fair prompt-level baseline is the token-level mixture (attention LoRA included) with one
    decision per sequence from the classifier: generation equals that mixture forced to the
    classifier's expert."""
    from loramix.loading import load_base_model
    from loramix.mixture import compose

    _, base, experts, traces = setup
    model, _ = load_base_model(base)
    hard = compose(model, experts, router="hard", attention_lora_rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in hard.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)  # a trained-looking router and attention LoRA
    hard.save_pretrained(tmp_path / "hard")
    out = build_prompt_router(base, experts, tmp_path / "fair", traces=traces, steps=200, mixture=tmp_path / "hard")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_accuracy"] > 0.9 and metrics["mixture"] == str(tmp_path / "hard")
    assert metrics["trainable_parameters"] > metrics["classifier_parameters"]
    fair, tok, kind = load_for_eval(out, base)
    source, _, _ = load_for_eval(tmp_path / "hard", base)
    assert kind == "mixture" and fair.mixture_config.attention_lora_rank == 4
    for (n1, p1), (n2, p2) in zip(fair.named_parameters(), source.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    held = _synthetic_rows(6, seed=7)
    prompts = [r["prompt"] for r in held]
    router = load_prompt_router(out)
    assert route_prompts(fair, tok, prompts, router) == [r["expert_index"] for r in held]
    got = generate(fair, tok, prompts, max_new_tokens=4, batch_size=3,
                   before_batch=prompt_router_hook(fair, tok, prompts, router))
    plain = build_prompt_router(base, experts, tmp_path / "plain", traces=traces, steps=200)
    plain_model, _, _ = load_for_eval(plain, base)
    differs = 0
    for p, r, c in zip(prompts, held, got):
        with source.force_expert(r["expert_index"]):
            assert generate(source, tok, [p], max_new_tokens=4)[0][0].text == c[0].text
        with plain_model.force_expert(r["expert_index"]):
            differs += generate(plain_model, tok, [p], max_new_tokens=4)[0][0].text != c[0].text
    assert differs  # the attention LoRA matters: the plain prompt router is another model
    with pytest.raises(LoramixError, match="differ from the ones given"):
        build_prompt_router(base, experts[::-1], tmp_path / "bad", traces=traces, steps=5, mixture=tmp_path / "hard")


# --- oracle ---------------------------------------------------------------------------------------


def test_oracle_mixture_names_experts_after_tasks(setup, tmp_path):
    _, base, experts, _ = setup
    out = make_oracle_mixture(base, experts, ["add", "sort", "mod"], tmp_path / "oracle")
    assert recorded_expert_for_task(out) == {"add": 0, "sort": 1, "mod": 2}
    mixture, tok, kind = load_for_eval(out, base)
    assert kind == "mixture" and mixture.expert_names == ["add", "sort", "mod"]
    report = evaluate_model(mixture, tok, ["sort", "mod"], n=2, max_new_tokens=3, routing="oracle")
    assert report.config["expert_for_task"] == {"sort": 1, "mod": 2}
    with pytest.raises(LoramixError, match="one task per expert"):
        make_oracle_mixture(base, experts, ["add"], tmp_path / "bad")


# --- X-LoRA and Arrow -----------------------------------------------------------------------------


def test_xlora_trains_its_classifier_and_reloads(setup, tmp_path):
    _, base, experts, traces = setup
    out = build_xlora(base, experts, tmp_path / "xlora", traces=traces, steps=3, batch_size=4,
                      learning_rate=1e-2, progress=False)
    recipe = json.loads((out / BASELINE_FILE).read_text())
    assert recipe["kind"] == "xlora" and recipe["trained"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] > 0 and metrics["loss_curve"]
    model, tok = load_baseline(out)
    saved = load_file(str(out / XLORA_WEIGHTS))
    live = _xlora_classifier(model).state_dict()
    assert all(torch.equal(saved[k], live[k]) for k in saved)
    from loramix.loading import load_base_model

    fresh = _xlora_classifier(_xlora_model(load_base_model(base)[0], experts, XLORA_DEFAULTS, seed=0))
    assert any(not torch.equal(saved[k], v) for k, v in fresh.state_dict().items())  # the classifier trained
    assert torch.isfinite(_logits(model, tok)).all()
    again, _ = load_baseline(out)
    torch.testing.assert_close(_logits(again, tok), _logits(model, tok))
    got = generate(model, tok, ["add: 1+2\n", "sort: 3 1\n"], max_new_tokens=4)
    assert len(got) == 2 and all(c[0].tokens <= 4 for c in got)
    assert evaluate_model(model, tok, ["add"], n=2, max_new_tokens=3).per_task["add"]["n"] == 2


def test_arrow_forwards_and_generates(setup, tmp_path):
    _, base, experts, _ = setup
    out = build_arrow(base, experts, tmp_path / "arrow", top_k=2)
    assert baseline_kind(out) == "arrow"
    model, tok = load_baseline(out)
    assert torch.isfinite(_logits(model, tok)).all()
    got = generate(model, tok, ["add: 1+2\n", "mod: 7%3\n"], max_new_tokens=4)
    assert len(got) == 2
    assert evaluate_model(model, tok, ["mod"], n=2, max_new_tokens=3).per_task["mod"]["n"] == 2


# --- the commands ---------------------------------------------------------------------------------


def test_commands_are_thin_wrappers(setup, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    _, base, experts, _ = setup
    runner = CliRunner()
    r = runner.invoke(app, ["merge", "--base", base, "--experts", ",".join(experts), "--method", "ties",
                            "--weights", "1,1,1", "--density", "0.7", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "m" / MERGE_INFO).read_text())
    assert info["weights"] == [1.0, 1.0, 1.0] and info["density"] == 0.7
    r = runner.invoke(app, ["oracle-mixture", "--base", base, "--experts", experts[0], "--experts", experts[1],
                            "--tasks", "add,sort", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert recorded_expert_for_task(tmp_path / "o") == {"add": 0, "sort": 1}
    r = runner.invoke(app, ["build-arrow", "--base", base, "--experts", ",".join(experts), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    for cmd in ("train-multitask", "train-prompt-router", "build-xlora"):
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0
