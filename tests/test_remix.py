"""ReMix training: the RLOO estimator against exact enumeration, fresh experts, gradient separation,
and short training runs (ReMix and the MixLoRA-style top-k baseline) on a tiny random Llama."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import replace

import pytest
import torch

from loramix.errors import LoramixError
from loramix.mixture import compose, load_mixture
from loramix.routers import ReMixOptions, ReMixRouter, selection_log_prob
from loramix.train.data import read_traces
from loramix.train.remix import (ReMixConfig, build_mixture, effective_sample_size, fit_remix, fresh_experts,
                                 rloo_surrogate, sequence_losses, train_remix)

# --- the estimator ------------------------------------------------------------------------------

T, E, K, M = 3, 4, 2, 4  # tokens, experts, k, RLOO samples


def _toy_loss(idx, w, c):
    """A fixed differentiable, non-additive loss of a selection: idx [..., T, K], w [..., E] -> [...]."""
    lead = idx.shape[:-2]
    wsel = torch.gather(w[..., None, :].expand(*lead, T, E), -1, idx)
    csel = torch.gather(c.expand(*lead, T, E), -1, idx)
    z = (wsel * csel).sum((-1, -2))
    return (z - 1.0) ** 2 + 0.5 * z


def _exact_gradient(theta0, w0, c):
    """grad of E_J[L(J)] w.r.t. (router logits, loss params), enumerating every ordered draw of
    every token with its without-replacement probability Q."""
    theta, w = theta0.clone().requires_grad_(), w0.clone().requires_grad_()
    pairs = torch.tensor(list(itertools.permutations(range(E), K)))
    combos = torch.tensor(list(itertools.product(range(len(pairs)), repeat=T)))
    idx = pairs[combos]  # [all draws, T, K]
    log_q = selection_log_prob(theta.softmax(-1).expand(len(idx), T, E), idx).sum(-1)
    assert float(log_q.exp().sum().detach()) == pytest.approx(1.0, abs=1e-5)
    gt, gw = torch.autograd.grad((log_q.exp() * _toy_loss(idx, w, c)).sum(), (theta, w))
    return torch.cat([gt.flatten(), gw])


def _rloo_estimates(surrogate, theta0, w0, c, groups=50, per_group=40):
    """``groups`` independent means of ``per_group`` RLOO estimates (batches of M samples each),
    sampled by the ReMix router itself (Gumbel-top-k) and reduced by ``surrogate``."""
    router = ReMixRouter(1, E, K, rank=1).train()
    th = theta0.repeat(groups, 1, 1).requires_grad_()
    ww = w0.repeat(groups, 1).requires_grad_()
    logits = th[:, None, None].expand(groups, per_group, M, T, E)
    r = router.select(logits, logits.softmax(-1))
    losses = _toy_loss(r.indices, ww[:, None, None].expand(groups, per_group, M, E), c)  # [G, B, M]
    log_q = r.log_prob.sum(-1)  # over tokens
    total = sum(surrogate(losses[g].T, log_q[g].T) for g in range(groups))  # each group: [M, B]
    gt, gw = torch.autograd.grad(total, (th, ww))
    return torch.cat([gt.reshape(groups, -1), gw], 1)


def test_rloo_is_unbiased_against_exact_enumeration():
    g = torch.Generator().manual_seed(0)
    theta0, c, w0 = torch.randn(T, E, generator=g) * 0.8, torch.randn(T, E, generator=g), torch.randn(E, generator=g)
    exact = _exact_gradient(theta0, w0, c)
    torch.manual_seed(1)
    est = _rloo_estimates(rloo_surrogate, theta0, w0, c)  # 2,000 batches of M=4
    mean, se = est.mean(0), est.std(0) / est.shape[0] ** 0.5
    z = (mean - exact) / se
    assert z.abs().max() < 4.5, f"RLOO biased: z-scores {z}"
    assert (mean - exact).norm() / exact.norm() < 0.05

    def rloo_wrong_scale(losses, log_q):  # 1/M instead of 1/(M-1): biased by (M-1)/M
        adv = (losses - losses.mean(0, keepdim=True)).detach()
        s = (adv * log_q).sum(0) / losses.shape[0]
        return losses.mean() + (s - s.detach()).mean()

    torch.manual_seed(1)
    bad = _rloo_estimates(rloo_wrong_scale, theta0, w0, c)
    assert ((bad.mean(0) - exact) / (bad.std(0) / bad.shape[0] ** 0.5)).abs().max() > 6  # the test has power


def test_rloo_surrogate_value_and_checks():
    losses = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    log_q = torch.zeros(2, 2, requires_grad=True)
    out = rloo_surrogate(losses, log_q)
    assert float(out.detach()) == pytest.approx(float(losses.mean().detach()))
    gl, gq = torch.autograd.grad(out, (losses, log_q))
    assert torch.allclose(gl, torch.full((2, 2), 0.25))
    # per sequence: adv = L - mean over its own M samples, times 1/(M-1), averaged over B
    assert torch.allclose(gq, torch.tensor([[-1.0, -1.5], [1.0, 1.5]]) / 2)
    with pytest.raises(LoramixError):
        rloo_surrogate(losses[:1], log_q[:1])
    with pytest.raises(LoramixError):
        rloo_surrogate(losses, log_q[:, :1])


def test_effective_sample_size():
    assert float(effective_sample_size(torch.full((8,), 1 / 8))) == pytest.approx(8.0)
    assert float(effective_sample_size(torch.tensor([1.0, 0, 0, 0]))) == pytest.approx(1.0)


# --- experts and gradient paths -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from loramix.base_model import tiny_random_llama

    return tiny_random_llama(hidden=32, layers=2)


def test_fresh_experts_shapes_and_zero_b(tiny):
    model, _ = copy.deepcopy(tiny[0]), tiny[1]
    experts = fresh_experts(model, 3, 4, seed=0)
    assert [e.name for e in experts] == ["remix_0", "remix_1", "remix_2"]
    mods = dict(model.named_modules())
    assert len(experts[0].modules) == 2 * 3
    for name, lw in experts[0].modules.items():
        assert name.rpartition(".")[2] in ("gate_proj", "up_proj", "down_proj")
        assert lw.A.shape == (4, mods[name].in_features) and lw.B.shape == (mods[name].out_features, 4)
        assert lw.scale == 1.0 and torch.count_nonzero(lw.B) == 0 and lw.A.abs().max() > 0
        assert lw.A.abs().max() <= 1 / mods[name].in_features ** 0.5 + 1e-6  # kaiming-uniform(a=sqrt 5)
    assert not torch.equal(experts[0].modules[name].A, experts[1].modules[name].A)
    again = fresh_experts(copy.deepcopy(tiny[0]), 3, 4, seed=0)
    assert torch.equal(again[2].modules[name].A, experts[2].modules[name].A)  # seeded
    ids = torch.randint(4, 100, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        mix = compose(model, experts, router="remix", top_k=2, shared_router=False,
                      router_options=ReMixOptions(rank=4), trainable_experts=True).train()
        assert torch.equal(mix(input_ids=ids).logits, ref)  # B = 0: starts equal to the base


def _with_nonzero_experts(mix, std: float):
    """``mix`` with random B factors (fresh experts start at B = 0, a zero delta)."""
    with torch.no_grad():
        for n, p in mix.named_parameters():
            if "expert_Bt" in n:
                p.normal_(0, std)
    return mix


def test_gradient_paths_are_separated(tiny):
    """Routers get no gradient through the LoRA path; LoRAs get none from log Q (detached input)."""
    cfg = ReMixConfig(traces=None, tasks=("x",), n_experts=4, top_k=2, rank=4)
    mix = _with_nonzero_experts(build_mixture(copy.deepcopy(tiny[0]), cfg).train(), 0.5)
    ids = torch.randint(4, 100, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    out = mix(input_ids=ids)
    seq = sequence_losses(out.logits, labels)
    log_q = sum(s.routing.log_prob.sum() for s in mix.sites)
    routers = [p for n, p in mix.named_parameters() if n.startswith("routers.")]
    experts = [p for n, p in mix.named_parameters() if ".expert_" in n]
    assert all(g is None for g in torch.autograd.grad(seq.sum(), routers, retain_graph=True, allow_unused=True))
    assert all(g is not None for g in torch.autograd.grad(seq.sum(), experts, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(log_q, experts, retain_graph=True, allow_unused=True))
    assert all(g is not None for g in torch.autograd.grad(log_q, routers, allow_unused=True))


# --- training runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("remix")
    model, tok = tiny
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    with open(root / "traces.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"q{i}: ", "completion": f"abc{i} xyz{i}"}) + "\n")
    base = ReMixConfig(out=root / "out", base=str(root / "base"), traces=root / "traces.jsonl", n_experts=4, top_k=2,
                       rank=4, samples=4, steps=20, batch_size=4, learning_rate=3e-2, logging_steps=1, save_steps=100,
                       warmup_steps=0, threads=1)
    return root, base


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_train_remix_learns_saves_and_reloads(setup):
    from transformers import AutoModelForCausalLM

    root, base = setup
    cfg = replace(base, out=root / "remix")
    init = build_mixture(AutoModelForCausalLM.from_pretrained(cfg.base), cfg)
    out, mix = fit_remix(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log if "loss" in h]
    assert len(losses) == 20 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    ess = [h["ess_mean"] for h in log if "ess_mean" in h]
    assert len(ess) == 20 and all(1.0 <= v <= 4.0 + 1e-6 for v in ess)
    assert set(metrics["ess"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert metrics["trainable_parameters"] == mix.trainable_parameters() > 0 and metrics["steps"] == 20
    assert metrics["config"]["router"] == "remix" and metrics["train_seconds"] > 0
    before, after = dict(init.named_parameters()), dict(mix.named_parameters())
    for name, p in after.items():
        if name.startswith("routers."):
            assert not torch.allclose(p, before[name]), name  # RLOO moved the routers
        if ".expert_Bt" in name:
            assert p.abs().max() > 0, name  # the LoRAs learned
    assert not (root / "remix.partial").exists()
    restored = load_mixture(out, AutoModelForCausalLM.from_pretrained(cfg.base)).eval()
    ids = torch.randint(4, 100, (2, 16))
    mix.eval()
    assert torch.equal(_logits(restored, ids), _logits(mix, ids))  # top-k in eval: deterministic
    assert not torch.allclose(_logits(restored, ids), _logits(AutoModelForCausalLM.from_pretrained(cfg.base), ids))
    assert fit_remix(cfg) == (out, None)  # complete: a no-op


def test_topk_baseline_runs(setup):
    root, base = setup
    out = train_remix(replace(base, out=root / "topk", router="topk", steps=4))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["config"]["router"] == "topk"
    cfg = json.loads((out / "mixture_config.json").read_text())
    assert cfg["router"] == "topk" and cfg["top_k"] == 2 and cfg["shared_router"] is False


def test_resume_from_checkpoint(setup):
    root, base = setup
    cfg = replace(base, out=root / "resume", steps=4, save_steps=2, keep_checkpoints=True, samples=2)
    train_remix(cfg)
    assert (root / "resume.partial" / "checkpoint-4").is_dir()
    import shutil

    shutil.rmtree(root / "resume")
    train_remix(replace(cfg, steps=6, keep_checkpoints=False))
    metrics = json.loads((root / "resume" / "metrics.json").read_text())
    assert metrics["resumed"] and metrics["steps"] == 6
    assert not (root / "resume.partial").exists()


def test_config_and_data_errors(setup, tmp_path):
    root, base = setup
    for bad in (dict(top_k=5), dict(samples=1), dict(router="dense"), dict(traces=None), dict(logq_tokens="x"),
                dict(logq="bag")):
        with pytest.raises(LoramixError):
            replace(base, **bad).validate()
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a"}\n')
    with pytest.raises(LoramixError, match="line 1: field 'completion' missing"):
        read_traces(f)
    assert read_traces(root / "traces.jsonl")[0] == {"prompt": "q0: ", "completion": "abc0 xyz0"}


# --- issue 13: set log Q, the trainable soft mixture, ESS logging, the chunked loss ---------------


def test_set_log_prob_is_the_sum_over_orders_and_a_distribution():
    probs = torch.tensor([0.5, 0.2, 0.2, 0.1])
    sets = list(itertools.combinations(range(4), 2))
    idx = torch.tensor(sets)
    log_set = selection_log_prob(probs.expand(len(sets), 4), idx, unordered=True)
    ordered = selection_log_prob(probs.expand(len(sets), 4), idx).exp()
    flipped = selection_log_prob(probs.expand(len(sets), 4), idx.flip(-1)).exp()
    assert torch.allclose(log_set.exp(), ordered + flipped)  # Q(i,j) + Q(j,i)
    assert float(log_set.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    router = ReMixRouter(1, 4, 3, rank=1, logq="set").train()
    logits = torch.randn(5, 4)
    r = router.select(logits, logits.softmax(-1))
    assert torch.allclose(r.log_prob, selection_log_prob(logits.softmax(-1), r.indices.flip(-1), unordered=True))
    with pytest.raises(LoramixError, match="logq"):
        ReMixOptions(logq="bag")


def _softcapped_gemma():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=97, max_position_embeddings=64,
                       final_logit_softcapping=3.0, pad_token_id=0)
    return Gemma2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_chunked_loss_equals_full_loss_and_gradients(tiny, arch):
    from loramix.train.remix import chunked_sequence_losses, final_hidden_states

    model = copy.deepcopy(tiny[0]) if arch == "llama" else _softcapped_gemma()
    mix = build_mixture(model, ReMixConfig(tasks=("x",), router="topk", n_experts=4, top_k=2, rank=4)).train()
    mix = _with_nonzero_experts(mix, 0.3)
    ids = torch.randint(4, 90, (6, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[4, :] = -100  # a row without labelled tokens
    params = [p for p in mix.parameters() if p.requires_grad]

    full = sequence_losses(mix(input_ids=ids).logits, labels)
    g_full = torch.autograd.grad(full.sum(), params)
    with final_hidden_states(mix) as head:
        hidden = mix(input_ids=ids).logits
    assert hidden.shape[-1] == mix.config.hidden_size  # the hidden states, not the logits
    chunked = chunked_sequence_losses(hidden, head, labels, chunk_tokens=24)  # 2 rows per chunk
    g_chunked = torch.autograd.grad(chunked.sum(), params)
    assert torch.allclose(chunked, full, atol=1e-6) and float(chunked[4].detach()) == 0.0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_chunked, g_full))
    assert mix(input_ids=ids).logits.shape[-1] == mix.config.vocab_size  # the head is back after the block
    if arch == "gemma2":
        assert mix.config.final_logit_softcapping == 3.0


def test_soft_trainable_mixture_trains_and_logs_ess(setup):
    root, base = setup
    out = train_remix(replace(base, out=root / "soft", router="soft", steps=4))
    cfg = json.loads((out / "mixture_config.json").read_text())
    assert cfg["router"] == "soft" and cfg["top_k"] == 4 and cfg["shared_router"] is False
    log = [h for h in json.loads((out / "train_log.json").read_text()) if "loss" in h]
    assert len(log) == 4
    for h in log:
        assert 1.0 <= h["ess_worst"] <= h["ess_mean"] <= 4.0 + 1e-6
        assert 1.0 <= h["ess_q_token_worst"] <= h["ess_q_token"] <= 4.0 + 1e-6
        assert h["ess_token"] == pytest.approx(h["ess_q_token"], abs=1e-3)  # soft: the weights are q


def test_chunked_loss_peak_memory_grows_sublinearly_in_samples():
    """A 32k vocabulary, 2 sequences x M samples x 128 tokens (benchmarks/remix_loss_memory.py): the
    full loss holds M*256*32k logits (and their softmax and gradient); the chunked one holds one
    256-token chunk at a time."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "remix_loss_memory.py"
    spec = importlib.util.spec_from_file_location("remix_loss_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    full2, full8 = bench.measure(2, "full"), bench.measure(8, "full")
    chunk2, chunk8 = bench.measure(2, "chunked"), bench.measure(8, "chunked")
    assert full8 > 3.0 * full2  # the unchunked loss: linear in M (the check can see it)
    assert chunk8 < 1.5 * chunk2  # chunked: sub-linear
    assert chunk8 < 0.3 * full8
