"""Issue 7: robust numerics. fp32 routing under bf16, deterministic ties, experts with no tokens,
one-expert mixtures, and hypothesis fuzzing of the mixture layer (``RoutedLinear`` in a site, hard
routing against the forced-expert reference token by token) and of the decode fast path
(``kernels.small_lora``) against the grouped path."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import loramix
from loramix.kernels import SMALL_ASSIGNMENTS, grouped_lora, has_grouped_mm, routed_lora, small_lora
from loramix.mixture import RoutedLinear, RouteSite
from loramix.routers import HardRouter, TopKRouter, fixed_routing


def _stack(E, din, dout, ranks, gen):
    rmax = max(ranks)
    A = torch.zeros(E, rmax, din)
    B = torch.zeros(E, dout, rmax)
    for e, r in enumerate(ranks):
        if r:
            A[e, :r] = torch.randn(r, din, generator=gen)
            B[e, :, :r] = torch.randn(dout, r, generator=gen)
    scale = torch.tensor([0.5 + e for e in range(E)], dtype=torch.float32) * torch.tensor([r > 0 for r in ranks])
    return A, B, scale


def test_router_softmax_is_fp32_under_bf16():
    router = HardRouter(16, 4).to(torch.bfloat16)
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    routing = router(x)
    assert routing.probs.dtype == torch.float32 and routing.logits.dtype == torch.float32
    assert routing.weights.dtype == torch.float32
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(3, 5))


@pytest.mark.parametrize("cls,k", [(HardRouter, 1), (HardRouter, 2), (TopKRouter, 3)])
def test_tied_logits_route_deterministically_to_the_lowest_index(cls, k):
    router = cls(8, 5, top_k=k).eval()
    with torch.no_grad():
        router.gate.weight.zero_()  # every logit equal
    x = torch.randn(40, 8)
    first = router(x).indices
    assert torch.equal(first, torch.arange(k).expand(40, k))
    for _ in range(3):
        assert torch.equal(router(x).indices, first)


@pytest.mark.parametrize("tokens", [3, 50])  # the small (decode) path and the grouped path
def test_experts_without_tokens_and_empty_batches(tokens):
    gen = torch.Generator().manual_seed(0)
    A, B, scale = _stack(4, 8, 6, [2, 3, 0, 4], gen)
    Bt = B.transpose(1, 2).contiguous()
    x = torch.randn(tokens, 8, generator=gen)
    for expert in range(4):  # every token to one expert: the other three get none
        routing = fixed_routing((tokens,), 4, "cpu", expert=expert)
        y = routed_lora(x, routing, A, Bt, scale, [2, 3, 0, 4])
        ref = scale[expert] * (x @ A[expert].T @ B[expert].T)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    empty = torch.zeros(0, 8)
    for path in ("small", "grouped"):
        routing = fixed_routing((0,), 4, "cpu", expert=1)
        y = (small_lora(empty, routing, A, Bt, scale) if path == "small"
             else grouped_lora(empty, routing, A, Bt, scale, [2, 3, 0, 4]))
        assert y.shape == (0, 6)


def test_single_expert_mixture_equals_peft(llama_setup):
    from peft import PeftModel

    model, paths = llama_setup
    ids = torch.randint(3, 90, (2, 40))
    with torch.no_grad():
        ref = PeftModel.from_pretrained(copy.deepcopy(model), paths[1]).eval()(ids).logits
        for router in ("hard", "soft", "topk"):
            mix = loramix.compose(copy.deepcopy(model), [paths[1]], router=router).eval()
            out = mix(ids).logits
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
            assert {int(i) for t in mix.routing_trace() for i in t.expert_ids.unique()} == {0}
            step = mix(ids[:, :1]).logits  # one token per sequence: the small path
            torch.testing.assert_close(step, PeftModel.from_pretrained(copy.deepcopy(model), paths[1]).eval()(
                ids[:, :1]).logits, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    tokens=st.integers(1, 48), experts=st.integers(1, 6), din=st.integers(1, 24), dout=st.integers(1, 24),
    rank_seed=st.integers(0, 10_000), k=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000), tie=st.booleans(),
)
def test_routed_linear_hard_equals_forced_expert_reference(tokens, experts, din, dout, rank_seed, k, dtype, seed,
                                                            tie):
    """A RoutedLinear in a site, routed by a hard (top-k) router: each token's output equals the
    output with that token's chosen experts forced (one forward per token and expert)."""
    k = min(k, experts)
    gen = torch.Generator().manual_seed(seed)
    rng = torch.Generator().manual_seed(rank_seed)
    ranks = torch.randint(0, 5, (experts,), generator=rng).tolist()
    ranks[0] = max(ranks[0], 1)
    A, B, scale = _stack(experts, din, dout, ranks, gen)
    torch.manual_seed(seed)
    base = nn.Linear(din, dout).to(dtype)
    site = RouteSite("site", 0)
    layer = RoutedLinear(base, A, B, scale, ranks, site).to(dtype)
    router = HardRouter(din, experts, top_k=k).eval()
    if tie:
        with torch.no_grad():
            router.gate.weight.zero_()
    x = torch.randn(tokens, din, generator=gen).to(dtype)
    with torch.no_grad():
        site.routing = router(x)
        chosen = site.routing.indices
        out = layer(x)
        ref = torch.empty_like(out)
        for t in range(tokens):
            base_t = base(x[t:t + 1])
            acc = base_t.float()
            for e in chosen[t].tolist():
                site.routing = fixed_routing((1,), experts, "cpu", expert=e)
                acc = acc + (layer(x[t:t + 1]) - base_t).float()
            ref[t] = acc[0].to(dtype)
    if tie:
        assert torch.equal(chosen, torch.arange(k).expand(tokens, k))
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    scale_ref = ref.float().abs().max().clamp_min(1.0)
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol * float(scale_ref)), (out - ref).abs().max()


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, SMALL_ASSIGNMENTS), experts=st.integers(1, 8), din=st.integers(1, 16),
    dout=st.integers(1, 16), k=st.integers(1, 4), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000), weighted=st.booleans(),
)
def test_small_decode_path_equals_grouped_path(tokens, experts, din, dout, k, dtype, seed, weighted):
    k = min(k, experts)
    tokens = max(1, min(tokens, SMALL_ASSIGNMENTS // k))
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.randint(0, 5, (experts,), generator=gen).tolist()
    ranks[0] = max(ranks[0], 1)
    A, B, scale = _stack(experts, din, dout, ranks, gen)
    Bt = B.transpose(1, 2).contiguous()
    router = (TopKRouter(din, experts, top_k=k) if weighted else HardRouter(din, experts, top_k=k)).eval()
    x = torch.randn(tokens, din, generator=gen)
    with torch.no_grad():
        routing = router(x)
        xs, As, Bts = x.to(dtype), A.to(dtype), Bt.to(dtype)
        small = small_lora(xs, routing, As, Bts, scale)
        grouped = grouped_lora(xs, routing, As, Bts, scale, ranks)
        assert tokens * k <= SMALL_ASSIGNMENTS
        via = routed_lora(xs, routing, As, Bts, scale, ranks)
    # a decoding step gathers per-token weights when there are more experts than assignments (or no
    # grouped GEMM for these shapes); otherwise the grouped GEMM reads the used experts in place
    gathered = experts > tokens * k or not has_grouped_mm(xs, As, Bts)
    assert torch.equal(via, small if gathered else grouped)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    mag = float(grouped.float().abs().max().clamp_min(1.0))
    assert torch.allclose(small.float(), grouped.float(), rtol=tol, atol=tol * mag), (small - grouped).abs().max()
