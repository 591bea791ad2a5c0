"""Routing analysis of a loramix mixture: which experts each task's tokens use, how often a token goes
to its own domain's expert, and how concentrated the routing is.

Definitions (``w`` = the weights a token actually used over its chosen experts, normalised to sum 1;
``p`` = the router's softmax over all E experts; every mean is over real tokens only):

* **share** of expert e: the mean over tokens of the normalised weight ``w`` on e (top-1: the
  fraction of tokens sent to e; top-2 at equal weights: half a token to each; soft: the mean prob).
* **routing accuracy**: the share of tokens whose top chosen expert (largest ``w``, the more
  probable on ties) is the expert of the token's own task. **own_mass**: the mean ``w`` on it.
* **max_mass**: mean of ``max(w)`` (soft dense routing: the max prob; top-2 normalised: the larger
  of the two; hard top-1: 1). **entropy**: mean entropy of ``w`` in nats. **ess_token**: the mean
  per-token ESS of ``w``, ``1 / sum(w^2)`` (between 1 and k).
* **ess_of_mean**: ESS = ||pi||_1^2 / ||pi||_2^2 of pi = the router distribution ``p`` averaged over
  the tokens (per layer; between 1 and E). This is ReMix's collapse measure and what ReMix training
  logs as ``ess/<site>``; ``ess_of_mean_layer_avg`` averages it over layers (the logged ``ess_mean``).
  **prob_entropy**: mean entropy of ``p``.

``analyze_mixture`` evaluates the mixture (``loramix.evaluate.evaluate_model`` with
``collect_routing=True``) and writes ``analysis.json``, ``usage_heatmap.png``, ``ess_steps.png`` (with a
training log) and ``tokens.html`` (each token coloured by its expert) into one folder, atomically.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import torch

from loramix.errors import DataError, LoramixError
from loramix.evaluate import (check_tasks, check_writable, evaluate_model, load_for_eval, parse_expert_pairs,
                              parse_tasks, percent, resolve_expert_map, task_options)
from loramix.io import atomic_path
from loramix.mixture import MIXTURE_CONFIG, MixtureModel
from loramix.routers import effective_sample_size
from loramix.tasks.base import DEFAULT_DIFFICULTY

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
FILES = ("analysis.json", "usage_heatmap.png", "ess_steps.png", "tokens.html")


# --- pure metrics -----------------------------------------------------------------------------------


def _flat(t: torch.Tensor, mask: torch.Tensor | None, last: bool = True) -> torch.Tensor:
    """Select the masked tokens: ``[..., X] -> [N, X]`` (``last``) or ``[...] -> [N]``."""
    if mask is not None:
        t = t[mask.bool()]
    return t.reshape(-1, t.shape[-1]) if last else t.reshape(-1)


def normalised_weights(weights: torch.Tensor) -> torch.Tensor:
    """The used weights normalised to sum 1 over the chosen experts (last dim)."""
    w = weights.detach().float().clamp_min(0)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def top_expert(expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per token, the chosen expert with the largest weight (the first chosen on ties, which for
    loramix routers is the more probable): ``[..., k] -> [...]``."""
    return expert_ids.gather(-1, weights.float().argmax(-1, keepdim=True)).squeeze(-1)


def routing_shares(expert_ids: torch.Tensor, weights: torch.Tensor, num_experts: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[E]``: the mean normalised weight each expert gets per token (sums to 1)."""
    ids, w = _flat(expert_ids, mask).long(), _flat(normalised_weights(weights), mask)
    total = torch.zeros(num_experts, dtype=torch.float64)
    total.index_add_(0, ids.reshape(-1), w.reshape(-1).double())
    return (total / max(ids.shape[0], 1)).float()


def routing_accuracy(expert_ids: torch.Tensor, weights: torch.Tensor, target, mask: torch.Tensor | None = None
                     ) -> float | None:
    """The share of tokens whose top chosen expert is ``target`` (an int, or a per-token tensor of
    expert ids where a negative id means "no own expert": left out). None if no token counts."""
    top = top_expert(expert_ids, weights)
    target = torch.as_tensor(target, dtype=torch.long).expand_as(top)
    keep = target >= 0 if mask is None else (target >= 0) & mask.bool()
    if not bool(keep.any()):
        return None
    return float((top[keep] == target[keep]).float().mean())


def own_mass(expert_ids: torch.Tensor, weights: torch.Tensor, target, mask: torch.Tensor | None = None
             ) -> float | None:
    """The mean normalised weight on the ``target`` expert (same conventions as ``routing_accuracy``)."""
    w = normalised_weights(weights)
    target = torch.as_tensor(target, dtype=torch.long).expand(expert_ids.shape[:-1])
    keep = target >= 0 if mask is None else (target >= 0) & mask.bool()
    if not bool(keep.any()):
        return None
    on = ((expert_ids == target.unsqueeze(-1)).float() * w).sum(-1)
    return float(on[keep].mean())


def ess(pi: torch.Tensor):
    """``routers.effective_sample_size`` in float64: a float for a vector, a tensor for a batch."""
    value = effective_sample_size(torch.as_tensor(pi, dtype=torch.float64))
    return float(value) if value.dim() == 0 else value.float()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def mass_stats(weights: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Concentration of the routing over the (masked) tokens of ``weights [..., k]`` and
    ``probs [..., E]``; see the module docstring for each key."""
    w = _flat(normalised_weights(weights), mask)
    p = _flat(probs.detach().float(), mask)
    if w.shape[0] == 0:
        raise LoramixError("mass_stats: no tokens")
    return {
        "max_mass": float(w.max(-1).values.double().mean()),
        "entropy": float(_entropy(w).mean()),
        "ess_token": float((1.0 / w.double().pow(2).sum(-1)).mean()),
        "ess_of_mean": ess(p.double().mean(0)),
        "prob_entropy": float(_entropy(p).mean()),
        "tokens": int(w.shape[0]),
    }


# --- aggregation over routing records ----------------------------------------------------------------


def _stack(records) -> dict:
    """Concatenate the records' tokens: ids/weights ``[L, N, k]``, probs ``[L, N, E]``."""
    ids = torch.cat([r.expert_ids for r in records], dim=1)
    w = torch.cat([r.weights for r in records], dim=1)
    p = torch.cat([r.probs for r in records], dim=1)
    gen = torch.cat([torch.arange(len(r.token_ids)) >= r.n_prompt for r in records])
    token_task = [t for r in records for t in r.token_task]
    return {"ids": ids, "w": w, "p": p, "generated": gen, "token_task": token_task}


def _r(x, nd: int = 6):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _r(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    if isinstance(x, torch.Tensor):
        return _r(x.tolist(), nd)
    return round(x, nd) if isinstance(x, float) else x


def task_routing_summary(records, num_experts: int, expert_for_task: dict[str, int] | None = None) -> dict:
    """Shares, routing accuracy and mass statistics of one task's records, per layer and overall."""
    if not records:
        return {"n_sequences": 0, "n_tokens": 0}
    s = _stack(records)
    sites = records[0].sites
    L, N = s["ids"].shape[:2]
    flat_ids, flat_w = s["ids"].reshape(L * N, -1), s["w"].reshape(L * N, -1)
    out: dict = {
        "n_sequences": len(records), "n_tokens": N, "n_prompt_tokens": int((~s["generated"]).sum()),
        "n_generated_tokens": int(s["generated"].sum()),
        "shares": {
            "overall": routing_shares(flat_ids, flat_w, num_experts),
            "prompt": routing_shares(s["ids"], s["w"], num_experts, (~s["generated"]).expand(L, N))
            if bool((~s["generated"]).any()) else None,
            "generated": routing_shares(s["ids"], s["w"], num_experts, s["generated"].expand(L, N))
            if bool(s["generated"].any()) else None,
            "per_layer": {site: routing_shares(s["ids"][i], s["w"][i], num_experts) for i, site in enumerate(sites)},
        },
    }
    if expert_for_task is not None:
        target = torch.tensor([expert_for_task.get(t, -1) if t is not None else -1 for t in s["token_task"]])
        per_layer = {site: routing_accuracy(s["ids"][i], s["w"][i], target) for i, site in enumerate(sites)}
        out["routing_accuracy"] = {
            "overall": routing_accuracy(s["ids"], s["w"], target.expand(L, N)),
            "own_mass": own_mass(s["ids"], s["w"], target.expand(L, N)),
            "per_layer": per_layer,
            "tokens_counted": int((target >= 0).sum()),
        }
    else:
        out["routing_accuracy"] = None
    per_layer_mass = {site: mass_stats(s["w"][i], s["p"][i]) for i, site in enumerate(sites)}
    overall = mass_stats(s["w"].reshape(L * N, -1), s["p"].reshape(L * N, -1))
    overall["ess_of_mean_layer_avg"] = sum(m["ess_of_mean"] for m in per_layer_mass.values()) / len(per_layer_mass)
    out["mass"] = {"overall": overall, "per_layer": per_layer_mass}
    return _r(out)


# --- training logs ------------------------------------------------------------------------------------


def load_train_log(train_log) -> list[dict]:
    """ESS entries of a training log: a list of dicts (HF ``log_history``, e.g. ``train_log.json``) or
    a ``trainer_state.json`` with ``log_history``; keeps the entries with ``step`` and ``ess_mean`` or
    ``ess/<site>`` keys, as ``{"step", "ess_mean"?, "ess/<site>"...}``."""
    where = "train log"
    if isinstance(train_log, (str, Path)):
        where = str(train_log)
        path = Path(train_log)
        if not path.is_file():
            raise DataError(path, "file", "not found")
        try:
            train_log = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(path, "file", f"not valid JSON ({err.msg})") from None
    if isinstance(train_log, dict) and isinstance(train_log.get("log_history"), list):
        train_log = train_log["log_history"]
    if not isinstance(train_log, list):
        raise DataError(where, "top level", "expected a list of log dicts (HF log_history)")
    rows = []
    for i, entry in enumerate(train_log):
        if not isinstance(entry, dict):
            raise DataError(where, f"entry {i}", "not an object")
        keys = {k: v for k, v in entry.items() if (k == "ess_mean" or k.startswith("ess/"))
                and isinstance(v, (int, float))}
        if not keys:
            continue
        if not isinstance(entry.get("step"), (int, float)):
            raise DataError(where, f"entry {i}", "has ESS values but no numeric 'step'")
        rows.append({"step": entry["step"], **keys})
    if not rows:
        raise DataError(where, "log_history", "no entries with 'ess_mean' or 'ess/<site>' keys")
    return rows


# --- plots and HTML ------------------------------------------------------------------------------------


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_usage_heatmap(shares: dict[str, list[float]], expert_names: Sequence[str], path: str | Path) -> None:
    """Tasks (rows) x experts (columns) heatmap of the overall routing shares."""
    tasks = list(shares)
    data = [shares[t] for t in tasks]
    fig = _figure(1.6 + 0.9 * len(expert_names), 1.2 + 0.5 * max(len(tasks), 1))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(expert_names)), labels=list(expert_names), rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), labels=tasks)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xlabel("expert")
    ax.set_title("share of routing weight per task")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)


def plot_ess_steps(rows: list[dict], path: str | Path, num_experts: int | None = None) -> None:
    """ESS of the mean router distribution over training steps: ``ess_mean`` and each ``ess/<site>``."""
    fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    keys = sorted({k for r in rows for k in r if k.startswith("ess/")})
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), linewidth=0.8, alpha=0.6, label=key.removeprefix("ess/"))
    pts = [(r["step"], r["ess_mean"]) for r in rows if "ess_mean" in r]
    if pts:
        ax.plot(*zip(*pts), color="black", linewidth=2.0, label="mean")
    if num_experts:
        ax.axhline(num_experts, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(0.9, num_experts + 0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("ESS of mean routing")
    ax.set_title("ESS over training steps")
    if len(keys) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def token_experts(record, layer: int | None = None) -> torch.Tensor:
    """Per token of a record, the expert it is coloured by: the top chosen expert at site index
    ``layer``, or (None) the most frequent top expert over the sites (lowest id on ties)."""
    tops = top_expert(record.expert_ids, record.weights)  # [L, N]
    if layer is not None:
        if not -tops.shape[0] <= layer < tops.shape[0]:
            raise LoramixError(f"layer {layer} out of range: the mixture has {tops.shape[0]} sites")
        return tops[layer]
    return tops.mode(dim=0).values


def _token_text(tokenizer, tid: int) -> str:
    return tokenizer.decode([tid], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def tokens_html(records_by_task: dict[str, list], tokenizer, expert_names: Sequence[str], *,
                layer: int | None = None, sites: Sequence[str] | None = None, per_task: int = 3,
                correct: dict[str, dict[int, bool]] | None = None) -> str:
    """An HTML page with one ``<span class="tok">`` per token (prompt and completion), coloured by
    its expert (``token_experts``); the tooltip names the expert and its weight."""
    where = "majority over sites" if layer is None else f"site {sites[layer] if sites else layer}"
    css = ("body{font-family:sans-serif;margin:2em}.seq{font-family:monospace;white-space:pre-wrap;"
           "line-height:1.9;border:1px solid #ddd;padding:.6em;margin:.4em 0 1.2em}"
           ".tok{border-radius:2px;padding:0 1px;color:#000}.gen{font-weight:bold;text-decoration:underline}"
           ".legend{display:inline-block;padding:2px 8px;margin:2px;border-radius:3px}")
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>loramix routing</title>",
             f"<style>{css}</style></head><body>", "<h1>Tokens coloured by expert</h1>",
             f"<p>Colour: the top chosen expert ({html.escape(where)}). Bold underlined tokens are generated; "
             "the rest is the prompt. Hover a token for details.</p><p>"]
    for i, name in enumerate(expert_names):
        parts.append(f"<span class='legend' style='background:{expert_colour(i)}'>{i}: {html.escape(str(name))}</span>")
    parts.append("</p>")
    for task, records in records_by_task.items():
        parts.append(f"<h2>{html.escape(task)}</h2>")
        for rec in records[:per_task]:
            experts = token_experts(rec, layer).tolist()
            tops_w = rec.weights.float()
            verdict = ""
            if correct and task in correct and rec.example in correct[task]:
                verdict = " (correct)" if correct[task][rec.example] else " (wrong)"
            parts.append(f"<h3>example {rec.example}{verdict}</h3>")
            spans = []  # joined without separators: the block is white-space:pre-wrap
            for t, (tid, e) in enumerate(zip(rec.token_ids, experts)):
                text = _token_text(tokenizer, tid)
                shown = html.escape(text.replace("\n", "\u21b5\n").replace("\t", "\u2192\t"))
                li = 0 if layer is None else layer
                title = f"token {t}: expert {e} ({expert_names[e] if e < len(expert_names) else e})"
                if layer is not None:
                    title += f", weight {float(tops_w[li, t].max()):.3f}"
                cls = "tok gen" if t >= rec.n_prompt else "tok"
                spans.append(f"<span class='{cls}' style='background:{expert_colour(e)}' "
                             f"title='{html.escape(title, quote=True)}'>{shown}</span>")
            parts.append("<div class='seq'>" + "".join(spans) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def expert_colour(i: int) -> str:
    """Expert ``i``'s colour (``#rrggbb``), shared by tokens.html and ``loramix generate
    --show-routing``: a light version of the palette, so black text on it stays readable."""
    c = PALETTE[i % len(PALETTE)].lstrip("#")
    r, g, b = (int(c[k:k + 2], 16) for k in (0, 2, 4))
    r, g, b = (int(v + (255 - v) * 0.45) for v in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


# --- the analysis -----------------------------------------------------------------------------------------


_DEFINITIONS = {  # analysis.json "definitions"
    "shares": "mean normalised used weight per expert over real tokens (top-1: fraction of tokens)",
    "routing_accuracy": "share of tokens whose top chosen expert is their own task's expert",
    "own_mass": "mean normalised used weight on the own task's expert",
    "max_mass": "mean over tokens of the largest normalised used weight",
    "entropy": "mean entropy (nats) of the normalised used weights",
    "ess_token": "mean over tokens of 1/sum(w^2), w the normalised used weights (1..k)",
    "ess_of_mean": "||pi||_1^2/||pi||_2^2 of pi = router probs averaged over tokens (1..E)",
    "ess_of_mean_layer_avg": "ess_of_mean per layer, averaged over layers (as logged ess_mean)",
    "prob_entropy": "mean entropy (nats) of the router probabilities",
}


def _analysis_result(mixture, report, summaries: dict, emap: dict[str, int] | None, log_rows: list[dict] | None,
                     layer: int | None) -> dict:
    """The content of analysis.json."""
    cfg = mixture.mixture_config
    return {
        "mixture": {"router": cfg.router, "top_k": cfg.top_k, "shared_router": cfg.shared_router,
                    "experts": mixture.expert_names, "sites": [s.name for s in mixture.sites]},
        "config": {**report.config, "html_layer": layer},
        "expert_for_task": emap,
        "eval": report.per_task,
        "tasks": summaries,
        "ess_steps": log_rows,
        "definitions": dict(_DEFINITIONS),
        "files": [f for f in FILES if f != "ess_steps.png" or log_rows is not None],
    }


def _write_analysis(out: str | Path, result: dict, report, mixture, tokenizer, names: list[str],
                    layer: int | None, html_examples: int) -> None:
    """analysis.json, usage_heatmap.png, ess_steps.png (with a log) and tokens.html into ``out``, atomically."""
    summaries, log_rows = result["tasks"], result["ess_steps"]
    correct = {t: {i: s["correct"] for i, s in enumerate(report.samples.get(t, []))} for t in names}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        heat = {t: s["shares"]["overall"] for t, s in summaries.items() if s.get("n_tokens")}
        if heat:
            plot_usage_heatmap(heat, mixture.expert_names, tmp / "usage_heatmap.png")
        if log_rows is not None:
            plot_ess_steps(log_rows, tmp / "ess_steps.png", mixture.num_experts)
        (tmp / "tokens.html").write_text(tokens_html(report.routing, tokenizer, mixture.expert_names, layer=layer,
                                                     sites=result["mixture"]["sites"], per_task=html_examples,
                                                     correct=correct))


def analyze_mixture(
    mixture,
    tokenizer,
    tasks: Sequence[str],
    *,
    expert_for_task: dict[str, int] | None = None,
    n: int = 20,
    out: str | Path | None = None,
    train_log=None,
    layer: int | None = None,
    split: str = "test",
    difficulty: str | int = DEFAULT_DIFFICULTY,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    seed: int = 0,
    mixed: bool = False,
    routing: str = "model",
    html_examples: int = 3,
    chat_template: bool = True,
    task_kwargs: dict | None = None,
) -> dict:
    """Generate for ``n`` examples per task with routing recorded, and summarise the routing.

    expert_for_task: task -> expert index for routing accuracy (None: inferred when expert names
    equal task names, else accuracy is left out). train_log: a path or a list of log dicts (ESS over
    steps). layer: the site index the HTML colours by (None: majority over sites). With ``out``, the
    folder gets analysis.json, usage_heatmap.png, ess_steps.png (with a log) and tokens.html, all at
    once. task_kwargs: per task, its data (``loramix.tasks.splits``). Returns the content of analysis.json.
    """
    if not isinstance(mixture, MixtureModel):
        raise LoramixError("analyze needs a loramix mixture (a folder with mixture_config.json)")
    names = parse_tasks(tasks, mixed)
    emap = resolve_expert_map(mixture.expert_names, names, expert_for_task, required=expert_for_task is not None)
    log_rows = load_train_log(train_log) if train_log is not None else None
    report = evaluate_model(mixture, tokenizer, names, split=split, n=n, difficulty=difficulty,
                            batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                            routing=routing, expert_for_task=emap if routing == "oracle" else None,
                            collect_routing=True, keep_samples=html_examples, chat_template=chat_template,
                            task_kwargs=task_kwargs)
    summaries = {t: task_routing_summary(report.routing[t], mixture.num_experts, emap) for t in names}
    result = _analysis_result(mixture, report, summaries, emap, log_rows, layer)
    if out is not None:
        _write_analysis(out, result, report, mixture, tokenizer, names, layer, html_examples)
    return result


def analyze_path(mixture_dir: str | Path, tasks: Sequence[str], *, base: str | None = None,
                 expert_for: Sequence[str] | None = None, experts_dir: str | Path | None = None, **kwargs) -> dict:
    """``load_for_eval`` a mixture folder (its experts looked for in ``experts_dir`` first, when they
    moved), then ``analyze_mixture``. The folder, tasks, options, train log and ``out`` are checked
    first: bad input never loads (or builds) a model."""
    path = Path(mixture_dir)
    if not path.exists():
        raise LoramixError(f"{path}: not found")
    if not (path / MIXTURE_CONFIG).is_file():
        raise LoramixError(f"{mixture_dir}: not a loramix mixture folder (no mixture_config.json)")
    if kwargs.get("difficulty") is None:
        kwargs["difficulty"] = DEFAULT_DIFFICULTY
    check_tasks(tasks, **task_options(analyze_mixture, kwargs))
    given = parse_expert_pairs(expert_for) or None
    if kwargs.get("train_log") is not None:
        kwargs["train_log"] = load_train_log(kwargs["train_log"])
    if kwargs.get("out") is not None:
        check_writable(kwargs["out"])
    model, tok, kind = load_for_eval(mixture_dir, base, experts_dir)
    if kind != "mixture":
        raise LoramixError(f"{mixture_dir}: not a loramix mixture folder (no mixture_config.json)")
    return analyze_mixture(model, tok, tasks, expert_for_task=given, **kwargs)


def summary_table(result: dict):
    """A rich table of the analysis: per task, routing accuracy, max mass, ESS and top expert."""
    from rich.table import Table

    experts = result["mixture"]["experts"]
    difficulty = result.get("config", {}).get("difficulty")
    table = Table("task", "accuracy", "routing acc.", "max mass", "ess_token", "ess_of_mean", "top expert (share)",
                  title="routing" if difficulty is None else f"routing - difficulty {difficulty}")
    for task, s in result["tasks"].items():
        if not s.get("n_tokens"):
            table.add_row(task, "-", "-", "-", "-", "-", "-")
            continue
        shares = s["shares"]["overall"]
        top = max(range(len(shares)), key=shares.__getitem__)
        ra = s["routing_accuracy"]["overall"] if s.get("routing_accuracy") else None
        m = s["mass"]["overall"]
        table.add_row(task, percent(result["eval"][task]["accuracy"]), percent(ra),
                      f"{m['max_mass']:.3f}", f"{m['ess_token']:.2f}", f"{m['ess_of_mean']:.2f}",
                      f"{experts[top]} ({percent(shares[top])})")
    return table


__all__ = ["analyze_mixture", "analyze_path", "ess", "load_train_log", "mass_stats", "normalised_weights",
           "own_mass", "plot_ess_steps", "plot_usage_heatmap", "routing_accuracy", "routing_shares",
           "summary_table", "task_routing_summary", "token_experts", "tokens_html", "top_expert", "expert_colour"]
