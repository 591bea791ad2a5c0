"""Routed LoRA compute: ``delta[t] = sum_j w[t, j] * scale[e] * B_e A_e x[t]`` for the experts
``e = indices[t, j]`` a token chose.

* Sparse routing (hard, top-k, ReMix) groups tokens by expert: one stable sort per routing decision
  (shared by every projection of the group), then one matmul pair per expert that has tokens. Only
  chosen experts are computed, so cost stays flat in the number of experts.
* Dense routing (soft) is two matmuls over the concatenated experts, i.e. PEFT's "cat" layout.

Expert weights are stacked: ``A [E, r, in]`` and ``Bt [E, r, out]`` (B transposed, so that the
dense path is a view), zero-padded to the largest rank; ``ranks[e]`` slices the padding away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loramix.routers import Routing


@dataclass
class DispatchPlan:
    """Tokens grouped by expert: ``token[order]`` runs expert by expert, ``counts[e]`` long."""

    token: torch.Tensor  # [T*k] token index of each sorted assignment
    weights: torch.Tensor  # [T*k] routing weight of each sorted assignment (keeps the router's grad)
    counts: list[int]
    inverse: torch.Tensor | None = None  # [T*k] position of each (token, slot) assignment in sorted order
    x_key: tuple | None = None  # identity of the last input gathered (gate_proj and up_proj share it)
    x_ref: torch.Tensor | None = None  # keeps that input alive, so its storage cannot be reused
    x_sorted: torch.Tensor | None = None  # x.index_select(0, token) for that input


def dispatch_plan(routing: Routing) -> DispatchPlan:
    if routing._plan is None:
        k = routing.indices.shape[-1]
        flat = routing.indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=routing.num_experts).tolist()
        token = order if k == 1 else torch.div(order, k, rounding_mode="floor")
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        routing._plan = DispatchPlan(token, routing.weights.reshape(-1)[order], counts, inverse)
    return routing._plan


def _sorted_input(plan: DispatchPlan, x: torch.Tensor) -> torch.Tensor:
    """``x`` gathered in expert order, reused while the same input comes back (gate and up)."""
    key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version, x.requires_grad)
    if plan.x_key != key or plan.x_sorted is None:
        plan.x_key, plan.x_ref, plan.x_sorted = key, x, x.index_select(0, plan.token)
    return plan.x_sorted


def grouped_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                 scale: list[float], ranks: list[int]) -> torch.Tensor:
    """Sparse path. x: [T, in] -> [T, out].

    Gathers x once in expert order, runs one matmul pair per expert into a sorted output (the routing
    weight and scale multiply the rank-r intermediate, not the output), then un-permutes by a gather
    (``inverse``) rather than a scatter-add into a zero buffer: on CPU ``index_add_`` and the zero fill
    were a third of the hard path's time.
    """
    plan = dispatch_plan(routing)
    weights = plan.weights.to(x.dtype)
    xs = _sorted_input(plan, x)
    k = routing.indices.shape[-1]
    T, out_features = x.shape[0], Bt.shape[-1]
    if A.requires_grad or Bt.requires_grad:  # trainable experts: one UnbindBackward, not E full-size
        A, Bt = A.unbind(0), Bt.unbind(0)      # zero gradients from E slice backwards
    parts, start = [], 0
    for e, count in enumerate(plan.counts):
        if count:
            rows = slice(start, start + count)
            r = ranks[e]
            if r:
                h = (xs[rows] @ A[e][:r].T) * (weights[rows, None] * scale[e])
                parts.append(h @ Bt[e][:r])
            else:
                parts.append(xs.new_zeros(count, out_features))
        start += count
    if not parts:
        return x.new_zeros(T, out_features)
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    y = y.index_select(0, plan.inverse)
    return y if k == 1 else y.view(T, k, out_features).sum(1)


SMALL_ASSIGNMENTS = 32  # at most this many token-expert assignments: per-token gathered weights + bmm


def small_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
    """Sparse path for a few tokens (decoding): gather each assignment's A and B and use two bmm, with
    no sort and no per-expert loop. Zero padding past an expert's rank contributes zero. x: [T, in]."""
    T, k = x.shape[0], routing.indices.shape[-1]
    idx = routing.indices.reshape(-1)
    w = routing.weights.reshape(-1).to(x.dtype) * scale.to(device=x.device, dtype=x.dtype).index_select(0, idx)
    xr = x if k == 1 else x.repeat_interleave(k, dim=0)
    h = torch.bmm(A.index_select(0, idx), xr.unsqueeze(-1)).squeeze(-1) * w[:, None]  # [T*k, r]
    y = torch.bmm(h.unsqueeze(1), Bt.index_select(0, idx)).squeeze(1)  # [T*k, out]
    return y if k == 1 else y.view(T, k, -1).sum(1)


def dense_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
    """Dense path (every expert, weighted). x: [T, in] -> [T, out]."""
    E, r, _ = A.shape
    w = routing.weights.reshape(-1, E).to(x.dtype) * scale.to(x.dtype)
    h = (x @ A.reshape(E * r, -1).T).view(-1, E, r) * w[:, :, None]
    return h.reshape(-1, E * r) @ Bt.reshape(E * r, -1)


def routed_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                scale: torch.Tensor, scale_list: list[float], ranks: list[int]) -> torch.Tensor:
    """The LoRA delta for ``x [..., in]`` under ``routing`` (leading shape ``[...]``)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if routing.dense:
        y = dense_lora(x2, routing, A, Bt, scale)
    elif x2.shape[0] * routing.indices.shape[-1] <= SMALL_ASSIGNMENTS:
        y = small_lora(x2, routing, A, Bt, scale)
    else:
        y = grouped_lora(x2, routing, A, Bt, scale_list, ranks)
    return y.view(*lead, -1)
