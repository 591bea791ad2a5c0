"""Routers: which experts each token uses, and with what weight.

Every router shares one forward: a linear gate on the token's hidden state, softmax in fp32, then
``select()``. Variants differ only in ``select``:

=========  ==========================================================================================
hard       top-1 (or hard top-k); each chosen expert gets weight exactly 1 in the forward pass, and the
           straight-through estimator ``w = 1 + p - stopgrad(p)`` carries the gradient (MoR-LoRA)
soft       all experts, weighted by the softmax (MoLE / LoRAMixer)
topk       the k most probable, weighted by their probability, optionally renormalised (MixLoRA)
gumbel     Gumbel-softmax with an annealed temperature; hard (straight-through) or soft
remix      k experts sampled without replacement from softmax(Px) in training, top-k in eval; each
           active expert gets a constant weight omega; exposes log Q(selection) for RLOO (ReMix)
fixed      no gate: every token to one expert, a per-sequence expert id, or fixed dense weights
=========  ==========================================================================================
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from loramix.errors import LoramixError, unknown_name


@dataclass
class Routing:
    """A routing decision for a batch of tokens (leading shape ``[...]``, usually ``[batch, seq]``).

    indices: [..., k] chosen experts (for dense routing k == E and indices == arange(E)).
    weights: [..., k] the weight of each chosen expert (fp32, may carry gradient to the router).
    probs:   [..., E] the router distribution the choice was made from (fp32).
    logits:  [..., E] the gate logits, or None for routers without a gate.
    log_prob: [...] log-probability of a sampled selection (ReMix, for RLOO), else None.
    unit_weights: every weight is exactly 1 and carries no gradient (kernels skip the multiply).
    dense_weights: [..., E] straight-through weights over *all* experts whose value is the hard choice
        (``onehot - stopgrad(p) + p``): kernels then compute every expert, so that each expert's
        probability gets a gradient (training only); ``indices``/``weights`` still name the choice.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    dense: bool = False
    unit_weights: bool = False
    dense_weights: torch.Tensor | None = None
    _plan: object = field(default=None, repr=False, compare=False)  # kernels' cached dispatch plan

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]


def sorted_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores; ties go to the lower expert index, deterministically."""
    if k == 1:
        return scores.argmax(dim=-1, keepdim=True)  # first maximal index on ties
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def fixed_routing(shape: tuple[int, ...], num_experts: int, device, expert=None, sequence_experts=None,
                  weights=None, token_experts=None) -> Routing:
    """Routing without a gate. ``expert``: an int for every token; ``sequence_experts``: a [batch]
    tensor of expert ids, one per sequence; ``token_experts``: a [batch, seq] tensor, one id per
    token; ``weights``: a dense [E] weight vector for every token."""
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float32, device=device)
        if w.shape != (num_experts,):
            raise LoramixError(f"fixed routing weights must have {num_experts} entries, got {tuple(w.shape)}")
        idx = torch.arange(num_experts, device=device).expand(*shape, num_experts)
        ww = w.expand(*shape, num_experts)
        return Routing(idx, ww, ww / w.sum().clamp_min(1e-12), dense=True)
    if sequence_experts is not None:
        ids = torch.as_tensor(sequence_experts).long()
        if ids.shape[0] != shape[0]:
            raise LoramixError(f"sequence_experts has {ids.shape[0]} ids for a batch of {shape[0]}")
        # checked where the ids were given (usually the CPU), so decoding pays no device sync
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
            raise LoramixError(f"expert ids must lie in 0..{num_experts - 1}")
        idx = ids.to(device).view(-1, *([1] * (len(shape) - 1))).expand(*shape).unsqueeze(-1)
    elif token_experts is not None:
        ids = torch.as_tensor(token_experts).long()
        if tuple(ids.shape) != tuple(shape):
            raise LoramixError(f"token_experts has shape {tuple(ids.shape)}, expected {tuple(shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
            raise LoramixError(f"expert ids must lie in 0..{num_experts - 1}")
        idx = ids.to(device).unsqueeze(-1)
    else:
        if expert is None:
            raise LoramixError("fixed routing needs an expert, sequence_experts or weights")
        if not 0 <= int(expert) < num_experts:
            raise LoramixError(f"expert ids must lie in 0..{num_experts - 1}")
        idx = torch.full((*shape, 1), int(expert), dtype=torch.long, device=device)
    probs = F.one_hot(idx[..., 0], num_experts).float()
    return Routing(idx, torch.ones(idx.shape, device=device), probs, unit_weights=True)


@dataclass
class RouterOptions:
    """Options every gated router has. Each router declares its own as a subclass (``Router.Options``)."""

    init_std: float = 0.02  # the gate's initial weights ~ N(0, init_std)


class Router(nn.Module):
    """Linear gate + fp32 softmax; subclasses choose and weight experts in ``select``.

    Options come as ``options`` (an instance of the class's ``Options``) or as keyword fields of it:
    ``HardRouter(64, 4, ste="chosen")`` is ``HardRouter(64, 4, options=HardOptions(ste="chosen"))``."""

    kind = "base"
    Options: type = RouterOptions
    default_top_k = 1

    def __init__(self, hidden_size: int, num_experts: int, top_k: int | None = None,
                 options: RouterOptions | None = None, **fields):
        super().__init__()
        self.options = build_options(type(self), options, fields)
        top_k = self.resolve_top_k(top_k, num_experts)
        if not 1 <= top_k <= num_experts:
            raise LoramixError(f"top_k must lie in 1..{num_experts} (the number of experts), got {top_k}")
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=self.options.init_std)

    def resolve_top_k(self, top_k: int | None, num_experts: int) -> int:
        """The k this router uses when asked for ``top_k`` (None: its default, at most E)."""
        return min(self.default_top_k, num_experts) if top_k is None else top_k

    def forward(self, x: torch.Tensor) -> Routing:
        logits = F.linear(x.float(), self.gate.weight.float())
        return self.select(logits, logits.softmax(dim=-1))

    def select(self, logits: torch.Tensor, probs: torch.Tensor) -> Routing:
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Called by training callbacks each optimizer step (temperature schedules)."""


def build_options(cls: type, options=None, fields: dict | None = None):
    """``cls.Options`` from an instance, a dict (a saved config) or keyword fields, with a clear error
    for a field the router does not have or a value it refuses."""
    Options = cls.Options
    if options is not None and fields:
        raise LoramixError(f"router {cls.kind!r}: give options or keyword fields, not both")
    if isinstance(options, Options):
        return options
    values = dict(options if isinstance(options, dict) else fields or {})
    if options is not None and not isinstance(options, dict):
        raise LoramixError(f"router {cls.kind!r} takes {Options.__name__}, got {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LoramixError(f"router {cls.kind!r} has no option {unknown[0]!r} "
                           f"(its options: {', '.join(sorted(known)) or 'none'})")
    return Options(**values)


def straight_through(idx: torch.Tensor, y: torch.Tensor, probs: torch.Tensor, logits, ste: str) -> Routing:
    """Hard choice ``idx`` at unit weight, with the straight-through gradient of ``y`` (the router's
    probabilities, or Gumbel-perturbed ones). ``ste="full"``: ``w = onehot - stopgrad(y) + y`` over
    every expert, so the backward needs every expert's output (computed densely, in training only);
    ``ste="chosen"``: only the chosen experts' ``1 + y - stopgrad(y)``, which keeps training sparse
    but gives the unchosen experts no gradient."""
    if not y.requires_grad:  # inference: the straight-through weight is exactly 1
        return Routing(idx, torch.ones(idx.shape, device=idx.device), probs, logits, unit_weights=True)
    if ste == "full":
        w = torch.zeros_like(y).scatter_(-1, idx, 1.0) + (y - y.detach())
        return Routing(idx, w.gather(-1, idx), probs, logits, dense_weights=w)
    p = y.gather(-1, idx)
    return Routing(idx, 1.0 + (p - p.detach()), probs, logits)


STE_MODES = ("full", "chosen")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LoramixError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class HardOptions(RouterOptions):
    """``ste="full"``: the paper's estimator ``onehot - stopgrad(p) + p`` over every expert;
    ``ste="chosen"``: the gradient of the chosen expert's entry only (the authors' released code)."""

    ste: str = "full"

    def __post_init__(self):
        _check_choice("ste", self.ste, STE_MODES)


class HardRouter(Router):
    """MoR-LoRA: the top-1 (or top-k) experts at unit weight, gradient by straight-through
    (``ste``: see ``straight_through``; inference computes only the chosen experts either way)."""

    kind = "hard"
    Options = HardOptions

    def select(self, logits, probs):
        return straight_through(sorted_topk(probs, self.top_k), probs, probs, logits, self.options.ste)


class SoftRouter(Router):
    """Dense softmax over all experts (MoLE / LoRAMixer)."""

    kind = "soft"

    def resolve_top_k(self, top_k, num_experts):
        return num_experts

    def select(self, logits, probs):
        idx = torch.arange(self.num_experts, device=probs.device).expand_as(probs)
        return Routing(idx, probs, probs, logits, dense=True)


@dataclass
class TopKOptions(RouterOptions):
    normalize: bool = True  # renormalise the k weights to sum 1 (MixLoRA)


class TopKRouter(Router):
    """Top-k experts weighted by their softmax probability; ``normalize`` renormalises to sum 1."""

    kind = "topk"
    Options = TopKOptions
    default_top_k = 2

    def select(self, logits, probs):
        idx = sorted_topk(probs, self.top_k)
        w = probs.gather(-1, idx)
        if self.options.normalize:
            w = w / w.sum(-1, keepdim=True)
        return Routing(idx, w, probs, logits)


@dataclass
class GumbelOptions(RouterOptions):
    hard: bool = True  # top-1 with straight-through weights; else dense Gumbel-softmax weights
    tau_start: float = 2.0
    tau_end: float = 0.5
    anneal_steps: int = 1000
    ste: str = "full"  # as HardOptions.ste

    def __post_init__(self):
        _check_choice("ste", self.ste, STE_MODES)


class GumbelRouter(Router):
    """Gumbel-softmax. The temperature anneals exponentially from ``tau_start`` to ``tau_end`` over
    ``anneal_steps`` optimizer steps. ``hard``: top-1 with straight-through weights; else dense.
    Evaluation uses no noise."""

    kind = "gumbel"
    Options = GumbelOptions

    def __init__(self, hidden_size, num_experts, top_k=None, options=None, **fields):
        super().__init__(hidden_size, num_experts, top_k, options, **fields)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def resolve_top_k(self, top_k, num_experts):
        return 1 if self.options.hard else num_experts

    @property
    def temperature(self) -> float:
        o = self.options
        frac = min(int(self.step) / max(o.anneal_steps, 1), 1.0)
        return o.tau_start * (o.tau_end / o.tau_start) ** frac

    def set_step(self, step):
        self.step.fill_(step)

    def select(self, logits, probs):
        if self.training:
            gumbel = -torch.empty_like(logits).exponential_().log()
            y = ((logits + gumbel) / self.temperature).softmax(-1)
        else:
            y = probs
        if not self.options.hard:
            idx = torch.arange(self.num_experts, device=y.device).expand_as(y)
            return Routing(idx, y, probs, logits, dense=True)
        return straight_through(sorted_topk(y, 1), y, probs, logits, self.options.ste)


OMEGAS = ("linear", "sqrt")
LOGQ_MODES = ("ordered", "set")


@dataclass
class ReMixOptions(RouterOptions):
    rank: int = 8  # the experts' rank r, in omega
    omega: str = "linear"  # 2/(k r), the LoRA type; "sqrt": 2/sqrt(k r), the rsLoRA type
    logq: str = "ordered"  # log Q of the ordered draw, or "set": of the unordered set (sum over its orders)
    inference: str = "topk"  # eval mode takes the top k; "sample": draws k as in training (an ablation)

    def __post_init__(self):
        _check_choice("omega", self.omega, OMEGAS)
        _check_choice("logq", self.logq, LOGQ_MODES)
        _check_choice("inference", self.inference, ("topk", "sample"))


class ReMixRouter(Router):
    """ReMix: in training, k experts drawn without replacement from softmax(Px) (Gumbel-top-k, which
    is sequential sampling without replacement); in eval, the top-k. Each active expert gets the
    constant weight omega = 2/(k*r) (``omega="linear"``) or 2/sqrt(k*r) (``omega="sqrt"``), so no
    expert dominates. ``Routing.log_prob`` is log Q of the ordered draw,
    sum_j [log p_(j) - log(1 - sum_{l<j} p_(l))], whose score-function gradient RLOO uses; the
    weights carry no gradient to the router. ``logq="set"``: log Q of the unordered set instead (the
    log-sum over its k! orders). The loss depends only on the set, so both are unbiased; the set's
    score has lower variance (an enumeration check measured 18% at k=2). Exact, so meant for small k."""

    kind = "remix"
    Options = ReMixOptions
    default_top_k = 2

    def __init__(self, hidden_size, num_experts, top_k=None, options=None, **fields):
        super().__init__(hidden_size, num_experts, top_k, options, **fields)
        kr = self.top_k * self.options.rank
        self.weight_value = 2.0 / kr if self.options.omega == "linear" else 2.0 / math.sqrt(kr)

    def select(self, logits, probs):
        log_prob = None
        if self.training or self.options.inference == "sample":
            gumbel = -torch.empty_like(logits).exponential_().log()
            idx = torch.sort(logits.detach() + gumbel, dim=-1, descending=True).indices[..., : self.top_k]
            if self.training:
                log_prob = selection_log_prob(probs, idx, unordered=self.options.logq == "set")
        else:
            idx = sorted_topk(probs, self.top_k)
        w = torch.full(idx.shape, self.weight_value, device=probs.device)
        return Routing(idx, w, probs, logits, log_prob=log_prob)


def selection_log_prob(probs: torch.Tensor, idx: torch.Tensor, unordered: bool = False) -> torch.Tensor:
    """log Q of drawing ``idx`` (in order) without replacement from ``probs``: [..., k] -> [...].
    ``unordered``: log Q of the set ``idx`` holds, log sum over its k! orders of the ordered Q."""
    orders = list(itertools.permutations(range(idx.shape[-1]))) if unordered else [tuple(range(idx.shape[-1]))]
    logs = []
    for order in orders:
        p = probs.gather(-1, idx[..., list(order)])
        taken = torch.cumsum(p, dim=-1) - p  # mass removed before each draw
        logs.append((p.clamp_min(1e-30).log() - (1.0 - taken).clamp_min(1e-30).log()).sum(-1))
    return logs[0] if len(logs) == 1 else torch.logsumexp(torch.stack(logs), dim=0)


@dataclass
class FixedOptions:
    expert: int | None = 0  # every token to this expert, unless weights are given
    weights: list[float] | None = None  # dense fixed weights over all experts


class FixedRouter(nn.Module):
    """No gate and no parameters: every token to ``expert``, or dense fixed ``weights``. (Oracle and
    prompt-level routing send whole sequences with ``MixtureModel.route_sequences``.)"""

    kind = "fixed"
    Options = FixedOptions

    def __init__(self, hidden_size, num_experts, top_k=None, options=None, **fields):
        super().__init__()
        self.options = build_options(type(self), options, fields)
        self.num_experts, self.top_k = num_experts, 1 if top_k is None else top_k

    def forward(self, x):
        return fixed_routing(tuple(x.shape[:-1]), self.num_experts, x.device, self.options.expert,
                             weights=self.options.weights)

    def set_step(self, step):
        pass


ROUTERS: dict[str, type] = {r.kind: r for r in (HardRouter, SoftRouter, TopKRouter, GumbelRouter, ReMixRouter, FixedRouter)}


def router_class(kind: str) -> type:
    if kind not in ROUTERS:
        raise unknown_name("router", kind, ROUTERS)
    return ROUTERS[kind]


def router_options(kind: str, options=None, **fields):
    """The ``Options`` of router ``kind``: keyword fields whose value is None are left at the
    default, so a command line can pass every flag it has and let the router say what it takes."""
    cls = router_class(kind)
    return build_options(cls, options, {k: v for k, v in fields.items() if v is not None})


def make_router(kind: str, hidden_size: int, num_experts: int, top_k: int | None = None, options=None,
                **fields) -> nn.Module:
    return router_class(kind)(hidden_size, num_experts, top_k, options, **fields)


# --- auxiliary losses -------------------------------------------------------------------------


def load_balance_loss(routing: Routing, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer balance loss: E * sum_e f_e * P_e, with f_e the share of assignments to
    expert e and P_e its mean router probability. Equals 1 when perfectly balanced. ``mask``
    ([batch, seq], 1 for real tokens) leaves padding out of both, as Mixtral's loss does."""
    E = routing.num_experts
    probs = routing.probs.reshape(-1, E)
    k = routing.indices.shape[-1]
    m = probs.new_ones(probs.shape[0]) if mask is None else mask.reshape(-1).to(probs.dtype)
    counts = torch.zeros(E, dtype=probs.dtype, device=probs.device)
    counts.index_add_(0, routing.indices.reshape(-1), m.repeat_interleave(k))
    f = counts / counts.sum().clamp_min(1)
    P = (probs * m[:, None]).sum(0) / m.sum().clamp_min(1)
    return E * (f * P).sum()


def z_loss(routing: Routing) -> torch.Tensor:
    """Router z-loss (ST-MoE): mean squared log-sum-exp of the gate logits."""
    if routing.logits is None:
        return routing.probs.new_zeros(())
    return torch.logsumexp(routing.logits.reshape(-1, routing.num_experts), dim=-1).pow(2).mean()


def effective_sample_size(pi: torch.Tensor) -> torch.Tensor:
    """ESS = ||pi||_1^2 / ||pi||_2^2 over the last dim: E for a uniform distribution over E experts,
    1 when one expert takes everything. ReMix's measure of routing collapse."""
    pi = pi.abs()
    return pi.sum(-1).pow(2) / pi.pow(2).sum(-1).clamp_min(1e-30)
