"""The pipeline's report: ``report.json`` (methods, routing, mixed, targets) and ``report.md`` with
tables and plots, built only from the files the stages wrote. ``update_readme`` splices the report's
tables into a README between ``<!-- results:start -->`` and ``<!-- results:end -->``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from loramix import __version__
from loramix.errors import LoramixError
from loramix.io import atomic_path, write_json

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _adapter_parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _cost(name: str, path) -> tuple[int, float]:
    """(trainable parameters, training seconds) of a method, from its own records."""
    if name == "base" or not isinstance(path, Path):
        return 0, 0.0
    metrics = _read(path / "metrics.json") or {}
    params = metrics.get("trainable_parameters")
    if params is None and (path / "adapter_model.safetensors").is_file() and name.startswith("expert"):
        params = _adapter_parameters(path)
    return int(params or 0), float(metrics.get("train_seconds", 0.0))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def build_report(pipeline) -> dict:
    run, tasks = pipeline.run, list(pipeline.r.tasks)
    methods: dict[str, dict] = {}
    for name, path in pipeline.method_paths().items():
        ev = _read(run / "eval" / f"{name.replace(':', '_')}.json")
        if ev is None:
            continue
        acc = {t: ev["per_task"][t]["accuracy"] for t in tasks}
        params, seconds = _cost(name, path)
        methods[name] = {"accuracy": acc, "average": sum(acc.values()) / len(acc),
                         "format_rate": _mean(ev["per_task"][t].get("format_rate") for t in tasks),
                         "trainable_parameters": params, "train_seconds": round(seconds, 1)}
    soft = methods.get("soft", {}).get("trainable_parameters")
    for m in methods.values():
        m["share_of_soft_parameters"] = m["trainable_parameters"] / soft if soft else None
    routing = {}
    for name in pipeline.method_paths():
        a = _read(run / "analysis" / name / "analysis.json")
        if a is None:
            continue
        per = a["tasks"].values()
        routing[name] = {
            "routing_accuracy": _mean((t.get("routing_accuracy") or {}).get("overall") for t in per),
            "mean_max_mass": _mean(t["mass"]["overall"]["max_mass"] for t in per),
            "ess": _mean(t["mass"]["overall"]["ess_token"] for t in per),
            "ess_of_mean": _mean(t["mass"]["overall"]["ess_of_mean_layer_avg"] for t in per),
        }
    mixed = {}
    for f in sorted((run / "eval").glob("mixed_*.json")):
        ev = _read(f)
        mixed[f.stem.removeprefix("mixed_")] = _mean(v["accuracy"] for v in ev["per_task"].values())
    report = {"recipe": pipeline.r.name, "loramix_version": __version__, "tasks": tasks,
              "stage_seconds": dict(pipeline.timings),  # kept across reruns (a cached stage keeps its time)
              "last_run_seconds": dict(getattr(pipeline, "run_seconds", {})),  # this run's own, per stage
              "methods": methods, "routing": routing, "mixed": mixed}
    report["training_ess"] = _training_ess(pipeline)
    report["targets"] = targets(report, pipeline)
    return report


def _training_ess(pipeline) -> dict[str, list[dict]]:
    """Per mixture, ``ess_token`` over training steps (from its train_log.json)."""
    out = {}
    for name in ("remix", "mixlora_topk", "soft", "topk2_norm", "mor_lora_hard"):
        log = _read(pipeline.run / "methods" / name / "train_log.json")
        if isinstance(log, list):
            points = [{"step": h["step"], "ess_token": h["ess_token"]} for h in log if "ess_token" in h]
            if points:
                out[name] = points
    return out


def targets(report: dict, pipeline) -> list[dict]:
    """The issue's targets on the embedded default, each with its measured value."""
    m, tasks, rows = report["methods"], report["tasks"], []

    def add(name, value, ok, detail=""):
        rows.append({"target": name, "value": value, "met": None if ok is None else bool(ok), "detail": detail})

    base = m.get("base")
    for t in tasks:
        rl = m.get(f"expert_rl:{t}")
        if rl and base:
            gain = rl["accuracy"][t] - base["accuracy"][t]
            add(f"RL expert beats base on {t} by >= 20 points", round(100 * gain, 1), gain >= 0.20)
    rl_avg = _mean(m[f"expert_rl:{t}"]["average"] for t in tasks if f"expert_rl:{t}" in m)
    sft_avg = _mean(m[f"expert_sft:{t}"]["average"] for t in tasks if f"expert_sft:{t}" in m)
    if rl_avg is not None and sft_avg is not None:
        add("RL experts beat SFT experts on average", f"{rl_avg:.3f} vs {sft_avg:.3f}", rl_avg > sft_avg)
    hard, oracle = m.get("mor_lora_hard"), m.get("oracle")
    if hard and oracle:
        ratio = hard["average"] / oracle["average"] if oracle["average"] else None
        add("MoR-LoRA hard >= 95% of oracle average", None if ratio is None else round(ratio, 3),
            None if ratio is None else ratio >= 0.95)
    for other in ("soft", "topk2_norm"):
        if hard and m.get(other):
            add(f"MoR-LoRA hard beats {other} on average", f"{hard['average']:.3f} vs {m[other]['average']:.3f}",
                hard["average"] > m[other]["average"])
    r = report["routing"].get("mor_lora_hard")
    if r and r["routing_accuracy"] is not None:
        add("routing accuracy on single-domain prompts >= 90%", round(r["routing_accuracy"], 3),
            r["routing_accuracy"] >= 0.90)
    mixed = report["mixed"]
    if "mor_lora_hard" in mixed and "prompt_router" in mixed:
        add("mixed prompts: token-level hard beats prompt-level",
            f"{mixed['mor_lora_hard']:.3f} vs {mixed['prompt_router']:.3f}",
            mixed["mor_lora_hard"] > mixed["prompt_router"])
    remix = m.get("remix")
    for other in ("single_lora_same_active", "mixlora_topk"):
        if remix and m.get(other):
            add(f"ReMix beats {other}", f"{remix['average']:.3f} vs {m[other]['average']:.3f}",
                remix["average"] > m[other]["average"])
    k = pipeline.r.remix.top_k
    if "remix" in report["routing"] and "soft" in report["routing"]:
        re, so = report["routing"]["remix"]["ess"], report["routing"]["soft"]["ess"]
        add(f"ReMix ESS stays at k={k}; soft falls toward 1", f"{re:.2f} vs {so:.2f}",
            abs(re - k) < 0.05 and so < re)
    return rows


# --- writing ------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def tables_markdown(report: dict) -> str:
    tasks = report["tasks"]
    lines = ["| method | " + " | ".join(tasks) + " | average | trainable params | share of soft | train s |",
             "|---|" + "---:|" * (len(tasks) + 4)]
    for name, m in report["methods"].items():
        share = "-" if m["share_of_soft_parameters"] is None else f"{m['share_of_soft_parameters']:.2f}"
        lines.append(f"| {name} | " + " | ".join(_pct(m["accuracy"][t]) for t in tasks)
                     + f" | {_pct(m['average'])} | {m['trainable_parameters']:,} | {share} | {m['train_seconds']:.0f} |")
    out = ["Accuracy (%) on each domain's test split, greedy:", "", *lines, ""]
    if report["routing"]:
        out += ["Routing (analysis of generated and prompt tokens):", "",
                "| mixture | routing accuracy | mean max mass | per-token ESS | ESS of mean routing |",
                "|---|---:|---:|---:|---:|"]
        for name, r in report["routing"].items():
            f = (lambda v, p=2: "-" if v is None else f"{v:.{p}f}")
            out.append(f"| {name} | {f(r['routing_accuracy'], 3)} | {f(r['mean_max_mass'], 3)} | {f(r['ess'])} "
                       f"| {f(r['ess_of_mean'])} |")
        out.append("")
    if report["mixed"]:
        out += ["Mixed-domain prompts (both answers right):", "", "| routing | accuracy (%) |", "|---|---:|"]
        out += [f"| {k} | {_pct(v)} |" for k, v in report["mixed"].items()] + [""]
    if report["targets"]:
        out += ["Targets:", "", "| target | measured | met |", "|---|---|---|"]
        for t in report["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            out.append(f"| {t['target']} | {t['value']} | {met} |")
        out.append("")
    return "\n".join(out)


def _plot_ess(report: dict, path: Path) -> bool:
    if not report["training_ess"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in report["training_ess"].items():
        ax.plot([p["step"] for p in points], [p["ess_token"] for p in points], label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("per-token ESS of routing weights")
    ax.legend()
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
    """Replace the README's results section with the tables of ``run``'s report.json."""
    run, readme = Path(run), Path(readme)
    report = _read(run / "report.json")
    if report is None:
        raise LoramixError(f"{run / 'report.json'}: missing; run `loramix pipeline` first")
    body = (f"\n_Generated by `loramix report {run} --readme {readme}` from `{run}/report.json` "
            f"(recipe `{report['recipe']}`, stage times in seconds: "
            + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items()) + ")._\n\n"
            + tables_markdown(report) + "\n")
    return replace_readme_section(readme, START, END, body)


def replace_readme_section(readme: str | Path, start: str, end: str, body: str) -> Path:
    """Replace the text between the ``start`` and ``end`` markers of ``readme`` (atomically)."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except OSError as e:
        raise LoramixError(f"{readme}: cannot read ({e.strerror})") from None
    if start not in text or end not in text:
        raise LoramixError(f"{readme}: no {start} ... {end} section to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(head + start + body + end + tail)
    return readme
