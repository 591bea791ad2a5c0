"""Issue 7: robust numerics. fp32 routing under bf16, deterministic ties, one-expert mixtures, and
hypothesis fuzzing of the mixture layer (``RoutedLinear`` in a site, hard routing against the
forced-expert reference token by token). Experts with no tokens, empty batches and the decode fast
path (``kernels.small_lora``) against the grouped path are in test_kernels.py."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import loramix
from loramix.mixture import RoutedLinear, RouteSite
from loramix.routers import HardRouter, TopKRouter, fixed_routing

from conftest import lora_stack


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
    A, B, scale = lora_stack(experts, din, dout, ranks, gen)
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
