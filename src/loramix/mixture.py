"""The mixture model: frozen LoRA experts placed inside any HF causal LM, chosen per token by a router.

``compose`` replaces every Linear an expert targets with a ``RoutedLinear`` and hooks its parent
module (a *site*: e.g. ``model.layers.3.mlp``). The site's router decides once per token, on the
site's input, and all its projections use that decision: gate_proj and up_proj apply their experts to
the MLP input, down_proj to the activated hidden state. The base model keeps its module names apart
from the ``base_layer`` of each routed Linear (as in PEFT).

Only the router(s) and the optional attention LoRA (a PEFT LoRA on q/k/v/o) train; expert tensors are
buffers with ``requires_grad=False`` (unless ``trainable_experts``, as ReMix needs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from loramix import __version__
from loramix.errors import LoramixError
from loramix.experts import (CONFIG_NAME, WEIGHTS_NAME, Expert, ExpertNotFoundError, LoraWeights, check_expert_digests,
                             find_expert, load_expert, load_experts, stack_module)
from loramix.io import atomic_path, read_json
from loramix.kernels import add_routed_lora
from loramix.routers import (Routing, RouterOptions, build_options, fixed_routing, load_balance_loss, make_router,
                             router_class, z_loss)

MIXTURE_CONFIG = "mixture_config.json"
MIXTURE_WEIGHTS = "mixture.safetensors"
ATTENTION_ADAPTER = "attention"
FORMAT_VERSION = 2  # 1 stored the router's options as "router_kwargs"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class MixtureConfig:
    """Every option of a mixture: how tokens are routed and what trains. ``compose`` builds the model
    from it, ``save_pretrained`` stores ``to_dict()`` and ``load_mixture`` rebuilds it.

    router: ``hard`` (MoR-LoRA), ``soft``, ``topk``, ``gumbel``, ``remix`` or ``fixed``.
    top_k: experts per token (None: the router's default; hard 1, topk and remix 2, soft all).
    shared_router: one router for all sites (MoR-LoRA) or one per site (ReMix).
    router_options: the router's own ``Options`` (e.g. ``HardOptions(ste="chosen")``); None: defaults.
    attention_lora_rank: if > 0, a trainable PEFT LoRA on ``attention_targets`` (alpha: None = rank;
    dropout: ``attention_lora_dropout``).
    load_balance_coef, z_loss_coef: auxiliary losses added to the training loss.
    trainable_experts: the experts train too (ReMix); else they are frozen buffers.
    """

    router: str = "hard"
    top_k: int | None = None
    shared_router: bool = True
    router_options: RouterOptions | None = None
    attention_lora_rank: int = 0
    attention_lora_alpha: float | None = None
    attention_lora_dropout: float = 0.0  # PEFT LoraConfig.lora_dropout of the attention LoRA
    attention_targets: tuple[str, ...] = ATTENTION_TARGETS
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    trainable_experts: bool = False

    def __post_init__(self):
        self.router_options = build_options(router_class(self.router), self.router_options)
        self.attention_targets = tuple(self.attention_targets)
        if not 0 <= self.attention_lora_dropout < 1:
            raise LoramixError(f"attention_lora_dropout must be in [0, 1), got {self.attention_lora_dropout!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_targets"] = list(self.attention_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = "mixture config") -> "MixtureConfig":
        """The config recorded in a saved mixture; other keys (metadata) are ignored."""
        d = dict(d)
        if "router_kwargs" in d and "router_options" not in d:  # format 1
            d["router_options"] = d.pop("router_kwargs")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (LoramixError, TypeError) as err:
            raise LoramixError(f"{source}: {err}") from None


class RoutedLinear(nn.Module):
    """``base_layer(x)`` plus the routed experts' LoRA delta, using its site's current routing."""

    def __init__(self, base_layer: nn.Linear, A, B, scale, ranks: list[int], site: "RouteSite",
                 trainable: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        Bt = B.transpose(1, 2).contiguous()
        if trainable:  # the scale stays apart, so the experts train in their own parametrisation
            self.expert_A, self.expert_Bt = nn.Parameter(A), nn.Parameter(Bt)
            self.register_buffer("expert_scale", scale, persistent=False)
        else:  # frozen: the scale is folded into B once (two fewer ops per projection and step)
            self.register_buffer("expert_A", A, persistent=False)
            self.register_buffer("expert_Bt", Bt * scale.to(Bt.dtype)[:, None, None], persistent=False)
            self.expert_scale = None
        self.ranks = list(ranks)
        object.__setattr__(self, "site", site)  # a back-reference, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        routing = self.site.routing
        if routing is None:
            return out
        A, Bt = self.expert_A.to(x.dtype), self.expert_Bt.to(x.dtype)
        return add_routed_lora(out, x, routing, A, Bt, self.expert_scale, self.ranks)

    def extra_repr(self) -> str:
        return f"experts={len(self.ranks)}, ranks={self.ranks}"


@dataclass
class RouteSite:
    """A module whose input is routed (e.g. one layer's MLP); its projections share the decision."""

    name: str
    router_index: int
    routing: Routing | None = None
    trace: list | None = None


@dataclass
class SiteTrace:
    """What a site decided since the last reset: per token expert ids, weights and probabilities."""

    site: str
    expert_ids: torch.Tensor  # [batch, seq, k]
    weights: torch.Tensor  # [batch, seq, k]
    probs: torch.Tensor  # [batch, seq, E]


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class MixtureModel(nn.Module):
    """An HF causal LM with routed LoRA experts. Forwards ``forward``/``generate`` and any unknown
    attribute (``config``, ``generation_config``, ...) to the wrapped model, so HF's ``Trainer`` and
    TRL's trainers take it like a model."""

    def __init__(self, model: nn.Module, experts: list[Expert], sites: list[RouteSite],
                 routers: nn.ModuleList, mixture_config: MixtureConfig):
        super().__init__()
        self.model = model
        self.routers = routers
        self.experts = experts
        self.sites = sites
        self.mixture_config = mixture_config  # not ``config``: that is the wrapped model's, for HF
        self.metadata: dict = {}  # saved beside the config (e.g. a baseline's expert_for_task)
        self._override: dict | None = None
        self.record_routing = True

    # -- delegation ------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    # -- routing ---------------------------------------------------------------------------------
    def _route(self, site: RouteSite, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if self._override is not None:
            routing = fixed_routing(tuple(x.shape[:-1]), self.num_experts, x.device, **self._override)
        else:
            routing = self.routers[site.router_index](x)
        site.routing = routing
        if self.record_routing:
            rec = (routing.indices.detach(), routing.weights.detach(), routing.probs.detach())
            if site.trace is None:
                site.trace = []
            site.trace.append(rec)  # one record per call: decoding appends, no list copy per step

    def reset_routing_trace(self) -> None:
        for site in self.sites:
            site.trace = None

    def routing_trace(self) -> list[SiteTrace]:
        """Per site (layer), the expert ids, weights and router probabilities of every token seen
        since the last ``forward`` or ``generate`` began; generation steps are concatenated."""
        out = []
        for site in self.sites:
            if not site.trace:
                continue
            idx, w, p = (torch.cat([rec[i] for rec in site.trace], dim=1) for i in range(3))
            out.append(SiteTrace(site.name, idx, w, p))
        return out

    @contextlib.contextmanager
    def force_expert(self, expert: int):
        """Send every token, at every site, to ``expert`` (unit weight)."""
        if not 0 <= int(expert) < self.num_experts:
            raise LoramixError(f"expert must lie in 0..{self.num_experts - 1}, got {expert}")
        with self._overridden({"expert": int(expert)}):
            yield self

    @contextlib.contextmanager
    def route_sequences(self, expert_ids):
        """Send every token of sequence b to expert ``expert_ids[b]`` (oracle / prompt-level routing)."""
        with self._overridden({"sequence_experts": torch.as_tensor(expert_ids)}):
            yield self

    @contextlib.contextmanager
    def route_tokens(self, assign):
        """Send token t of sequence b to expert ``assign(input_ids)[b][t]``. ``assign`` sees the
        token ids of every forward of the wrapped model (the prompt, then each decoding step's new
        token), so it can route by what the text says so far (the segment oracle does)."""
        override: dict = {"token_experts": None}

        def before_forward(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            override["token_experts"] = torch.as_tensor(assign(ids))

        handle = self.model.register_forward_pre_hook(before_forward, with_kwargs=True)
        try:
            with self._overridden(override):
                yield self
        finally:
            handle.remove()

    @contextlib.contextmanager
    def fixed_weights(self, weights):
        """Every token uses all experts with the dense weights ``weights`` ([E])."""
        with self._overridden({"weights": weights}):
            yield self

    @contextlib.contextmanager
    def _overridden(self, override: dict):
        previous, self._override = self._override, override
        try:
            yield
        finally:
            self._override = previous

    def aux_loss(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The enabled auxiliary losses, averaged over the sites of the last forward; padding
        (``attention_mask`` == 0) is left out of the load-balance loss."""
        cfg = self.mixture_config
        routings = [s.routing for s in self.sites if s.routing is not None and s.routing.logits is not None]
        total = next(self.parameters()).new_zeros(())
        if not routings:
            return total
        if cfg.load_balance_coef:
            mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            balance = sum(load_balance_loss(r, mask) for r in routings) / len(routings)
            total = total + cfg.load_balance_coef * balance
        if cfg.z_loss_coef:
            total = total + cfg.z_loss_coef * sum(z_loss(r) for r in routings) / len(routings)
        return total

    # -- model API -------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        self.reset_routing_trace()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if self.training and (self.mixture_config.load_balance_coef or self.mixture_config.z_loss_coef):
            aux = self.aux_loss(attention_mask)
            out["aux_loss"] = aux
            if getattr(out, "loss", None) is not None:
                out["loss"] = out.loss + aux
        return out

    def generate(self, *args, **kwargs):
        self.reset_routing_trace()
        return self.model.generate(*args, **kwargs)

    def trainable_parameters(self) -> int:
        """The exact number of trainable parameters (each shared tensor counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> dict[str, int]:
        groups = {"router": 0, "attention_lora": 0, "experts": 0, "other": 0}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = ("router" if name.startswith("routers.") else "attention_lora" if "lora_" in name
                   else "experts" if ".expert_" in name else "other")
            groups[key] += p.numel()
        groups["total"] = sum(groups.values())
        return groups

    def set_router_step(self, step: int) -> None:
        for r in self.routers:
            r.set_step(step)

    # -- save / load -----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad} | {
            n: b.detach().cpu().contiguous() for n, b in self.routers.named_buffers(prefix="routers")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str | Path = "state dict") -> None:
        """Load what ``trainable_state_dict`` wrote; the keys and shapes must match exactly."""
        expected = self.trainable_state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise LoramixError(f"{source}: keys do not match the mixture config "
                               f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise LoramixError(f"{source}: {key}: shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
        self.load_state_dict(state, strict=False)

    def save_pretrained(self, save_directory: str | Path, **_ignored) -> Path:
        """Write the router(s), the attention LoRA and any trainable experts (safetensors) plus
        ``mixture_config.json`` naming each expert folder and its sha256. Atomic."""
        save_directory = Path(save_directory)
        config = {**self.mixture_config.to_dict(), **self.metadata}
        name_or_path = getattr(self.model.config, "_name_or_path", None)
        base_model = {"class": type(self.model).__name__, "name_or_path": name_or_path}
        if name_or_path and Path(name_or_path).is_dir():
            base_model["path"] = recorded_path(name_or_path, save_directory)
        config.update(
            format_version=FORMAT_VERSION,
            loramix_version=__version__,
            base_model=base_model,
            experts=[_expert_entry(e, self.mixture_config.trainable_experts, save_directory) for e in self.experts],
            sites=[s.name for s in self.sites],
            trainable_parameters=self.trainable_parameters(),
        )
        with atomic_path(save_directory) as tmp:
            tmp.mkdir()
            save_file(self.trainable_state_dict(), str(tmp / MIXTURE_WEIGHTS))
            (tmp / MIXTURE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return save_directory


def recorded_path(folder: str | Path, mixture_dir: str | Path) -> str:
    """How a saved mixture names ``folder``: relative to ``mixture_dir`` when both lie under a common
    project root (so moving that root keeps the mixture whole), absolute otherwise. The filesystem
    root, the home folder and the folders above it do not count as a common root."""
    folder, mixture_dir = Path(folder).expanduser().resolve(), Path(mixture_dir).expanduser().resolve()
    common = Path(os.path.commonpath([folder, mixture_dir]))
    home = Path.home().resolve()
    if common == Path(common.anchor) or common == home or common in home.parents:
        return str(folder)
    return Path(os.path.relpath(folder, mixture_dir)).as_posix()


def _expert_entry(e: Expert, trainable: bool, mixture_dir: Path) -> dict:
    entry = {"name": e.name, "path": None if trainable or e.path is None else recorded_path(e.path, mixture_dir),
             "sha256": e.sha256}
    if entry["path"] is not None and not Path(entry["path"]).is_absolute():
        entry["absolute_path"] = str(Path(e.path).resolve())  # a fallback when the mixture alone moves
    if entry["path"] is None:
        entry["modules"] = {m: {"rank": w.rank, "scale": w.scale, "in": w.A.shape[1], "out": w.B.shape[0]}
                            for m, w in e.modules.items()}
    return entry


def _as_experts(experts, model, names) -> list[Expert]:
    if all(isinstance(e, Expert) for e in experts):
        return list(experts)
    if any(isinstance(e, Expert) for e in experts):
        raise LoramixError("pass either Expert objects or adapter folders, not both")
    return load_experts(experts, model, names)


def compose(model: nn.Module, experts, config: MixtureConfig | None = None, *,
            expert_names: list[str] | None = None, seed: int | None = None, **options) -> MixtureModel:
    """Place ``experts`` (PEFT adapter folders or ``Expert`` objects) inside ``model`` and route them
    as ``config`` says. Keyword ``options`` are sugar for a ``MixtureConfig``:
    ``compose(model, folders, router="soft")``. ``seed`` seeds the routers' initial weights.
    The base model's own parameters are frozen. ``model`` is modified in place.
    """
    if config is not None and options:
        raise LoramixError("give compose a MixtureConfig or keyword options, not both")
    config = config if config is not None else MixtureConfig(**options)
    if isinstance(model, MixtureModel):
        raise LoramixError("model is already a mixture")
    experts = _as_experts(list(experts), model, expert_names)
    if not experts:
        raise LoramixError("compose needs at least one expert")
    for p in model.parameters():
        p.requires_grad_(False)
    targets = sorted({m for e in experts for m in e.modules})
    site_names = sorted({t.rpartition(".")[0] for t in targets}, key=_natural_key)
    hidden = _text_config(model.config).hidden_size
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        routers = nn.ModuleList(
            make_router(config.router, hidden, len(experts), config.top_k, config.router_options)
            for _ in range(1 if config.shared_router else len(site_names)))
        config = dataclasses.replace(config, top_k=routers[0].top_k)
        sites = [RouteSite(name, 0 if config.shared_router else i) for i, name in enumerate(site_names)]
        mixture = MixtureModel(model, experts, sites, routers, config)
        _route_targets(mixture, targets)
        if config.attention_lora_rank:
            _add_attention_lora(model, config, set(targets))
    mixture.to(next(model.parameters()).device)
    return mixture


def compose_folders(base: str | Path, experts, out: str | Path, config: MixtureConfig | None = None, *,
                    seed: int = 0, names: list[str] | None = None) -> Path:
    """``loramix compose``: the user's own PEFT LoRA adapters over a base model, with a freshly
    initialised (``seed``) router, saved as a mixture at ``out`` (atomic). ``base`` is a model
    folder, ``default`` or a Hub id; each expert a PEFT folder or a Hub id (downloaded only when no
    such local path exists). Experts are named after their folders (a Hub id: its repo name)."""
    from loramix.loading import load_base, local_or_hub

    experts = [str(e) for e in experts]
    if not experts:
        raise LoramixError("no experts given (--experts DIR,...)")
    folders = [local_or_hub(e, "--experts") for e in experts]
    for given, folder in zip(experts, folders):
        if not (folder / CONFIG_NAME).is_file():
            raise LoramixError(f"{folder}: --experts: not a PEFT adapter folder (no {CONFIG_NAME})")
    if names is None:
        names = [folder.name if folder == Path(given).expanduser() else given.rsplit("/", 1)[-1]
                 for given, folder in zip(experts, folders)]
    model, _tok, _path = load_base(base if str(base) == "default" else local_or_hub(base, "--base"))
    mixture = compose(model, folders, config or MixtureConfig(), expert_names=list(names), seed=seed)
    return mixture.save_pretrained(out)


def _route_targets(mixture: MixtureModel, targets: list[str]) -> None:
    """Replace each targeted Linear by a ``RoutedLinear`` and hook each site's router on its input."""
    modules = dict(mixture.model.named_modules())
    by_name = {s.name: s for s in mixture.sites}
    for target in targets:
        base = modules[target]
        stack = stack_module(mixture.experts, target, base.in_features, base.out_features)
        site = by_name[target.rpartition(".")[0]]
        routed = RoutedLinear(base, stack.A, stack.B, stack.scale, stack.ranks, site,
                              mixture.mixture_config.trainable_experts)
        routed.to(device=base.weight.device)
        parent_name, _, child = target.rpartition(".")
        setattr(modules[parent_name], child, routed)
    for site in mixture.sites:
        modules[site.name].register_forward_pre_hook(functools.partial(mixture._route, site), with_kwargs=True)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in name.split(".")]


def _add_attention_lora(model, mixture_config: MixtureConfig, routed: set[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    rank, targets = mixture_config.attention_lora_rank, list(mixture_config.attention_targets)
    alpha = mixture_config.attention_lora_alpha or rank
    clash = [m for m in routed if m.rpartition(".")[2] in targets]
    if clash:
        raise LoramixError(f"attention LoRA targets {targets} overlap routed expert modules, e.g. {clash[0]}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=mixture_config.attention_lora_dropout,
                        target_modules=targets, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ATTENTION_ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(f"lora_A.{ATTENTION_ADAPTER}." in name or f"lora_B.{ATTENTION_ADAPTER}." in name)


def load_mixture(mixture_dir: str | Path, model: nn.Module, *, accept_changed_experts: bool = False,
                 expert_paths: list[str | Path] | None = None,
                 experts_dir: str | Path | None = None) -> MixtureModel:
    """Restore a mixture saved by ``MixtureModel.save_pretrained`` onto ``model`` (the same base).

    Each expert is looked for in ``expert_paths[i]`` if given, else in ``experts_dir`` (a subfolder
    of its name, or any adapter folder below whose weights have the recorded sha256), else at its
    recorded path (relative to ``mixture_dir``, or absolute). A missing expert is an
    ``ExpertNotFoundError``; a file whose sha256 differs from the recorded one is an
    ``ExpertChangedError`` unless ``accept_changed_experts``.
    """
    mixture_dir = Path(mixture_dir)
    cfg_path = mixture_dir / MIXTURE_CONFIG
    cfg = read_json(cfg_path, "missing; not a loramix mixture folder")
    for key in ("experts", "router", "shared_router"):
        if key not in cfg:
            raise LoramixError(f"{cfg_path}: field {key!r} missing")
    entries = cfg["experts"]
    if expert_paths is not None and len(expert_paths) != len(entries):
        raise LoramixError(f"{cfg_path}: expects {len(entries)} experts, got {len(expert_paths)} expert_paths")
    experts = [_saved_expert(entry, i, cfg_path, model,
                             saved_expert_folder(entry, i, mixture_dir, experts_dir, expert_paths),
                             accept_changed_experts)
               for i, entry in enumerate(entries)]
    config = MixtureConfig.from_dict(cfg, cfg_path)
    mixture = compose(model, experts, config)
    known = set(config.to_dict()) | _SAVED_KEYS
    mixture.metadata = {k: v for k, v in cfg.items() if k not in known}
    weights_path = mixture_dir / MIXTURE_WEIGHTS
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise LoramixError(f"{weights_path}: missing or corrupt ({err})") from None
    mixture.load_trainable_state_dict(state, weights_path)
    return mixture


# keys save_pretrained writes beside the config and the metadata
_SAVED_KEYS = {"format_version", "loramix_version", "base_model", "experts", "sites", "trainable_parameters",
               "router_kwargs"}


def saved_expert_folder(entry: dict, i: int, mixture_dir: str | Path, experts_dir: str | Path | None = None,
                        expert_paths=None) -> Path | None:
    """Where expert ``i`` (``entry``, from a saved ``mixture_config.json``) lives now: see
    ``load_mixture``. None for a trainable expert (its tensors are in the mixture file). When it is
    found nowhere, the recorded place is returned, so the digest check reports what is missing."""
    if entry.get("path") is None:
        return None
    if expert_paths is not None:
        return Path(expert_paths[i])
    recorded = Path(entry["path"])
    if experts_dir is not None:
        found = find_expert(experts_dir, [recorded.name, entry.get("name", "")], entry.get("sha256", {}))
        if found is not None:
            return found
    here = recorded if recorded.is_absolute() else Path(os.path.normpath(Path(mixture_dir) / recorded))
    candidates = [here] + ([Path(entry["absolute_path"])] if entry.get("absolute_path") else [])
    for folder in candidates:
        if (folder / CONFIG_NAME).is_file():
            return folder
    return here


def _saved_expert(entry: dict, i: int, cfg_path: Path, model, folder: Path | None, accept_changed: bool) -> Expert:
    """Expert ``i`` of a saved mixture: read from ``folder`` (checked against the recorded sha256),
    or, for trainable experts, zero tensors of the recorded shapes that the mixture file fills."""
    if folder is None:
        modules = {m: LoraWeights(torch.zeros(s["rank"], s["in"]), torch.zeros(s["out"], s["rank"]), s["scale"])
                   for m, s in entry["modules"].items()}
        return Expert(entry["name"], None, {}, modules, {})
    check_saved_expert(entry, i, folder, cfg_path, accept_changed)
    return load_expert(folder, model, entry["name"])


def check_saved_expert(entry: dict, i: int, folder: Path, cfg_path: Path, accept_changed: bool = False) -> None:
    """``ExpertNotFoundError`` if expert ``i`` is not in ``folder``; ``ExpertChangedError`` if its
    files differ from the sha256 ``cfg_path`` recorded (unless ``accept_changed``)."""
    if not (folder / CONFIG_NAME).is_file():  # also for old mixtures that recorded no sha256
        raise ExpertNotFoundError(f"expert {entry.get('name')} not found at {folder} (recorded in {cfg_path}, "
                                  f"experts[{i}]); pass --experts-dir DIR (experts_dir= in Python) naming a folder "
                                  "that holds it")
    check_expert_digests(folder, entry.get("sha256") or {}, f"{cfg_path} (experts[{i}].sha256)", accept_changed,
                         hint="load_mixture(..., accept_changed_experts=True) loads it anyway",
                         name=entry.get("name"))


def recorded_base(mixture_dir: str | Path) -> str | None:
    """The base model folder a saved mixture recorded, if it is there now (its recorded path, taken
    relative to ``mixture_dir`` when relative, else the ``name_or_path`` it was loaded from)."""
    mixture_dir = Path(mixture_dir)
    try:
        base = json.loads((mixture_dir / MIXTURE_CONFIG).read_text()).get("base_model") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    for key in ("path", "name_or_path"):
        value = base.get(key) if isinstance(base, dict) else None
        if not value:
            continue
        folder = Path(value) if Path(value).is_absolute() or key == "name_or_path" else mixture_dir / value
        if folder.is_dir():
            return str(folder)
    return None


__all__ = ["MixtureConfig", "MixtureModel", "RoutedLinear", "RouteSite", "SiteTrace", "compose", "load_mixture",
           "check_saved_expert", "compose_folders", "recorded_base", "recorded_path", "saved_expert_folder", "CONFIG_NAME", "WEIGHTS_NAME"]
