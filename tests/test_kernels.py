"""The routed-LoRA kernels (``loramix.kernels``) against direct per-token references: ``routed_lora``
over random routings, ranks and dtypes, the grouped GEMM against the per-expert loop (outputs and
gradients), experts that get no tokens and empty batches, and the decode fast path
(``small_lora``) against the grouped path."""

from __future__ import annotations

import dataclasses
import os
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loramix import kernels
from loramix.kernels import (SMALL_ASSIGNMENTS, add_routed_lora, grouped_lora, has_grouped_mm, routed_lora,
                             small_lora)
from loramix.routers import HardRouter, Routing, TopKRouter, fixed_routing

from conftest import lora_stack


def reference_delta(x, indices, weights, A, Bt, scale):
    """Per token, per chosen expert: the definition, in float64."""
    out = torch.zeros(x.shape[0], Bt.shape[-1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            out[t] += float(weights[t, j]) * float(scale[e]) * (x[t].double() @ A[e].double().T @ Bt[e].double())
    return out


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 24), experts=st.integers(1, 6), din=st.integers(1, 12), dout=st.integers(1, 12),
    ranks=st.lists(st.integers(0, 5), min_size=6, max_size=6), k=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 10_000),
    dense=st.booleans(),
)
def test_routed_kernel_matches_per_token_reference(tokens, experts, din, dout, ranks, k, dtype, seed, dense):
    g = torch.Generator().manual_seed(seed)
    k = min(k, experts)
    ranks = ranks[:experts]
    rmax = max(max(ranks), 1)
    A = torch.zeros(experts, rmax, din)
    Bt = torch.zeros(experts, rmax, dout)
    for e, r in enumerate(ranks):
        A[e, :r] = torch.randn(r, din, generator=g)
        Bt[e, :r] = torch.randn(r, dout, generator=g)
    scale = torch.tensor([0.0 if r == 0 else 0.5 + e for e, r in enumerate(ranks)])
    x = torch.randn(tokens, din, generator=g)
    if dense:
        indices = torch.arange(experts).expand(tokens, experts)
        weights = torch.rand(tokens, experts, generator=g)
    else:  # random choices, including experts that get no token at all
        indices = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
        weights = torch.rand(tokens, k, generator=g)
    routing = Routing(indices, weights, torch.full((tokens, experts), 1 / experts), dense=dense)
    got = routed_lora(x.to(dtype), routing, A.to(dtype), Bt.to(dtype), scale, ranks)
    ref = reference_delta(x.to(dtype), indices, weights, A.to(dtype), Bt.to(dtype), scale)
    tol = 1e-4 if dtype != torch.bfloat16 else 6e-2
    assert got.dtype == dtype and got.shape == (tokens, dout)
    assert torch.allclose(got.double(), ref, atol=tol * (1 + ref.abs().max().item()), rtol=tol)


def test_hard_kernel_equals_forced_expert_reference():
    """Hard routing with experts that receive no tokens, and a single expert."""
    torch.manual_seed(0)
    A, Bt = torch.randn(5, 3, 8), torch.randn(5, 3, 6)
    scale = torch.ones(5)
    x = torch.randn(10, 8)
    idx = torch.tensor([[4]] * 6 + [[1]] * 4)  # experts 0, 2, 3 get nothing
    r = Routing(idx, torch.ones(10, 1), torch.zeros(10, 5))
    got = routed_lora(x, r, A, Bt, scale, [3] * 5)
    for t in range(10):
        e = int(idx[t, 0])
        assert torch.allclose(got[t], x[t] @ A[e].T @ Bt[e], atol=1e-5)
    one = Routing(torch.zeros(10, 1, dtype=torch.long), torch.ones(10, 1), torch.ones(10, 1))
    assert torch.allclose(routed_lora(x, one, A[:1], Bt[:1], scale[:1], [3]), x @ A[0].T @ Bt[0], atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_gemm_and_per_expert_loop_agree_with_gradients(monkeypatch, k, dtype):
    """The grouped path runs one ``torch._grouped_mm`` per factor where torch has it and one matmul
    pair per expert otherwise: same outputs and the same gradients for the input, the routing weights
    (the router's straight-through path) and trainable experts (ReMix)."""
    from loramix import kernels

    g = torch.Generator().manual_seed(3)
    E, din, dout, tokens, ranks = 6, 16, 24, 40, [8, 2, 0, 8, 3, 8]
    A = torch.zeros(E, 8, din)
    Bt = torch.zeros(E, 8, dout)
    for e, r in enumerate(ranks):
        A[e, :r] = torch.randn(r, din, generator=g)
        Bt[e, :r] = torch.randn(r, dout, generator=g)
    scale = torch.tensor([0.5 + e for e in range(E)])
    x0 = torch.randn(tokens, din, generator=g)
    indices = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(tokens)])  # experts 4, 5 idle
    w0 = torch.rand(tokens, k, generator=g)
    grad_out = torch.randn(tokens, dout, generator=g).to(dtype)

    def run(grouped: bool):
        monkeypatch.setattr(kernels, "_GROUPED_MM", {("cpu", dtype): grouped})
        x = x0.to(dtype).requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        a, b = A.to(dtype).requires_grad_(True), Bt.to(dtype).requires_grad_(True)
        y = kernels.grouped_lora(x, Routing(indices, w, torch.full((tokens, E), 1 / E)), a, b, scale, ranks)
        y.backward(grad_out)
        return [t.float() for t in (y, x.grad, w.grad, a.grad, b.grad)]

    if not kernels.has_grouped_mm(x0.to(dtype), A, Bt):
        pytest.skip("this torch has no torch._grouped_mm for this dtype")
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for got, ref in zip(run(True), run(False)):
        assert torch.allclose(got, ref, rtol=tol, atol=tol * float(ref.abs().max().clamp_min(1.0)))
    assert run(True)[3][4:].abs().max() == 0  # idle experts get no gradient


@pytest.mark.parametrize("tokens", [3, 50])  # the small (decode) path and the grouped path
def test_experts_without_tokens_and_empty_batches(tokens):
    gen = torch.Generator().manual_seed(0)
    A, B, scale = lora_stack(4, 8, 6, [2, 3, 0, 4], gen)
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
    A, B, scale = lora_stack(experts, din, dout, ranks, gen)
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


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, SMALL_ASSIGNMENTS), experts=st.integers(1, 8), din=st.integers(1, 16),
    dout=st.integers(1, 16), k=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000), one_expert=st.booleans(), grouped=st.booleans(),
)
def test_cpu_decode_step_adds_in_place_as_the_device_path(tokens, experts, din, dout, k, dtype, seed, one_expert,
                                                          grouped):
    """A CPU decoding step at inference (routing read on the host, added into the base output in place:
    one matmul pair for a single expert, else grouped GEMMs or the per-expert loop and an index_add_)
    gives ``out + routed_lora`` of the device path."""
    k = 1 if one_expert else min(k, experts)
    tokens = min(tokens, SMALL_ASSIGNMENTS // k)
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.randint(0, 5, (experts,), generator=gen).tolist()
    ranks[0] = max(ranks[0], 1)
    A, B, scale = lora_stack(experts, din, dout, ranks, gen)
    Bt = (B.transpose(1, 2) * scale[:, None, None]).to(dtype)  # frozen experts: scale folded into B
    x = torch.randn(1, tokens, din, generator=gen).to(dtype)  # [batch, seq, in], as in the model
    shape = tuple(x.shape[:-1])
    if one_expert:
        routing = fixed_routing(shape, experts, "cpu", expert=int(torch.randint(0, experts, (), generator=gen)))
    else:
        with torch.no_grad():
            routing = HardRouter(din, experts, top_k=k).eval()(x.float())
    assert routing.unit_weights
    out = torch.randn(*shape, dout, generator=gen).to(dtype)
    ref = out + routed_lora(x, dataclasses.replace(routing, _plan=None), A.to(dtype), Bt, None, ranks)
    with mock.patch.dict(kernels._GROUPED_MM, {} if grouped else {("cpu", dtype): False}):  # else where torch has it
        got = add_routed_lora(out, x, routing, A.to(dtype), Bt, None, ranks)
    assert got is out  # added in place
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * float(ref.float().abs().max().clamp_min(1)))


def test_added_in_place_only_at_inference():
    """A step that needs a gradient, or too many assignments, takes the device path (a new tensor)."""
    gen = torch.Generator().manual_seed(0)
    A, B, scale = lora_stack(3, 8, 6, [2, 2, 2], gen)
    Bt = B.transpose(1, 2).contiguous()
    x = torch.randn(4, 8, generator=gen)
    routing = fixed_routing((4,), 3, "cpu", expert=1)
    out = torch.zeros(4, 6, requires_grad=True)
    assert add_routed_lora(out, x, routing, A, Bt, None, [2, 2, 2]) is not out
    many = torch.randn(SMALL_ASSIGNMENTS + 1, 8, generator=gen)
    out = torch.zeros(SMALL_ASSIGNMENTS + 1, 6)
    got = add_routed_lora(out, many, fixed_routing((SMALL_ASSIGNMENTS + 1,), 3, "cpu", expert=1), A, Bt, None,
                          [2, 2, 2])
    assert got is not out and torch.equal(out, torch.zeros_like(out))
    torch.testing.assert_close(got, many @ A[1].T @ Bt[1])


# -- on the test device (benchmarks/gpu_check.sh) -----------------------------------------------
# LORAMIX_TEST_DEVICE (cpu or cuda; default cpu) and LORAMIX_TEST_DTYPE (comma-separated float32,
# bfloat16; default float32) move these tests to an accelerator; without CUDA a cuda run is skipped.

def _test_device() -> torch.device:
    name = os.environ.get("LORAMIX_TEST_DEVICE", "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("LORAMIX_TEST_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


TEST_DTYPES = [getattr(torch, d.strip()) for d in os.environ.get("LORAMIX_TEST_DTYPE", "float32").split(",")]


@pytest.mark.parametrize("dtype", TEST_DTYPES, ids=str)
@pytest.mark.parametrize("path", ["grouped", "loop", "small"])
def test_kernel_paths_on_test_device_match_fp64_reference(monkeypatch, path, dtype):
    """Each sparse path (one grouped GEMM, the per-expert loop, the decode gather) on the test device
    and dtype, outputs and gradients, against float64 autograd of the same rounded inputs on the host.
    The bf16 bound (2% of the largest value) is loose for rounding and far below what a wrong expert,
    a lost scale or a dropped gradient gives (order 1)."""
    from loramix import kernels

    dev = _test_device()
    g = torch.Generator().manual_seed(7)
    small = path == "small"
    E, din, dout, r, k = 8, 64, 96, 16, 2
    tokens = 4 if small else 200  # few assignments and E > assignments: the decode path
    A = (torch.randn(E, r, din, generator=g) / din ** 0.5).to(dtype)
    Bt = (torch.randn(E, r, dout, generator=g) / r ** 0.5).to(dtype)
    scale = torch.tensor([0.5 + 0.25 * e for e in range(E)])
    x0 = torch.randn(tokens, din, generator=g).to(dtype)
    indices = torch.stack([torch.randperm(E - 2, generator=g)[:k] for _ in range(tokens)])  # 2 idle experts
    w0 = torch.rand(tokens, k, generator=g)
    grad_out = torch.randn(tokens, dout, generator=g).to(dtype)

    def run(device, cast, kernel):
        def leaf(t, dt):
            return t.detach().to(device, dt).clone().requires_grad_(True)

        x, w, a, b = leaf(x0, cast), leaf(w0, torch.float32), leaf(A, cast), leaf(Bt, cast)
        routing = Routing(indices.to(device), w, torch.full((tokens, E), 1 / E, device=device))
        y = kernel(x, routing, a, b, scale.to(device), [r] * E)
        y.backward(grad_out.to(device, cast))
        return [t.detach().double().cpu() for t in (y, x.grad, w.grad, a.grad, b.grad)]

    if path == "grouped":
        if not kernels.has_grouped_mm(x0.to(dev), A.to(dev), Bt.to(dev)):
            pytest.skip(f"no torch._grouped_mm on {dev.type} for {dtype}")
        kernel = kernels.grouped_lora
    elif path == "loop":
        monkeypatch.setitem(kernels._GROUPED_MM, (dev.type, dtype), False)
        kernel = kernels.grouped_lora
    else:
        kernel = lambda x, routing, a, b, s, ranks: kernels.small_lora(x, routing, a, b, s)  # noqa: E731
    got = run(dev, dtype, kernel)
    monkeypatch.setitem(kernels._GROUPED_MM, ("cpu", torch.float64), False)
    ref = run(torch.device("cpu"), torch.float64, kernels.grouped_lora)  # per-expert loop in float64
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(("y", "x.grad", "w.grad", "A.grad", "B.grad"), got, ref):
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))
        assert err <= tol, f"{path} {dtype} on {dev}: {name} off by {err:.2e} of its largest value"
    assert got[3][E - 2:].abs().max() == 0  # idle experts get no gradient
