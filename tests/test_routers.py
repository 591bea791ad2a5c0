"""Routers: weights, ties, temperature schedules, ReMix sampling, fixed routings, auxiliary losses
and the straight-through gradient. The routed kernels are tested in test_kernels.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from loramix.errors import LoramixError
from loramix.kernels import routed_lora
from loramix.routers import (Routing, fixed_routing, load_balance_loss, make_router, selection_log_prob,
                             sorted_topk, z_loss)


def test_hard_router_unit_weight_and_ste_gradient():
    torch.manual_seed(0)
    r = make_router("hard", 8, 4)
    x = torch.randn(5, 8)
    routing = r(x)
    assert torch.equal(routing.weights, torch.ones(5, 1))
    assert torch.equal(routing.indices[:, 0], routing.probs.argmax(-1))
    routing.weights.sum().backward()  # d/dlogits of sum_t p_t[chosen]
    assert r.gate.weight.grad.abs().sum() > 0


def test_hard_top2_and_ties_are_deterministic():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.4, 0.1]])
    assert sorted_topk(probs, 1).tolist() == [[0], [1]]
    assert sorted_topk(probs, 2).tolist() == [[0, 1], [1, 2]]
    r = make_router("hard", 8, 4, top_k=2)
    with torch.no_grad():
        r.gate.weight.zero_()
    out = r(torch.randn(3, 8))
    assert out.indices.tolist() == [[0, 1]] * 3


def test_soft_and_topk_weights():
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    soft = make_router("soft", 8, 4)
    s = soft(x)
    assert s.dense and torch.allclose(s.weights, s.probs) and s.indices.shape == (6, 4)
    topk = make_router("topk", 8, 4, top_k=2, normalize=True)
    topk.load_state_dict(soft.state_dict())
    t = topk(x)
    assert torch.allclose(t.weights.sum(-1), torch.ones(6))
    raw = make_router("topk", 8, 4, top_k=2, normalize=False)
    raw.load_state_dict(soft.state_dict())
    assert torch.allclose(raw(x).weights, s.probs.gather(-1, t.indices))


def test_gumbel_temperature_schedule_and_eval_is_deterministic():
    g = make_router("gumbel", 8, 4, tau_start=2.0, tau_end=0.5, anneal_steps=100)
    assert g.temperature == pytest.approx(2.0)
    g.set_step(50)
    assert g.temperature == pytest.approx(1.0)
    g.set_step(1000)
    assert g.temperature == pytest.approx(0.5)
    x = torch.randn(20, 8)
    g.eval()
    assert torch.equal(g(x).indices, g(x).indices)
    g.train()
    torch.manual_seed(0)
    noisy = torch.cat([g(x).indices for _ in range(20)])
    assert noisy.unique().numel() > 1
    soft = make_router("gumbel", 8, 4, hard=False)
    assert soft(x).dense


def test_remix_samples_without_replacement_with_constant_weight():
    torch.manual_seed(0)
    r = make_router("remix", 8, 6, top_k=3, rank=4, omega="linear").train()
    out = r(torch.randn(500, 8))
    assert all(len(set(row)) == 3 for row in out.indices.tolist())
    assert torch.all(out.weights == 2 / (3 * 4))
    assert out.log_prob.shape == (500,) and out.log_prob.requires_grad
    assert make_router("remix", 8, 6, top_k=3, rank=4, omega="sqrt").weight_value == pytest.approx(2 / math.sqrt(12))
    r.eval()
    ev = r(torch.randn(4, 8))
    assert ev.log_prob is None and torch.equal(ev.indices, sorted_topk(ev.probs, 3))


def test_remix_selection_probability_is_exact():
    """log Q sums to 1 over all ordered draws, and the sampler draws with those frequencies."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    draws = list(itertools.permutations(range(4), 2))
    q = {d: selection_log_prob(probs, torch.tensor(d)).exp().item() for d in draws}
    assert sum(q.values()) == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(0)
    r = make_router("remix", 4, 4, top_k=2, rank=1).train()
    with torch.no_grad():
        r.gate.weight.zero_()
        r.gate.weight[:, 0] = probs.log()
    n = 40000
    x = torch.zeros(n, 4)
    x[:, 0] = 1.0
    got = r(x).indices.tolist()
    for d in draws:
        freq = sum(1 for g in got if tuple(g) == d) / n
        assert abs(freq - q[d]) < 4 * math.sqrt(q[d] * (1 - q[d]) / n) + 1e-3, d


def test_fixed_routing_forms():
    r = fixed_routing((2, 3), 4, "cpu", expert=2)
    assert r.indices.shape == (2, 3, 1) and (r.indices == 2).all() and (r.weights == 1).all()
    s = fixed_routing((2, 3), 4, "cpu", sequence_experts=[1, 3])
    assert s.indices[:, :, 0].tolist() == [[1, 1, 1], [3, 3, 3]]
    w = fixed_routing((2, 3), 4, "cpu", weights=[0.1, 0.2, 0.3, 0.4])
    assert w.dense and torch.allclose(w.weights[1, 2], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(LoramixError, match="expert ids must lie in 0..3"):
        fixed_routing((2, 3), 4, "cpu", expert=4)


def test_aux_losses():
    E = 4
    uniform = Routing(torch.arange(8).remainder(E)[:, None], torch.ones(8, 1), torch.full((8, E), 0.25),
                      logits=torch.zeros(8, E))
    assert load_balance_loss(uniform).item() == pytest.approx(1.0)
    collapsed = Routing(torch.zeros(8, 1, dtype=torch.long), torch.ones(8, 1),
                        torch.tensor([[1.0, 0, 0, 0]]).expand(8, E), logits=torch.zeros(8, E))
    assert load_balance_loss(collapsed).item() == pytest.approx(4.0)
    assert z_loss(uniform).item() == pytest.approx(math.log(4) ** 2)


def test_unknown_router_and_bad_top_k():
    with pytest.raises(LoramixError, match="unknown router 'moe'; valid:"):
        make_router("moe", 8, 4)
    with pytest.raises(LoramixError, match="top_k must lie in 1..4"):
        make_router("topk", 8, 4, top_k=5)


def test_full_straight_through_gradient_is_the_soft_gradient_for_a_linear_loss():
    """``w = onehot(argmax p) - stopgrad(p) + p`` over every expert: the forward is the hard choice,
    and for a loss linear in the output the router's gradient is exactly the soft mixture's (both are
    sum_j dL/dp_j * dp_j with dL/dp_j = <c, delta_j>). The "chosen" estimator only sees the chosen
    expert's term, so it differs."""
    from loramix.routers import HardRouter, SoftRouter

    g = torch.Generator().manual_seed(5)
    E, din, dout, T = 4, 16, 8, 12
    A, Bt = torch.randn(E, 4, din, generator=g), torch.randn(E, 4, dout, generator=g)
    scale = torch.full((E,), 0.5)
    x, c = torch.randn(T, din, generator=g), torch.randn(T, dout, generator=g)

    def grad_and_out(router):
        router.gate.weight.data.copy_(torch.randn(E, din, generator=torch.Generator().manual_seed(1)) * 0.3)
        router.gate.weight.grad = None
        y = routed_lora(x, router(x), A, Bt, scale, [4] * E)
        (y * c).sum().backward()
        return router.gate.weight.grad.clone(), y.detach()

    full, y_full = grad_and_out(HardRouter(din, E, ste="full").train())
    chosen, y_chosen = grad_and_out(HardRouter(din, E, ste="chosen").train())
    soft, _ = grad_and_out(SoftRouter(din, E).train())
    assert torch.allclose(y_full, y_chosen, atol=1e-5)  # same forward: the hard choice at unit weight
    assert torch.allclose(full, soft, atol=1e-5)
    assert not torch.allclose(chosen, soft, atol=1e-3)
    with torch.no_grad():  # inference is sparse either way
        routing = HardRouter(din, E, ste="full")(x)
    assert routing.dense_weights is None and routing.unit_weights


def test_load_balance_loss_leaves_padding_out():
    """Mixtral's rule: padded positions count neither in the assignment shares nor in the mean
    probability; the masked loss equals the loss over the real tokens alone."""
    torch.manual_seed(0)
    E, B, T = 4, 2, 5
    probs = torch.softmax(torch.randn(B, T, E), -1)
    idx = probs.argmax(-1, keepdim=True)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left padding on the first row
    routing = Routing(idx, torch.ones(B, T, 1), probs, logits=probs.log())
    real = mask.bool()
    only_real = Routing(idx[real], torch.ones(int(real.sum()), 1), probs[real], logits=probs[real].log())
    assert load_balance_loss(routing, mask).item() == pytest.approx(load_balance_loss(only_real).item())
    assert load_balance_loss(routing, mask).item() != pytest.approx(load_balance_loss(routing).item())


def test_router_options_are_typed_and_checked():
    from loramix.routers import GumbelOptions, HardOptions, router_options

    assert router_options("hard", ste="chosen") == HardOptions(ste="chosen")
    assert router_options("hard", ste=None) == HardOptions()  # an option not given keeps its default
    assert make_router("gumbel", 8, 4, options=GumbelOptions(hard=False)).top_k == 4
    with pytest.raises(LoramixError, match="router 'soft' has no option 'ste'"):
        router_options("soft", ste="chosen")
    with pytest.raises(LoramixError, match="ste must be one of full, chosen, got 'all'"):
        make_router("hard", 8, 4, ste="all")
    with pytest.raises(LoramixError, match="router 'topk' takes TopKOptions, got HardOptions"):
        make_router("topk", 8, 4, options=HardOptions())
