"""ReMix's ablations (arXiv 2603.10160) on one command: ``loramix ablate --config recipes/remix-ablation.yaml``.

Every variant trains a ReMix mixture of fresh LoRAs on the same reference traces of the recipe's tasks
(train split), with ``seeds`` seeds, and is evaluated on ``evaluate.n`` test prompts per task. One
knob moves at a time from the recipe's ``remix`` stage (the *default* run, shared by every knob):

* ``k`` (Table 5): experts active per token;
* ``single_lora_k`` (Table 2): k rank-r ReMix experts against one rank-(k*r) LoRA trained on the same
  traces with the same steps, batch and learning rate;
* ``samples`` (Fig. 5): M, the RLOO samples per sequence; ``logq``: log Q of the ordered draw or of the set;
* ``omega`` (Table 3): 2/(k r) (LoRA type) or 2/sqrt(k r) (rsLoRA type);
* ``no_rloo`` (Fig. 4): the routers frozen at their initialisation, selections still sampled;
* ``no_topk`` (Fig. 4): the default run, but inference samples k experts instead of taking the top k.

A rerun skips finished runs and evaluations (each is written atomically), so a killed ablation resumes.
``report.json`` holds ``ablations``: knob -> value -> ``{average, ci, seeds, spread, run}`` and the
paired comparisons the paper's claims rest on; ``report.md`` renders them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from loramix import stats
from loramix.errors import DataError, LoramixError
from loramix.io import atomic_path, write_json, write_jsonl
from loramix.recipe import EvalStage, ReMixStage, from_dict
from loramix.tasks.base import DEFAULT_DIFFICULTY

# The paper's numbers where it reports the same knob (average accuracy, %): Table 5 and Fig. 5.
PAPER = {"k": {1: 56.2, 2: 59.7, 3: 61.3, 4: 64.2}, "samples": {2: 56.0, 4: 56.8, 8: 57.5, 32: 58.8}}


@dataclass
class AblationKnobs:
    k: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    single_lora_k: list[int] = field(default_factory=lambda: [1, 2, 4])
    samples: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    logq: list[str] = field(default_factory=lambda: ["ordered", "set"])
    omega: list[str] = field(default_factory=lambda: ["linear", "sqrt"])
    no_rloo: bool = True
    no_topk: bool = True


@dataclass
class AblationRecipe:
    """The ablation experiment. ``remix`` is the default run; ``n_examples`` reference traces per task."""

    name: str = "remix-ablation"
    base: str = "default"
    tasks: list[str] = field(default_factory=lambda: ["add", "sort", "bool", "mod", "strings"])
    difficulty: str = DEFAULT_DIFFICULTY
    seed: int = 0
    seeds: int = 2
    n_examples: int = 256
    max_length: int = 512
    remix: ReMixStage = field(default_factory=ReMixStage)
    evaluate: EvalStage = field(default_factory=EvalStage)
    knobs: AblationKnobs = field(default_factory=AblationKnobs)


def load_ablation_recipe(path: str | Path) -> AblationRecipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise DataError(path, "top level", "must be a mapping")
    recipe = from_dict(AblationRecipe, data, path)
    if recipe.seeds < 1:
        raise DataError(path, "seeds", f"must be >= 1, got {recipe.seeds}")
    return recipe


@dataclass(frozen=True)
class Variant:
    """One trained configuration: ``remix`` overrides of the default run, or a single LoRA of ``rank``."""

    name: str
    overrides: tuple = ()  # (ReMixConfig field, value) pairs
    single_lora_rank: int | None = None
    sample_at_inference: bool = False  # evaluate the default run's mixture with sampled routing


def plan(r: AblationRecipe) -> tuple[dict[str, Variant], dict[str, dict]]:
    """The variants to train and, per knob, value -> variant name (the default value -> ``default``)."""
    x, kn = r.remix, r.knobs
    variants = {"default": Variant("default")}
    knobs: dict[str, dict] = {}

    def add(knob, value, name, **kw):
        if name not in variants:
            variants[name] = Variant(name, **kw)
        knobs.setdefault(knob, {})[value] = name

    defaults = {"k": x.top_k, "samples": x.samples, "logq": "ordered", "omega": "linear"}
    fields = {"k": "top_k", "samples": "samples", "logq": "logq", "omega": "omega"}
    for knob in ("k", "samples", "logq", "omega"):
        for value in getattr(kn, knob):
            if value == defaults[knob]:
                add(knob, value, "default")
            else:
                add(knob, value, f"{knob}={value}", overrides=((fields[knob], value),))
    for k in kn.single_lora_k:
        add("single_lora_k", k, f"single_lora_r{k * x.rank}", single_lora_rank=k * x.rank)
    if kn.no_rloo:
        add("rloo", "off", "no_rloo", overrides=(("freeze_router", True),))
        knobs["rloo"]["on"] = "default"
    if kn.no_topk:
        add("inference", "sample", "no_topk", sample_at_inference=True)
        knobs["inference"]["top-k"] = "default"
    for knob in ("k", "single_lora_k"):
        for value in getattr(kn, knob):
            if value > x.n_experts:
                raise LoramixError(f"ablation knob {knob}={value} exceeds remix.n_experts={x.n_experts}")
    return variants, knobs


class Ablation:
    def __init__(self, recipe: AblationRecipe, root: str | Path = "runs", progress: bool = True):
        self.r, self.progress = recipe, progress
        self.run = Path(root) / recipe.name
        self.variants, self.knobs = plan(recipe)
        self.seconds: dict[str, float] = {}

    def path(self, *parts) -> Path:
        return self.run.joinpath(*parts)

    def traces(self) -> Path:
        """Reference traces of every task's train split, one file for every variant (same data)."""
        from loramix.tasks import get_task

        out = self.path("traces.jsonl")
        if not out.is_file():
            rows = []
            for i, name in enumerate(self.r.tasks):
                task = get_task(name)
                for ex in task.examples("train", self.r.n_examples, seed=self.r.seed * 1000 + i,
                                        difficulty=self.r.difficulty):
                    rows.append({"prompt": ex.prompt, "completion": task.reference_completion(ex), "task": name})
            write_jsonl(out, rows)
        return out

    def run_name(self, variant: str, seed: int) -> str:
        return f"{variant}-s{seed}"

    def train(self, v: Variant, seed: int, base: str, traces: Path) -> Path:
        from loramix.train.multitask import MultitaskConfig, train_multitask
        from loramix.train.remix import ReMixConfig, train_remix

        x, out = self.r.remix, self.path("runs", self.run_name(v.name, seed))
        if v.sample_at_inference:
            return self._sampling_copy(self.path("runs", self.run_name("default", seed)), out)
        if v.single_lora_rank is not None:
            train_multitask(MultitaskConfig(base=base, traces=str(traces), out=str(out), rank=v.single_lora_rank,
                                            steps=x.steps, batch_size=x.batch_size, learning_rate=x.learning_rate,
                                            lr_scheduler_type="cosine", max_length=self.r.max_length, seed=seed,
                                            progress=self.progress))
            return out
        cfg = ReMixConfig(out=out, base=base, traces=traces, router="remix", n_experts=x.n_experts, top_k=x.top_k,
                          rank=x.rank, samples=x.samples, steps=x.steps, batch_size=x.batch_size,
                          learning_rate=x.learning_rate, max_length=self.r.max_length, seed=seed,
                          logging_steps=max(1, x.steps // 20), progress=self.progress)
        train_remix(dataclasses.replace(cfg, **dict(v.overrides)))
        return out

    @staticmethod
    def _sampling_copy(source: Path, out: Path) -> Path:
        """The trained mixture at ``source`` with its routers set to sample at inference."""
        from loramix.mixture import MIXTURE_CONFIG

        if not (out / MIXTURE_CONFIG).is_file():
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            cfg = json.loads((tmp / MIXTURE_CONFIG).read_text())
            cfg.setdefault("router_options", {})["inference"] = "sample"
            (tmp / MIXTURE_CONFIG).write_text(json.dumps(cfg, indent=2))
            tmp.rename(out)
        return out

    def evaluate(self, run: str, path: Path, base: str, seed: int) -> dict:
        from loramix.evaluate import evaluate_path

        out = self.path("eval", f"{run}.json")
        if not out.is_file():
            ev = self.r.evaluate
            evaluate_path(path, self.r.tasks, base=base, out=out, n=ev.n, split=ev.split,
                          difficulty=self.r.difficulty, batch_size=ev.batch_size, seed=seed)
        return json.loads(out.read_text())

    def execute(self) -> dict:
        from rich.console import Console

        from loramix.loading import resolve_base

        console = Console(quiet=not self.progress)
        base = str(resolve_base(self.r.base))
        traces = self.traces()
        seeds = [self.r.seed + i for i in range(self.r.seeds)]
        order = sorted(self.variants.values(), key=lambda v: v.sample_at_inference)  # no_topk needs default
        evals: dict[str, list[dict]] = {}
        for n, v in enumerate(order, start=1):
            console.print(f"[bold]{n}/{len(order)}[/] {v.name}", highlight=False)
            for seed in seeds:
                t0 = time.monotonic()
                path = self.train(v, seed, base, traces)
                evals.setdefault(v.name, []).append(self.evaluate(self.run_name(v.name, seed), path, base, seed))
                self.seconds[v.name] = self.seconds.get(v.name, 0.0) + time.monotonic() - t0
        report = build_ablation_report(self.r, self.knobs, evals, self.seconds)
        write_ablation_report(report, self.run)
        return report


def build_ablation_report(r: AblationRecipe, knobs: dict[str, dict], evals: dict[str, list[dict]],
                          seconds: dict[str, float] | None = None) -> dict:
    from loramix.report import _diff_row, _method_entry

    entries = {name: _method_entry(ev, list(r.tasks)) for name, ev in evals.items()}
    ablations = {}
    for knob, values in knobs.items():
        ablations[knob] = {}
        for value, run in values.items():
            e = entries[run]
            ablations[knob][str(value)] = {
                "run": run, "average": e["average"], "ci": e["average_ci"], "seeds": e["average_seeds"],
                "spread": e["average_seed_spread"], "paper": PAPER.get(knob, {}).get(value)}
    outcomes = {name: e.pop("_outcomes") for name, e in entries.items()}
    targets = []

    def compare(claim, knob, hi, lo):
        a, b = knobs.get(knob, {}).get(hi), knobs.get(knob, {}).get(lo)
        if a and b and a != b:
            row = _diff_row(claim, outcomes[a], outcomes[b], 0.0, note=f"{a} minus {b}, paired over prompts")
            if row:
                targets.append(row)

    kn = r.knobs
    if kn.k:
        compare(f"accuracy rises with k (k={max(kn.k)} beats k={min(kn.k)})", "k", max(kn.k), min(kn.k))
    if kn.samples:
        compare(f"accuracy rises with M (M={max(kn.samples)} beats M={min(kn.samples)})", "samples",
                max(kn.samples), min(kn.samples))
    for k in kn.single_lora_k:
        if k in knobs.get("k", {}):
            a, b = knobs["k"][k], knobs["single_lora_k"][k]
            row = _diff_row(f"k={k} rank-r ReMix beats one rank-{k}r LoRA", outcomes[a], outcomes[b], 0.0)
            if row:
                targets.append(row)
    compare("RLOO helps (trained router beats the frozen one)", "rloo", "on", "off")
    compare("top-k at inference beats sampling", "inference", "top-k", "sample")
    compare("the set's log Q matches or beats the ordered draw's", "logq", "set", "ordered")
    return {"recipe": r.name, "tasks": list(r.tasks), "seeds": r.seeds, "n_eval": r.evaluate.n,
            "difficulty": r.difficulty, "runs": entries, "ablations": ablations, "targets": targets,
            "seconds": {k: round(v, 1) for k, v in (seconds or {}).items()}}


KNOB_TITLES = {"k": "k experts per token (Table 5)", "single_lora_k": "one rank-(k·r) LoRA (Table 2)",
               "samples": "RLOO samples M (Fig. 5)", "logq": "log Q of the draw or of the set",
               "omega": "ω: 2/(kr) linear, 2/√(kr) sqrt (Table 3)", "rloo": "RLOO on / router frozen (Fig. 4)",
               "inference": "top-k or sampled routing at inference (Fig. 4)"}


def ablation_markdown(report: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    out = [f"{report['n_eval']} test prompts per task ({', '.join(report['tasks'])}, {report['difficulty']}), "
           f"{report['seeds']} seeds; 95% intervals by stratified bootstrap over prompts of the seed-averaged "
           "outcomes; spread = min-max of the seeds' averages.", ""]
    for knob, values in report["ablations"].items():
        out += [f"**{KNOB_TITLES.get(knob, knob)}**", "", "| value | average | 95% CI | seeds | paper |",
                "|---|---|---|---|---|"]
        for value, a in values.items():
            ci = "-" if not a["ci"] else f"[{pct(a['ci'][0])}, {pct(a['ci'][1])}]"
            seeds = ", ".join(pct(s) for s in a["seeds"]) or "-"
            out.append(f"| {value} | {pct(a['average'])} | {ci} | {seeds} | "
                       f"{'-' if a['paper'] is None else a['paper']} |")
        out.append("")
    if report["targets"]:
        out += ["| claim | difference | 95% CI | verdict |", "|---|---|---|---|"]
        for t in report["targets"]:
            out.append(f"| {t['name']} | {100 * t['value']:+.1f} | [{100 * t['ci'][0]:+.1f}, {100 * t['ci'][1]:+.1f}] "
                       f"| {t['verdict']} |")
        out.append("")
    return "\n".join(out)


def write_ablation_report(report: dict, run: Path) -> None:
    write_json(run / "report.json", report)
    with atomic_path(run / "report.md") as tmp:
        tmp.write_text(f"# ReMix ablations: {report['recipe']}\n\n" + ablation_markdown(report) + "\n")


def run_ablation(config: str | Path, root: str | Path = "runs", progress: bool = True) -> dict:
    """Train and evaluate every variant of the ablation recipe at ``config``; returns the report."""
    return Ablation(load_ablation_recipe(config), root, progress).execute()


ABLATION_START, ABLATION_END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def update_readme_ablation(run: str | Path, readme: str | Path = "README.md") -> Path:
    from loramix.report import replace_readme_section

    run = Path(run)
    if not (run / "report.json").is_file():
        raise LoramixError(f"{run / 'report.json'}: missing; run `loramix ablate` first")
    report = json.loads((run / "report.json").read_text())
    body = (f"\n_Generated by `loramix ablate --readme` from `{run}/report.json`._\n\n"
            + ablation_markdown(report) + "\n")
    return replace_readme_section(readme, ABLATION_START, ABLATION_END, body)


__all__ = ["AblationRecipe", "AblationKnobs", "Ablation", "load_ablation_recipe", "plan", "run_ablation",
           "build_ablation_report", "ablation_markdown", "update_readme_ablation"]
