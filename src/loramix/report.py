"""The pipeline's report: ``report.json`` (methods, routing, mixed, targets) and ``report.md`` with
tables and plots, built only from the files the stages wrote. ``update_readme`` splices the report's
tables into a README between ``<!-- results:start -->`` and ``<!-- results:end -->``, or between
``<!-- results:RECIPE:start -->`` and ``<!-- results:RECIPE:end -->`` where the README has a section for
that recipe (one README, several recipes' results)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from loramix import __version__, stats
from loramix.errors import LoramixError
from loramix.io import atomic_path, write_json

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _tensor_parameters(file: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _cost(name: str, path) -> tuple[int, float]:
    """(trainable parameters, training seconds) of a method, from its own records."""
    if name == "base" or not isinstance(path, Path):
        return 0, 0.0
    metrics = _read(path / "metrics.json") or {}
    params = metrics.get("trainable_parameters")
    if params is None and (path / "adapter_model.safetensors").is_file() and name.startswith("expert"):
        params = _tensor_parameters(path / "adapter_model.safetensors")
    return int(params or 0), float(metrics.get("train_seconds", 0.0))


def _added(name: str, path, trainable: int, experts_total: int, frozen_expert_methods) -> int:
    """Parameters a method adds to the base, frozen experts included."""
    if name in frozen_expert_methods:
        return trainable + experts_total
    if isinstance(path, Path) and (path / "adapter_model.safetensors").is_file():
        return _tensor_parameters(path / "adapter_model.safetensors")
    return trainable


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _r(x, nd: int = 4):
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    return round(x, nd) if isinstance(x, float) else x


# --- outcomes: per method, per task, averaged over seeds ---------------------------------------------


def _seed_outcomes(evals: list[dict], task: str) -> list[float] | None:
    """Per prompt, the share of a method's seeds that got it right (None if an eval lacks outcomes
    or the task)."""
    rows = [ev["per_task"].get(task, {}).get("outcomes") for ev in evals]
    if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return [sum(col) / len(col) for col in zip(*rows)]


def _interval(outcomes: list[float] | None) -> list[float] | None:
    """The 95% Wilson interval of an accuracy over its prompts. With several seeds the outcomes are
    seed-averaged shares, whose variance is at most a 0/1 outcome's, so Wilson stays conservative;
    the spread over seeds is reported beside it."""
    if not outcomes:
        return None
    return list(stats.wilson(int(round(sum(outcomes))), len(outcomes)))


def _method_entry(evals: list[dict], tasks: list[str]) -> dict:
    """A method's row: accuracy per task (mean over seeds; None where it was not evaluated, e.g. an
    SFT expert off its own domain), intervals, the seeds, and the average (None unless complete)."""
    seeds = len(evals)
    scored = [t for t in tasks if all(t in ev["per_task"] for ev in evals)]
    outcomes = {t: _seed_outcomes(evals, t) for t in scored}
    acc = {t: (_mean(ev["per_task"][t]["accuracy"] for ev in evals) if t in scored else None) for t in tasks}
    whole = len(scored) == len(tasks)
    per_seed = [sum(ev["per_task"][t]["accuracy"] for t in tasks) / len(tasks) for ev in evals] if whole else []
    complete = whole and all(outcomes.values())
    return {
        "accuracy": acc, "average": sum(acc.values()) / len(acc) if whole else None,
        "accuracy_ci": {t: _r(_interval(outcomes.get(t))) for t in tasks},
        "average_ci": _r(list(stats.stratified_mean_ci(outcomes))) if complete else None,
        "seeds": seeds, "average_seeds": _r(per_seed),
        "average_seed_spread": _r(stats.seed_spread(per_seed)) if seeds > 1 and per_seed else None,
        "format_rate": _mean(_mean(ev["per_task"][t].get("format_rate") for ev in evals) for t in scored),
        "_outcomes": {t: o for t, o in outcomes.items() if o} or None,  # dropped before writing
    }


def _runs_by_method(pipeline) -> dict[str, list[tuple[str, object]]]:
    from loramix.pipeline import method_of

    out: dict[str, list[tuple[str, object]]] = {}
    for run, path in pipeline.method_paths().items():
        out.setdefault(method_of(run), []).append((run, path))
    return out


def _label_majority(pipeline) -> dict[str, float]:
    """For each task whose answer is a label, the majority-class rate of its test prompts."""
    ev, out = pipeline.r.evaluate, {}
    for t in pipeline.r.tasks:
        task = pipeline.task(t)  # with the recipe's data
        if task.verifier not in LABEL_VERIFIERS:
            continue
        answers = [e.answer.strip().lower() for e in task.examples(ev.split, ev.n, seed=pipeline.r.seed,
                                                                      difficulty=pipeline.r.eval_difficulty)]
        out[t] = max(answers.count(a) for a in set(answers)) / len(answers)
    return out


LABEL_VERIFIERS = ("bool", "binary", "letter")


def build_report(pipeline) -> dict:
    from loramix.pipeline import FROZEN_EXPERT_METHODS

    run, tasks = pipeline.run, list(pipeline.r.tasks)
    experts_total = sum(_tensor_parameters(p / "adapter_model.safetensors") for p in pipeline.rl_experts
                        if (p / "adapter_model.safetensors").is_file())
    methods: dict[str, dict] = {}
    for name, runs in _runs_by_method(pipeline).items():
        evals = [ev for r, _ in runs if (ev := _read(run / "eval" / f"{r.replace(':', '_')}.json")) is not None]
        if not evals:
            continue
        entry = _method_entry(evals, tasks)
        costs = [_cost(name, path) for _, path in runs]
        trainable = costs[0][0]
        entry.update(trainable_parameters=trainable,
                     added_parameters=_added(name, runs[0][1], trainable, experts_total, FROZEN_EXPERT_METHODS),
                     train_seconds=round(_mean(c[1] for c in costs) or 0.0, 1))
        methods[name] = entry
    soft = methods.get("soft", {}).get("trainable_parameters")
    for m in methods.values():
        m["share_of_soft_parameters"] = m["trainable_parameters"] / soft if soft else None
    routing = {}
    for name in methods:
        a = _read(run / "analysis" / name / "analysis.json")
        if a is None:
            continue
        per = a["tasks"].values()
        routing[name] = {
            "routing_accuracy": _mean((t.get("routing_accuracy") or {}).get("overall") for t in per),
            "n_sequences": sum(t.get("n_sequences", 0) for t in per),
            "mean_max_mass": _mean(t["mass"]["overall"]["max_mass"] for t in per),
            "ess": _mean(t["mass"]["overall"]["ess_token"] for t in per),
            "ess_of_mean": _mean(t["mass"]["overall"]["ess_of_mean_layer_avg"] for t in per),
        }
    mixed, mixed_outcomes = _mixed(pipeline)
    report = {"recipe": pipeline.r.name, "loramix_version": __version__, "tasks": tasks,
              "stage_seconds": dict(pipeline.timings),  # kept across reruns (a cached stage keeps its time)
              "last_run_seconds": dict(getattr(pipeline, "run_seconds", {})),  # this run's own, per stage
              "n_eval": _n_eval(run, tasks),
              "label_majority_rate": _r(_label_majority(pipeline)),
              "methods": methods, "routing": routing, "mixed": mixed}
    report["routing_over_training"] = _routing_over_training(pipeline)
    report["preconditions"] = preconditions(report)
    report["targets"] = targets(report, pipeline, mixed_outcomes)
    for m in methods.values():
        m.pop("_outcomes", None)
    return report


def _n_eval(run: Path, tasks: list[str]) -> dict[str, int | None]:
    """Test prompts per task, from the base's evaluation (else any single-domain one)."""
    ev = _read(run / "eval" / "base.json") or next(
        (_read(f) for f in sorted((run / "eval").glob("*.json")) if not f.name.startswith("mixed_")), None)
    return {t: None if ev is None else ev["per_task"].get(t, {}).get("n") for t in tasks}


def _mixed(pipeline) -> tuple[dict, dict]:
    """``mixed[pair][method] = {accuracy, ci, format_rate, seeds, n}``, and the seed-averaged
    outcomes ``[method][pair]`` for paired comparisons."""
    from loramix.pipeline import method_of

    runs: dict[str, list[dict]] = {}
    for run in pipeline.mixed_runs():
        ev = _read(pipeline.run / "eval" / f"mixed_{run}.json")
        if ev is not None:
            runs.setdefault(method_of(run), []).append(ev)
    mixed: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    for method, evals in runs.items():
        for pair in evals[0]["per_task"]:
            out = _seed_outcomes(evals, pair)
            mixed.setdefault(pair, {})[method] = {
                "accuracy": _r(_mean(ev["per_task"][pair]["accuracy"] for ev in evals)),
                "ci": _r(_interval(out)),
                "format_rate": _r(_mean(ev["per_task"][pair]["format_rate"] for ev in evals)),
                "part_accuracy": {k: _r(_mean(ev["per_task"][pair]["part_accuracy"][k] for ev in evals))
                                  for k in evals[0]["per_task"][pair].get("part_accuracy", {})},
                "seeds": len(evals), "n": evals[0]["per_task"][pair]["n"]}
            if out:
                outcomes.setdefault(method, {})[pair] = out
    return mixed, outcomes


ESS_CURVES = ("ess_mean", "ess_worst", "ess_q_token", "ess_q_token_worst")  # MixtureTrainer's logged ESS


def _routing_over_training(pipeline) -> dict[str, dict]:
    """Per mixture (its first seed), the ESS curves over training steps from its train_log.json:
    ``ess_mean``/``ess_worst``: ESS of the token-averaged router distribution q, mean and worst layer;
    ``ess_q_token``/``ess_q_token_worst``: the per-token ESS of q. A curve an older log lacks is None."""
    out = {}
    for name in ("soft_trainable", "mixlora_topk", "remix", "soft", "topk2_norm", "mor_lora_hard"):
        log = _read(pipeline.run / "methods" / name / "train_log.json")
        rows = [h for h in log if "ess_mean" in h] if isinstance(log, list) else []
        if rows:
            out[name] = {"steps": [h["step"] for h in rows],
                         **{k: [h[k] for h in rows] if all(k in h for h in rows) else None for k in ESS_CURVES}}
    return out


# --- preconditions and targets ------------------------------------------------------------------------


def _row(name: str, value, ci, threshold, direction: str = ">=", note: str = "") -> dict:
    """One check: ``verdict`` is met / not met / undecided by where ``ci`` lies (by ``value`` alone
    when there is no interval, e.g. a count)."""
    if isinstance(threshold, (list, tuple)):
        verdict = stats.verdict_between(ci, *threshold) if ci else (
            "met" if threshold[0] <= value <= threshold[1] else "not met")
    elif ci:
        verdict = stats.verdict(ci, threshold, direction)
    else:
        verdict = "met" if (value >= threshold if direction == ">=" else value <= threshold) else "not met"
    return {"name": name, "value": _r(value), "ci": _r(list(ci)) if ci else None, "threshold": _r(threshold),
            "direction": direction if not isinstance(threshold, (list, tuple)) else "between",
            "verdict": verdict, **({"note": note} if note else {})}


def _outcomes(methods: dict, name: str, task: str | None = None):
    """A method's seed-averaged outcomes on ``task``, or on every task (None unless all are there)."""
    m = methods.get(name) or {}
    o = m.get("_outcomes")
    if o is None:
        return None
    if task is None:
        return o if len(o) == len(m["accuracy"]) else None
    return o.get(task)


def _diff_row(name: str, a, b, threshold: float, note: str = "") -> dict | None:
    """A paired comparison of two outcome lists (or two dicts of them, averaged over their keys)."""
    if not a or not b:
        return None
    d = stats.paired_difference_groups(a, b) if isinstance(a, dict) else stats.paired_difference(a, b)
    return _row(name, d["diff"], d["ci"], threshold, note=note)


def preconditions(report: dict) -> list[dict]:
    """The test bed's own design targets (issue 12): each domain's expert specialises, composition is
    needed, no domain is degenerate, and mixed prompts can be answered."""
    m, tasks, rows = report["methods"], report["tasks"], []
    add = lambda row: row is not None and rows.append(row)  # noqa: E731
    for t in tasks:
        add(_diff_row(f"{t}: RL expert beats the base by >= 25 points", _outcomes(m, f"expert_rl:{t}", t),
                      _outcomes(m, "base", t), 0.25))
    for t in tasks:
        for u in tasks:
            if u != t:
                add(_diff_row(f"{t}: own expert beats the {u} expert by >= 15 points",
                              _outcomes(m, f"expert_rl:{t}", t), _outcomes(m, f"expert_rl:{u}", t), 0.15))
    add(_diff_row("oracle average beats merge_linear by >= 10 points", _outcomes(m, "oracle"),
                  _outcomes(m, "merge_linear"), 0.10))
    base = m.get("base")
    for t in tasks:
        if base:
            add(_row(f"{t}: base accuracy between 5% and 60%", base["accuracy"][t], base["accuracy_ci"][t],
                     [0.05, 0.60]))
    n_test = report["n_eval"]
    for t, rate in report["label_majority_rate"].items():
        n = n_test.get(t) or 0
        add(_row(f"{t}: balanced labels (majority-class rate <= 55%)", rate,
                 stats.wilson(int(round(rate * n)), n) if n else None, 0.55, "<="))
    pairs = report["mixed"]
    add(_row("mixed pairs evaluated >= 3", len(pairs), None, 3))
    oracle = m.get("oracle")
    for pair, by in pairs.items():
        if "base" in by:
            n = by["base"]["n"]
            fmt = by["base"]["format_rate"]
            add(_row(f"{pair}: the base writes the two-key format on >= 90%", fmt,
                     stats.wilson(int(round(fmt * n)), n), 0.90))
        if "segment_oracle" in by and oracle:
            a, b = pair.split("+")
            need = 0.5 * oracle["accuracy"][a] * oracle["accuracy"][b]
            add(_row(f"{pair}: segment_oracle gets both right on >= half the product of the experts' "
                     "own-domain accuracies", by["segment_oracle"]["accuracy"], by["segment_oracle"]["ci"],
                     need))
    return rows


def targets(report: dict, pipeline, mixed_outcomes: dict) -> list[dict]:
    """The paper's claims on the embedded world, each a paired comparison with its interval."""
    m, tasks, rows = report["methods"], report["tasks"], []
    add = lambda row: row is not None and rows.append(row)  # noqa: E731
    for t in tasks:
        add(_diff_row(f"{t}: RL expert beats the base on its own domain", _outcomes(m, f"expert_rl:{t}", t),
                      _outcomes(m, "base", t), 0.0))
    rl = {t: _outcomes(m, f"expert_rl:{t}", t) for t in tasks}
    sft = {t: _outcomes(m, f"expert_sft:{t}", t) for t in tasks}
    if all(rl.values()) and all(sft.values()):
        add(_diff_row("RL experts beat SFT experts of the same size (own domains, average)", rl, sft, 0.0))
    hard, oracle = _outcomes(m, "mor_lora_hard"), _outcomes(m, "oracle")
    if hard and oracle and sum(map(sum, oracle.values())):
        r = stats.ratio_ci(hard, oracle)
        add(_row("MoR-LoRA hard >= 95% of the oracle average", r["value"], r["ci"], 0.95))
    for other in ("soft", "topk2_norm", "gumbel", "prompt_router_fair", "prompt_router"):
        add(_diff_row(f"MoR-LoRA hard beats {other} (single-domain average)", hard, _outcomes(m, other), 0.0))
    add(_diff_row("ste=full (the paper's formula) beats ste=chosen (the authors' code)", hard,
                  _outcomes(m, "mor_lora_hard_chosen"), 0.0))
    hard_mixed = mixed_outcomes.get("mor_lora_hard")
    for other, threshold in (("prompt_router_fair", 0.0), ("prompt_router_fair", 0.03), ("prompt_router", 0.0)):
        other_mixed = mixed_outcomes.get(other)
        if hard_mixed and other_mixed and set(hard_mixed) == set(other_mixed):
            by = "more than 3 points (the paper)" if threshold else "a decided margin"
            add(_diff_row(f"mixed prompts: token-level hard beats {other} by {by}", hard_mixed, other_mixed,
                          threshold))
    r = report["routing"].get("mor_lora_hard")
    if r and r["routing_accuracy"] is not None:
        n = max(1, r.get("n_sequences") or 1)
        add(_row("routing accuracy on single-domain prompts >= 90%", r["routing_accuracy"],
                 stats.wilson(int(round(r["routing_accuracy"] * n)), n), 0.90,
                 note="interval over sequences (tokens of one sequence are not independent)"))
    remix = _outcomes(m, "remix")
    for other in ("single_lora_same_active", "mixlora_topk", "multitask_lora"):
        add(_diff_row(f"ReMix beats {other}", remix, _outcomes(m, other), 0.0))
    add(_diff_row("ReMix beats soft_trainable", remix, _outcomes(m, "soft_trainable"), 0.0))
    curves = report.get("routing_over_training", {})
    soft, rmx = curves.get("soft_trainable", {}).get("ess_q_token"), curves.get("remix", {}).get("ess_q_token")
    if soft:
        add(_row("soft_trainable collapses: per-token ESS of q at the end <= 1.5", soft[-1], None, 1.5, "<=",
                 note=f"{soft[0]:.2f} at the first logged step; no interval (one curve per method)"))
    if soft and rmx:
        add(_row("ReMix's router keeps a wider q than soft_trainable's at the end (ESS difference)",
                 rmx[-1] - soft[-1], None, 0.0, ">=",
                 note=f"ReMix {rmx[0]:.2f} -> {rmx[-1]:.2f}; its weights' ESS is k by construction, so q is compared"))
    return rows


# --- writing ------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci_text(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return "-" if x is None else str(x)


def _check_table(rows: list[dict], title: str) -> list[str]:
    out = [title, "", "| check | value | 95% interval | threshold | verdict |", "|---|---:|---|---|---|"]
    counts = dict.fromkeys(stats.VERDICTS, 0)
    for r in rows:
        if "verdict" not in r:  # a report written before verdicts: met yes / no only
            r = {"name": r.get("target"), "value": r.get("value"), "ci": None, "threshold": None,
                 "verdict": "undecided" if r.get("met") is None else "met" if r["met"] else "not met"}
        ci = "-" if not r["ci"] else f"[{_num(r['ci'][0])}, {_num(r['ci'][1])}]"
        th = r["threshold"]
        th = f"between {_num(th[0])} and {_num(th[1])}" if isinstance(th, list) else \
            "-" if th is None else f"{r.get('direction', '>=')} {_num(th)}"
        verdict = r["verdict"] if r["verdict"] == "met" else f"**{r['verdict']}**"
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        note = f" ({r['note']})" if r.get("note") else ""
        out.append(f"| {r['name']}{note} | {_num(r['value'])} | {ci} | {th} | {verdict} |")
    out += ["", ", ".join(f"{n} {v}" for v, n in counts.items()) + f", of {len(rows)}.", ""]
    return out


def tables_markdown(report: dict) -> str:
    tasks = report["tasks"]
    n_eval = report.get("n_eval") or {}
    majority = report.get("label_majority_rate") or {}
    head = [f"{t} (n={n_eval[t]})" if n_eval.get(t) else t for t in tasks]
    lines = ["| method | " + " | ".join(head) + " | average [95% CI] | seeds (average each) | trainable params "
             "| added params | train s |", "|---|" + "---:|" * (len(tasks) + 5)]
    for name, m in report["methods"].items():
        seeds = m.get("seeds", 1)
        each = "" if seeds <= 1 else " (" + ", ".join(_pct(a) for a in m.get("average_seeds", [])) + ")"
        lines.append(f"| {name} | " + " | ".join(_pct(m["accuracy"][t]) for t in tasks)
                     + f" | {_pct(m['average'])}{_ci_text(m.get('average_ci'))} | {seeds}{each} "
                     f"| {m['trainable_parameters']:,} | {m.get('added_parameters', 0):,} | {m['train_seconds']:.0f} |")
    out = ["Accuracy (%) on each domain's test split, greedy; the average's 95% interval is a bootstrap over "
           "prompts (of the seed-averaged outcomes when a method has several seeds; each seed's average in "
           "brackets). Added parameters count frozen experts too:", "", *lines, ""]
    if majority:
        out += ["Label domains, majority-class rate of the test answers: "
                + ", ".join(f"{t} {_pct(r)}%" for t, r in majority.items()), ""]
    if report["routing"]:
        out += ["Routing (analysis of prompt and generated tokens):", "",
                "| mixture | routing accuracy | mean max mass | per-token ESS | ESS of mean routing |",
                "|---|---:|---:|---:|---:|"]
        for name, r in report["routing"].items():
            f = (lambda v, p=2: "-" if v is None else f"{v:.{p}f}")
            out.append(f"| {name} | {f(r['routing_accuracy'], 3)} | {f(r['mean_max_mass'], 3)} | {f(r['ess'])} "
                       f"| {f(r['ess_of_mean'])} |")
        out.append("")
    mixed = report["mixed"]
    if mixed and not all(isinstance(v, dict) for v in mixed.values()):  # an older report: method -> accuracy
        mixed = {"all pairs": {k: {"accuracy": v} for k, v in mixed.items()}}
    if mixed:
        pairs = list(mixed)
        names = list(dict.fromkeys(n for by in mixed.values() for n in by))
        out += ["Mixed-domain prompts: both answers right (%) [95% CI]; format = one JSON object with both keys:",
                "", "| routing | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
        for n in names:
            cells = []
            for p in pairs:
                c = mixed[p].get(n)
                cells.append("-" if c is None else f"{_pct(c['accuracy'])}{_ci_text(c.get('ci'))}, "
                                                   f"format {_pct(c.get('format_rate'))}")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    if report.get("preconditions"):
        out += _check_table(report["preconditions"], "Preconditions of the embedded world:")
    if report.get("targets"):
        out += _check_table(report["targets"], "Targets (the papers' claims):")
    return "\n".join(out)


def _plot_ess(report: dict, path: Path) -> bool:
    """ESS over training steps, one colour per method: the token-averaged q (left) and the per-token q
    (right), the mean over layers solid and the worst layer dashed."""
    curves = {k: v for k, v in report.get("routing_over_training", {}).items() if v.get("ess_mean")}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for (name, c), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3):
        for ax, mean, worst in ((axes[0], "ess_mean", "ess_worst"), (axes[1], "ess_q_token", "ess_q_token_worst")):
            if c.get(mean):
                ax.plot(c["steps"], c[mean], color=color, label=name)
            if c.get(worst):
                ax.plot(c["steps"], c[worst], color=color, linestyle="--")
    axes[0].set_title("ESS of q averaged over tokens")
    axes[1].set_title("per-token ESS of q")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_ylabel("ESS (solid: mean over layers, dashed: worst)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(report: dict, run: Path) -> None:
    import shutil

    write_json(run / "report.json", report)
    md = [f"# loramix report: {report['recipe']}", "",
          f"loramix {report['loramix_version']}; stage times (s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items())
          + (f" (this run: {sum(report['last_run_seconds'].values()):.0f})" if report.get("last_run_seconds") else ""),
          "", tables_markdown(report)]
    if _plot_ess(report, run / "ess_steps.png"):
        md += ["![ESS over training steps](ess_steps.png)", ""]
    heat = run / "analysis" / "mor_lora_hard" / "usage_heatmap.png"
    if heat.is_file():
        shutil.copyfile(heat, run / "mor_lora_hard_usage.png")
        md += ["MoR-LoRA expert usage per task:", "", "![expert usage](mor_lora_hard_usage.png)", ""]
    with atomic_path(run / "report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")


def update_readme(run: str | Path, readme: str | Path = "README.md") -> Path:
    """Replace the README's results section for ``run``'s recipe (``<!-- results:RECIPE:start -->``
    ... ``end``, or else the plain one) with the tables of ``run``'s report.json."""
    run, readme = Path(run), Path(readme)
    report = _read(run / "report.json")
    if report is None:
        raise LoramixError(f"{run / 'report.json'}: missing; run `loramix pipeline` first")
    name = report["recipe"]
    body = (f"\n_Generated by `loramix report {run} --readme {readme}` from `{run}/report.json` "
            f"(recipe `{name}`, stage times in seconds: "
            + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items()) + ")._\n\n"
            + tables_markdown(report) + "\n")
    return replace_readme_section(readme, START, END, body,
                                  prefer=(f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"))


def replace_readme_section(readme: str | Path, start: str, end: str, body: str,
                           prefer: tuple[str, str] | None = None) -> Path:
    """Replace the text between the ``start`` and ``end`` markers of ``readme`` (atomically), or
    between the ``prefer`` pair of markers where the README has them."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except OSError as e:
        raise LoramixError(f"{readme}: cannot read ({e.strerror})") from None
    if prefer and prefer[0] in text and prefer[1] in text:
        start, end = prefer
    if start not in text or end not in text:
        raise LoramixError(f"{readme}: no {start} ... {end} section to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(head + start + body + end + tail)
    return readme
