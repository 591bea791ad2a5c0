"""The mixture against its oracles: PEFT with one adapter active, PEFT's "cat" merge, per-token
forced experts, and save/load round trips."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from peft import PeftModel

import loramix
from loramix.errors import LoramixError
from loramix.mixture import RoutedLinear


def ids(batch=3, seq=9, vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=g)


def peft_with_all(model, paths):
    pm = PeftModel.from_pretrained(copy.deepcopy(model), paths[0], adapter_name="0")
    for i, p in enumerate(paths[1:], start=1):
        pm.load_adapter(p, adapter_name=str(i))
    return pm.eval()


@torch.no_grad()
def test_forced_expert_matches_peft_adapter(arch_setup):
    arch, model, paths = arch_setup
    mix = loramix.compose(copy.deepcopy(model), paths, router="hard").eval()
    x = ids()
    base_logits = model(input_ids=x).logits
    for i, path in enumerate(paths):
        with mix.force_expert(i):
            ours = mix(input_ids=x).logits
        ref = PeftModel.from_pretrained(copy.deepcopy(model), path).eval()(input_ids=x).logits
        assert (ours - ref).abs().max().item() < 1e-5, (arch, i)
        assert (ours - base_logits).abs().max().item() > 1e-2  # the expert really acts


# LORAMIX_TEST_DEVICE (cpu or cuda; default cpu) and LORAMIX_TEST_DTYPE (comma-separated float32,
# bfloat16; default float32) move the next test to an accelerator (benchmarks/gpu_check.sh).
TEST_DTYPES = [getattr(torch, d.strip()) for d in os.environ.get("LORAMIX_TEST_DTYPE", "float32").split(",")]


@pytest.mark.parametrize("dtype", TEST_DTYPES, ids=str)
@torch.no_grad()
def test_forced_expert_matches_peft_on_test_device(arch_setup, dtype):
    """Forced expert i against PEFT with adapter i, both on the test device in ``dtype``, and both
    against PEFT in fp32 on the host: in fp32 they agree to rounding; in bf16 the mixture's error is at
    most twice PEFT's own bf16 error (plus a little), and far below the expert's effect on the logits."""
    dev = torch.device(os.environ.get("LORAMIX_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("LORAMIX_TEST_DEVICE=cuda but no CUDA device is available")
    arch, model, paths = arch_setup
    x = ids()
    base_ref = model(input_ids=x).logits.double()
    on_dev = copy.deepcopy(model).to(dev, dtype)
    mix = loramix.compose(copy.deepcopy(on_dev), paths, router="hard").eval()
    for i, path in enumerate(paths):
        ref = PeftModel.from_pretrained(copy.deepcopy(model), path).eval()(input_ids=x).logits.double()
        peft = PeftModel.from_pretrained(copy.deepcopy(on_dev), path, autocast_adapter_dtype=False).eval()
        theirs = peft(input_ids=x.to(dev)).logits.double().cpu()
        with mix.force_expert(i):
            ours = mix(input_ids=x.to(dev)).logits.double().cpu()
        err_ours, err_peft = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
        effect = (ref - base_ref).abs().max().item()
        where = (arch, i, str(dev), str(dtype), f"ours {err_ours:.2e}, PEFT {err_peft:.2e}, effect {effect:.2e}")
        if dtype == torch.float32:
            assert err_ours < 1e-4 and (ours - theirs).abs().max().item() < 1e-4, where
        else:
            assert err_ours <= 2 * err_peft + 1e-2 * ref.abs().max().item(), where
        assert err_ours < 0.25 * effect, where  # the expert's effect stands well above the rounding


@torch.no_grad()
def test_soft_fixed_weights_match_peft_cat_merge(arch_setup):
    arch, model, paths = arch_setup
    weights = [0.5, 0.3, 0.2]
    pm = peft_with_all(model, paths)
    pm.add_weighted_adapter(["0", "1", "2"], weights, "cat", combination_type="cat")
    pm.set_adapter("cat")
    mix = loramix.compose(copy.deepcopy(model), paths, router="soft").eval()
    x = ids()
    with mix.fixed_weights(weights):
        ours = mix(input_ids=x).logits
    assert (ours - pm(input_ids=x).logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("router,top_k", [("hard", 1), ("hard", 2), ("topk", 2)])
@torch.no_grad()
def test_routed_linear_equals_chosen_experts_token_by_token(llama_setup, router, top_k):
    """Every routed projection's output row t equals the base plus the chosen experts' PEFT deltas,
    with the router's weights; PEFT's own LoRA layers are the oracle."""
    model, paths = llama_setup
    mix = loramix.compose(copy.deepcopy(model), paths, router=router, top_k=top_k, seed=3).eval()
    with torch.no_grad():  # a gate sharp enough that tokens disagree about experts
        mix.routers[0].gate.weight.normal_(0, 2.0)
    captured = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: captured.__setitem__(n, (inp[0], out)))
             for n, m in mix.model.named_modules() if isinstance(m, RoutedLinear)]
    mix(input_ids=ids(batch=4, seq=16))
    for h in hooks:
        h.remove()
    pm = peft_with_all(model, paths)
    peft_layers = dict(pm.base_model.model.named_modules())
    site_trace = {t.site: t for t in mix.routing_trace()}
    used = set()
    for name, (x, out) in captured.items():
        trace = site_trace[name.rpartition(".")[0]]
        layer = peft_layers[name]
        base_out = layer.base_layer(x)
        deltas = []
        for e in range(3):
            if str(e) in layer.lora_A:
                layer.set_adapter(str(e))
                deltas.append(layer(x) - base_out)
            else:  # the expert lacks this module: it contributes nothing
                deltas.append(torch.zeros_like(base_out))
        ref = base_out.clone()
        for j in range(trace.expert_ids.shape[-1]):
            e_ids, w = trace.expert_ids[..., j], trace.weights[..., j]
            used.update(e_ids.unique().tolist())
            stacked = torch.stack(deltas, dim=-2)  # [b, s, E, out]
            ref += stacked.gather(-2, e_ids[..., None, None].expand(*e_ids.shape, 1, stacked.shape[-1]))[..., 0, :] * w[..., None]
        assert (out - ref).abs().max().item() < 1e-5, name
    assert len(used) >= 2  # the check covered more than one expert


def test_ste_gradients_reach_router_and_no_expert(fresh):
    model, paths = fresh
    mix = loramix.compose(model, paths, router="hard", attention_lora_rank=4)
    mix.train()
    out = mix(input_ids=ids(), labels=ids())
    out.loss.backward()
    gate = mix.routers[0].gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    for name, p in mix.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    for m in mix.modules():
        if isinstance(m, RoutedLinear):
            assert not m.expert_A.requires_grad and not m.expert_Bt.requires_grad
            assert m.expert_A.grad is None
    with torch.no_grad():  # the forward weight of the chosen expert is exactly 1
        r = mix.routers[0](torch.randn(5, 64))
    assert torch.equal(r.weights, torch.ones_like(r.weights))


def test_optimizer_steps_leave_experts_and_base_bit_identical(fresh):
    model, paths = fresh
    mix = loramix.compose(model, paths, router="hard", attention_lora_rank=4)
    frozen = {n: t.clone() for n, t in list(mix.named_buffers()) + list(mix.named_parameters()) if
              not (t.requires_grad) and t.is_floating_point()}
    trainable = {n: p.clone() for n, p in mix.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in mix.parameters() if p.requires_grad], lr=1e-2)
    mix.train()
    for _ in range(3):
        loss = mix(input_ids=ids(), labels=ids()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    state = dict(list(mix.named_buffers()) + list(mix.named_parameters()))
    for n, t in frozen.items():
        assert torch.equal(state[n], t), n
    assert any(not torch.equal(state[n], t) for n, t in trainable.items())
    assert any(".expert_A" in n for n in frozen)


def test_trainable_parameter_count_is_exact(fresh):
    model, paths = fresh
    hidden, layers, E = 64, 2, 3
    shared = loramix.compose(copy.deepcopy(model), paths, router="hard")
    assert shared.trainable_parameters() == hidden * E
    per_layer = loramix.compose(copy.deepcopy(model), paths, router="soft", shared_router=False)
    assert per_layer.trainable_parameters() == hidden * E * layers
    att = loramix.compose(model, paths, router="hard", attention_lora_rank=4)
    # q: 64->64, k/v: 64->32 (2 kv heads of 16), o: 64->64; LoRA r=4 adds r*(in+out) each.
    lora = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64))
    assert att.trainable_parameters() == hidden * E + lora * layers
    assert att.parameter_report() == {"router": hidden * E, "attention_lora": lora * layers, "experts": 0,
                                      "other": 0, "total": hidden * E + lora * layers}


@torch.no_grad()
def test_generate_routes_each_new_token_and_matches_no_cache(fresh):
    model, paths = fresh
    mix = loramix.compose(model, paths, router="hard", seed=0).eval()
    mix.routers[0].gate.weight.normal_(0, 2.0)
    x = ids(batch=2, seq=6)
    kw = dict(max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(x), pad_token_id=0)
    cached = mix.generate(input_ids=x, **kw)
    trace = mix.routing_trace()
    assert trace[0].expert_ids.shape[:2] == (2, 6 + 8 - 1)
    uncached = mix.generate(input_ids=x, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_save_load_round_trip(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    mix = loramix.compose(model, paths, router="topk", top_k=2, attention_lora_rank=4, seed=0).eval()
    for p in mix.parameters():  # make the trainable parts non-trivial
        if p.requires_grad:
            p.normal_(0, 0.3)
    x = ids()
    mix.save_pretrained(tmp_path / "mix")
    assert sorted(f.name for f in (tmp_path / "mix").iterdir()) == ["mixture.safetensors", "mixture_config.json"]
    again = loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base)).eval()
    assert torch.equal(mix(input_ids=x).logits, again(input_ids=x).logits)
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(x), pad_token_id=0)
    assert torch.equal(mix.generate(input_ids=x, **kw), again.generate(input_ids=x, **kw))
    assert again.trainable_parameters() == mix.trainable_parameters()


def test_load_refuses_changed_expert(fresh, tmp_path):
    import shutil

    model, paths = fresh
    local = [shutil.copytree(p, tmp_path / f"x{i}") for i, p in enumerate(paths)]
    base = copy.deepcopy(model)
    loramix.compose(model, local, router="hard").save_pretrained(tmp_path / "mix")
    from safetensors.torch import load_file, save_file

    f = local[1] / "adapter_model.safetensors"
    sd = load_file(str(f))
    key = next(iter(sd))
    sd[key] = sd[key] * 1.01
    save_file(sd, str(f))
    with pytest.raises(LoramixError, match=r"x1/adapter_model.safetensors: sha256 differs.*experts\[1\]"):
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base))
    loramix.load_mixture(tmp_path / "mix", base, accept_changed_experts=True)


def test_aux_losses_reach_the_trainer_loss(fresh):
    model, paths = fresh
    plain = loramix.compose(copy.deepcopy(model), paths, router="soft", seed=0).train()
    aux = loramix.compose(model, paths, router="soft", seed=0, load_balance_coef=0.1, z_loss_coef=0.01).train()
    x = ids()
    a, b = plain(input_ids=x, labels=x), aux(input_ids=x, labels=x)
    assert b.aux_loss > 0
    assert torch.allclose(b.loss, a.loss + b.aux_loss)


def test_bf16_model_routes_in_fp32(fresh):
    model, paths = fresh
    mix = loramix.compose(model, paths, router="soft").to(torch.bfloat16).eval()
    with torch.no_grad():
        mix(input_ids=ids())
    trace = mix.routing_trace()[0]
    assert trace.probs.dtype == torch.float32


def test_route_sequences_follows_per_sequence_ids(fresh):
    model, paths = fresh
    mix = loramix.compose(model, paths, router="hard").eval()
    x = ids(batch=3)
    with torch.no_grad(), mix.route_sequences([2, 0, 1]):
        logits = mix(input_ids=x).logits
    assert mix.routing_trace()[0].expert_ids[:, :, 0].tolist() == [[2] * 9, [0] * 9, [1] * 9]
    for b, e in enumerate([2, 0, 1]):
        with torch.no_grad(), mix.force_expert(e):
            ref = mix(input_ids=x[b:b + 1]).logits
        assert (logits[b:b + 1] - ref).abs().max() < 1e-5


def test_unknown_router_lists_valid_ones(fresh):
    model, paths = fresh
    with pytest.raises(LoramixError, match="unknown router 'sparse'; valid: fixed, gumbel, hard, remix, soft, topk"):
        loramix.compose(model, paths, router="sparse")


def test_mixture_config_is_saved_whole_and_rebuilt(fresh, tmp_path):
    import json

    from loramix.mixture import MixtureConfig
    from loramix.routers import HardOptions

    model, paths = fresh
    base = copy.deepcopy(model)
    config = MixtureConfig(router="hard", router_options=HardOptions(ste="chosen"), shared_router=False,
                           attention_lora_rank=2, load_balance_coef=0.01)
    mix = loramix.compose(model, paths, config, seed=0)
    assert mix.mixture_config.top_k == 1 and mix.routers[0].options.ste == "chosen"
    mix.save_pretrained(tmp_path / "mix")
    saved = json.loads((tmp_path / "mix" / "mixture_config.json").read_text())
    assert saved["router_options"] == {"init_std": 0.02, "ste": "chosen"} and saved["format_version"] == 2
    again = loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base))
    assert again.mixture_config == mix.mixture_config
    # format 1 named the router's options "router_kwargs"
    saved["router_kwargs"] = saved.pop("router_options")
    (tmp_path / "mix" / "mixture_config.json").write_text(json.dumps(saved))
    assert loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base)).routers[0].options.ste == "chosen"
    saved["router_kwargs"] = {"ste": "sometimes"}
    (tmp_path / "mix" / "mixture_config.json").write_text(json.dumps(saved))
    with pytest.raises(LoramixError, match=r"mixture_config.json: ste must be one of full, chosen"):
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base))
    with pytest.raises(LoramixError, match="a MixtureConfig or keyword options, not both"):
        loramix.compose(copy.deepcopy(base), paths, config, router="soft")
