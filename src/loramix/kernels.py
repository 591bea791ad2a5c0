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


def dispatch_plan(routing: Routing) -> DispatchPlan:
    if routing._plan is None:
        k = routing.indices.shape[-1]
        flat = routing.indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=routing.num_experts).tolist()
        token = order if k == 1 else torch.div(order, k, rounding_mode="floor")
        routing._plan = DispatchPlan(token, routing.weights.reshape(-1)[order], counts)
    return routing._plan


def grouped_lora(x: torch.Tensor, routing: Routing, A: torch.Tensor, Bt: torch.Tensor,
                 scale: list[float], ranks: list[int]) -> torch.Tensor:
    """Sparse path. x: [T, in] -> [T, out]."""
    plan = dispatch_plan(routing)
    weights = plan.weights.to(x.dtype)
    out = x.new_zeros(x.shape[0], Bt.shape[-1])
    start = 0
    for e, count in enumerate(plan.counts):
        if count and ranks[e]:
            rows = slice(start, start + count)
            token = plan.token[rows]
            r = ranks[e]
            h = x.index_select(0, token) @ A[e, :r].T
            y = (h @ Bt[e, :r]) * (weights[rows, None] * scale[e])
            out.index_add_(0, token, y)
        start += count
    return out


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
    else:
        y = grouped_lora(x2, routing, A, Bt, scale_list, ranks)
    return y.view(*lead, -1)
