"""Routed LoRA compute: ``delta[t] = sum_j w[t, j] * scale[e] * B_e A_e x[t]`` for the experts
``e = indices[t, j]`` a token chose.

* Sparse routing (hard, top-k, ReMix) groups tokens by expert: one stable sort per routing decision
  (shared by every projection of the group), then one grouped GEMM per LoRA factor
  (``torch._grouped_mm``; a matmul pair per expert on torch without it). Only chosen experts are
  computed, so cost stays flat in the number of experts.
* A decoding step with more experts than token-expert assignments skips the sort: each assignment
  gathers its expert's A and B and two ``bmm`` run.
* A decoding step on the CPU at inference (``add_routed_lora``) reads its few choices on the host
  instead (free there) and adds into the base layer's output in place: one matmul pair when every
  token chose the same expert, else the grouped GEMMs and one ``index_add_`` (no sort ops, no
  un-permute, no separate add).
* Dense routing (soft) is two matmuls over the concatenated experts, i.e. PEFT's "cat" layout.

Expert weights are stacked: ``A [E, r, in]`` and ``Bt [E, r, out]`` (B transposed, so that the
dense path is a view), zero-padded to the largest rank (the padding multiplies to zero). ``scale[e]``
(alpha / r) multiplies expert e's delta; ``scale=None`` means it is already folded into ``Bt``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from loramix.routers import Routing


@dataclass
class DispatchPlan:
    """Tokens grouped by expert: ``token[order]`` runs expert by expert, ``counts[e]`` long."""

    token: torch.Tensor  # [T*k] token index of each sorted assignment
    weights: torch.Tensor | None  # [T*k] sorted routing weights (keep the router's grad); None: all 1
    expert: torch.Tensor  # [T*k] expert of each sorted assignment
    counts: torch.Tensor  # [E] assignments per expert (on the routing's device: no host sync)
    inverse: torch.Tensor  # [T*k] position of each (token, slot) assignment in sorted order
    x_key: tuple | None = None  # identity of the last input gathered (gate_proj and up_proj share it)
    x_ref: torch.Tensor | None = None  # keeps that input alive, so its storage cannot be reused
    x_sorted: torch.Tensor | None = None  # x.index_select(0, token) for that input
    _offsets: torch.Tensor | None = None

    @property
    def offsets(self) -> torch.Tensor:
        """int32 end offset of each expert's group, as ``torch._grouped_mm`` takes them."""
        if self._offsets is None:
            self._offsets = self.counts.cumsum(0).to(torch.int32)
        return self._offsets


def dispatch_plan(routing: Routing) -> DispatchPlan:
    if not isinstance(routing._plan, DispatchPlan):
        k = routing.indices.shape[-1]
        flat = routing.indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=routing.num_experts)
        token = order if k == 1 else torch.div(order, k, rounding_mode="floor")
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        weights = None if routing.unit_weights else routing.weights.reshape(-1)[order]
        routing._plan = DispatchPlan(token, weights, flat[order], counts, inverse)
    return routing._plan


def _sorted_input(plan: "DispatchPlan | HostPlan", x: torch.Tensor) -> torch.Tensor:
    """``x`` gathered in expert order, reused while the same input comes back (gate and up)."""
    key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version, x.requires_grad)
    if plan.x_key != key or plan.x_sorted is None:
        plan.x_key, plan.x_ref, plan.x_sorted = key, x, x.index_select(0, plan.token)
    return plan.x_sorted


_GROUPED_MM: dict[tuple, bool] = {}


def has_grouped_mm(x: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` (one grouped GEMM over all experts) runs here: probed once per
    device type and dtype. It also wants rows aligned to 16 bytes (input, rank and output sizes)."""
    key = (x.device.type, x.dtype)
    if key not in _GROUPED_MM:
        ok = hasattr(torch, "_grouped_mm")
        if ok:
            try:
                a = torch.zeros(4, 8, device=x.device, dtype=x.dtype)
                w = torch.zeros(2, 8, 8, device=x.device, dtype=x.dtype)
                torch._grouped_mm(a, w, offs=torch.tensor([2, 4], device=x.device, dtype=torch.int32))
            except (RuntimeError, NotImplementedError, TypeError):
                ok = False
        _GROUPED_MM[key] = ok
    if not _GROUPED_MM[key]:
        return False
    return all(n * x.element_size() % 16 == 0 for n in (A.shape[-1], A.shape[-2], Bt.shape[-1]))


def _scaled(w: torch.Tensor | None, scale: torch.Tensor | None, experts: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor | None:
    """Each assignment's routing weight (``None``: all 1) times its expert's scale (``None``: folded
    into B); ``None`` when both are 1, so there is nothing to multiply."""
    if scale is None:
        return None if w is None else w.to(dtype)
    s = scale.to(device=experts.device, dtype=dtype).index_select(0, experts)
    return s if w is None else w.to(dtype) * s


def grouped_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                 scale: torch.Tensor | None, ranks: list[int]) -> torch.Tensor:
    """Sparse path. x: [T, in] -> [T, out].

    Gathers x once in expert order, multiplies each group by its expert (the routing weight and scale
    multiply the rank-r intermediate, not the output), then un-permutes by a gather (``inverse``).
    The grouped multiply is one ``torch._grouped_mm`` per factor where torch has it: a fixed number of
    ops, whatever E is, and no host sync. Elsewhere it is one matmul pair per expert that has tokens.
    Zero padding past an expert's rank contributes zero.
    """
    plan = dispatch_plan(routing)
    w = _scaled(plan.weights, scale, plan.expert, x.dtype)
    xs = _sorted_input(plan, x)
    k = routing.indices.shape[-1]
    T, out_features = x.shape[0], Bt.shape[-1]
    y = _expert_groups(xs, w, plan, A, Bt, ranks)
    y = y.index_select(0, plan.inverse)
    return y if k == 1 else y.view(T, k, out_features).sum(1)


def _expert_groups(xs: torch.Tensor, w: torch.Tensor | None, plan: "DispatchPlan | HostPlan", A: torch.Tensor,
                   Bt: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """Each group of ``xs`` (rows in expert order) through its expert's LoRA: one ``torch._grouped_mm``
    per factor where torch has it, else one matmul pair per expert that has rows."""
    if has_grouped_mm(xs, A, Bt):
        h = torch._grouped_mm(xs, A.transpose(1, 2), offs=plan.offsets)
        return torch._grouped_mm(h if w is None else h * w[:, None], Bt, offs=plan.offsets)
    counts = plan.counts if isinstance(plan.counts, list) else plan.counts.tolist()
    return _looped_lora(xs, w, counts, A, Bt, ranks)


def _looped_lora(xs: torch.Tensor, w: torch.Tensor | None, counts: list[int], A: torch.Tensor, Bt: torch.Tensor,
                 ranks: list[int]) -> torch.Tensor:
    """One matmul pair per expert that has tokens (torch without ``_grouped_mm``)."""
    out_features = Bt.shape[-1]
    if A.requires_grad or Bt.requires_grad:  # trainable experts: one UnbindBackward, not E full-size
        A, Bt = A.unbind(0), Bt.unbind(0)      # zero gradients from E slice backwards
    parts, start = [], 0
    for e, count in enumerate(counts):
        if count:
            rows, r = slice(start, start + count), ranks[e]
            if r:
                h = xs[rows] @ A[e][:r].T
                parts.append((h if w is None else h * w[rows, None]) @ Bt[e][:r])
            else:
                parts.append(xs.new_zeros(count, out_features))
        start += count
    if not parts:
        return xs.new_zeros(0, out_features)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# At most this many token-expert assignments (a decoding step) *and* more experts than assignments:
# per-token gathered weights + bmm. With no more experts than assignments, the grouped GEMM reads each
# used expert in place, which is cheaper than copying one expert per token (measured on CPU: decode
# at batch 8, hidden 768, 1.09x / 1.17x PEFT LoRA at E = 1 / 8, against 1.16x / 1.19x gathered).
SMALL_ASSIGNMENTS = 32


def small_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
               scale: torch.Tensor | None) -> torch.Tensor:
    """Sparse path for a few tokens (decoding): gather each assignment's A and B and use two bmm, with
    no sort and no per-expert loop. Zero padding past an expert's rank contributes zero. x: [T, in]."""
    T, k = x.shape[0], routing.indices.shape[-1]
    idx = routing.indices.reshape(-1)
    xr = x if k == 1 else x.repeat_interleave(k, dim=0)
    h = torch.bmm(A.index_select(0, idx), xr.unsqueeze(-1)).squeeze(-1)  # [T*k, r]
    w = _scaled(None if routing.unit_weights else routing.weights.reshape(-1), scale, idx, x.dtype)
    if w is not None:
        h = h * w[:, None]
    y = torch.bmm(h.unsqueeze(1), Bt.index_select(0, idx)).squeeze(1)  # [T*k, out]
    return y if k == 1 else y.view(T, k, -1).sum(1)


def dense_lora(x: torch.Tensor, weights: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor,
               scale: torch.Tensor | None) -> torch.Tensor:
    """Dense path (every expert, weighted by ``weights [..., E]``). x: [T, in] -> [T, out]."""
    E, r, _ = A.shape
    w = weights.reshape(-1, E).to(x.dtype)
    if scale is not None:
        w = w * scale.to(device=x.device, dtype=x.dtype)
    h = (x @ A.reshape(E * r, -1).T).view(-1, E, r) * w[:, :, None]
    return h.reshape(-1, E * r) @ Bt.reshape(E * r, -1)


def routed_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                scale: torch.Tensor | None, ranks: list[int]) -> torch.Tensor:
    """The LoRA delta for ``x [..., in]`` under ``routing`` (leading shape ``[...]``)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if routing.dense:
        y = dense_lora(x2, routing.weights, A, Bt, scale)
    elif routing.dense_weights is not None:  # full straight-through: every expert gets a gradient
        y = dense_lora(x2, routing.dense_weights, A, Bt, scale)
    elif (n := x2.shape[0] * routing.indices.shape[-1]) <= SMALL_ASSIGNMENTS and (
            routing.num_experts > n or not has_grouped_mm(x2, A, Bt)):
        y = small_lora(x2, routing, A, Bt, scale)
    else:
        y = grouped_lora(x2, routing, A, Bt, scale, ranks)
    return y.view(*lead, Bt.shape[-1])  # not -1: a batch of 0 tokens has no size to infer


# -- CPU decoding: the routing read on the host ----------------------------------------------------
# Between the base model's large GEMMs, which evict the caches, each small tensor op of a decoding step
# costs tens of microseconds on the CPU (measured: ~40 us for the un-permuting index_select of a batch-8
# step, ~130 us for the 8-op device plan of one layer), so there the step is fastest with the fewest ops.
# Reading the routing on the host costs nothing on the CPU (no device to wait for).


@dataclass
class HostPlan:
    """A few assignments grouped by expert on the host: ``expert`` when every token chose that one
    (top-1), else ``token`` (each assignment's token, expert by expert) with the group sizes."""

    expert: int | None
    token: torch.Tensor | None = None
    counts: list[int] | None = None  # assignments per expert
    offsets: torch.Tensor | None = None  # int32 group ends, as ``torch._grouped_mm`` takes them
    x_key: tuple | None = None  # as in DispatchPlan: gate_proj and up_proj share the gathered input
    x_ref: torch.Tensor | None = None
    x_sorted: torch.Tensor | None = None


def host_plan(routing: Routing) -> HostPlan:
    if not isinstance(routing._plan, HostPlan):
        k, ids = routing.indices.shape[-1], routing.indices.reshape(-1).tolist()
        if k == 1 and ids and min(ids) == max(ids):
            routing._plan = HostPlan(ids[0])
        else:
            order = sorted(range(len(ids)), key=ids.__getitem__)  # stable, as the device plan's sort
            counts = [0] * routing.num_experts
            for e in ids:
                counts[e] += 1
            token = torch.tensor([i // k for i in order], dtype=torch.long, device=routing.indices.device)
            offsets = torch.tensor(list(itertools.accumulate(counts)), dtype=torch.int32)
            routing._plan = HostPlan(None, token, counts, offsets)
    return routing._plan


def _adds_on_host(out: torch.Tensor, x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                  scale: torch.Tensor | None) -> bool:
    """A CPU decoding step at inference: unit weights (hard routing, forced experts), frozen experts
    (scale folded into B), nothing that needs a gradient, and at most SMALL_ASSIGNMENTS assignments."""
    return (x.device.type == "cpu" and routing.unit_weights and not routing.dense and routing.dense_weights is None
            and scale is None and not (out.requires_grad or A.requires_grad or Bt.requires_grad)
            and out.is_contiguous() and routing.indices.numel() <= SMALL_ASSIGNMENTS)


def add_routed_lora(out: torch.Tensor, x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                    scale: torch.Tensor | None, ranks: list[int]) -> torch.Tensor:
    """``out + routed_lora(x, ...)`` for a base layer's output ``out [..., out]``. A CPU decoding step
    at inference adds into ``out`` in place, with the routing read on the host: one ``addmm_`` after
    the A matmul when all its tokens chose one expert, else the grouped GEMMs and an ``index_add_``
    (which un-permutes, sums the k choices and adds in one op)."""
    if not _adds_on_host(out, x, routing, A, Bt, scale):
        return out + routed_lora(x, routing, A, Bt, scale, ranks)
    x2, o2 = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
    if x2.shape[0] == 0:
        return out
    plan = host_plan(routing)
    if plan.expert is not None:
        e, r = plan.expert, ranks[plan.expert]
        if r:
            o2.addmm_(x2 @ A[e, :r].T, Bt[e, :r])
        return out
    o2.index_add_(0, plan.token, _expert_groups(_sorted_input(plan, x2), None, plan, A, Bt, ranks))
    return out
