"""`loramix pipeline`: the paper's experiment end to end, as resumable, cached stages.

1. build or load the base;  2. one RLVR (GRPO) expert per domain, and the same-size SFT experts;
3. distill verified traces;  4. MoR-LoRA (hard, shared router + attention LoRA);
5. baselines: soft, normalised top-2, Gumbel, merges, multi-task LoRA, prompt-level router, oracle,
   ReMix, MixLoRA-style top-k, and a single LoRA with ReMix's active parameters;
6. evaluate everything on every domain, plus mixed prompts;  7. analyze routing;
8. ``runs/<name>/report.md`` and ``report.json``.

Every stage writes its output atomically and is skipped when that output exists, and every training
command resumes from its own checkpoints, so rerunning after a crash picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from loramix import __version__
from loramix.analysis import analyze_mixture
from loramix.baselines.merges import merge_experts
from loramix.baselines.oracle import make_oracle_mixture
from loramix.errors import LoramixError
from loramix.evaluate import evaluate_model, load_for_eval, mixed_examples, mixed_reference_completion
from loramix.io import atomic_path, write_json
from loramix.loading import resolve_base
from loramix.mixture import MixtureConfig
from loramix.recipe import Recipe
from loramix.report import build_report, write_report
from loramix.routers import GumbelOptions, HardOptions, TopKOptions
from loramix.train.distill import DistillConfig, distill
from loramix.train.experts import ExpertTrainConfig, train_expert
from loramix.train.multitask import MultitaskConfig, train_multitask
from loramix.train.prompt_router import build_prompt_router
from loramix.train.remix import ReMixConfig, train_remix
from loramix.train.router import RouterTrainConfig, train_router

ROUTER_METHODS = {  # name -> (router, top_k, router options); trained over the frozen RL experts
    "mor_lora_hard": ("hard", 1, HardOptions()),
    "soft": ("soft", None, None),
    "topk2_norm": ("topk", 2, TopKOptions(normalize=True)),
    "gumbel": ("gumbel", None, GumbelOptions(hard=True)),
}
MERGES = {"merge_linear": "linear", "merge_ties": "ties", "merge_dare": "dare_ties"}
MIXTURE_METHODS = ("oracle", *ROUTER_METHODS, "prompt_router", "remix", "mixlora_topk")
ADAPTER_METHODS = (*MERGES, "multitask_lora", "single_lora_same_active")
METHOD_FAMILIES = ("base", "expert_rl", "expert_sft", "oracle", *ROUTER_METHODS, *MERGES, "multitask_lora",
                   "prompt_router", "remix", "mixlora_topk", "single_lora_same_active")
MIXED_METHODS = ("mor_lora_hard", "prompt_router", "oracle", "soft", "topk2_norm")


class Pipeline:
    def __init__(self, recipe: Recipe, root: str | Path = "runs", console: Console | None = None,
                 progress: bool = True):
        self.r, self.console, self.progress = recipe, console or Console(), progress
        self.run = Path(root) / recipe.name
        families = recipe.methods or list(METHOD_FAMILIES)
        unknown = sorted(set(families) - set(METHOD_FAMILIES))
        if unknown:
            raise LoramixError(f"recipe methods: unknown {unknown}; valid: {', '.join(METHOD_FAMILIES)}")
        self.families = families
        self.timings: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def stage(self, name: str, fn, *args, **kwargs):
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)
        return result

    def want(self, family: str) -> bool:
        return family in self.families

    def path(self, *parts: str) -> Path:
        return self.run.joinpath(*parts)

    @property
    def rl_experts(self) -> list[Path]:
        return [self.path("experts", "rl", t) for t in self.r.tasks]

    # -- stages ----------------------------------------------------------------------------------
    def build_base(self) -> None:
        self.base = str(resolve_base(self.r.base))
        self.console.print(f"base: {self.base}", highlight=False)

    def train_experts(self) -> None:
        e = self.r.expert
        if e.grpo_from_sft and e.sft_warmup_steps:
            raise LoramixError("recipe expert: grpo_from_sft reuses the SFT expert as the warm-up; "
                               "set sft_warmup_steps to 0")
        order = (("sft", "expert_sft"), ("grpo", "expert_rl")) if e.grpo_from_sft else \
            (("grpo", "expert_rl"), ("sft", "expert_sft"))
        for method, family in order:
            if family == "expert_sft" and not (self.want(family) or e.grpo_from_sft):
                continue
            for task in self.r.tasks:
                init = self.path("experts", "sft", task) if method == "grpo" and e.grpo_from_sft else None
                cfg = ExpertTrainConfig(
                    task=task, out=self.path("experts", "rl" if method == "grpo" else "sft", task), base=self.base,
                    init_adapter=init,
                    method=method, sft_warmup_steps=e.sft_warmup_steps if method == "grpo" else 0,
                    steps=e.steps if method == "grpo" else e.sft_steps, batch_size=e.batch_size,
                    num_generations=e.num_generations, temperature=e.temperature,
                    max_completion_length=e.max_completion_length,
                    learning_rate=e.learning_rate if method == "grpo" else e.sft_learning_rate,
                    sft_learning_rate=e.sft_learning_rate,
                    rank=e.rank, alpha=e.alpha, difficulty=self.r.difficulty, n_train=e.n_train,
                    n_eval=e.n_eval, seed=self.r.seed, progress=self.progress)
                train_expert(cfg, console=self.console)

    def distill(self) -> None:
        d = self.r.distill
        out = self.path("traces.jsonl")
        marker = self.path("traces.complete")
        if marker.is_file():
            return
        distill(DistillConfig(base=self.base, experts=[str(p) for p in self.rl_experts], tasks=list(self.r.tasks),
                              out=str(out), n_prompts=d.n_prompts, samples=d.samples, temperature=d.temperature,
                              max_per_prompt=d.max_per_prompt, max_per_task=d.max_per_task,
                              difficulty=self.r.difficulty, seed=self.r.seed, task_kwargs=self.r.task_kwargs),
                progress=self.progress)
        counts: dict[str, int] = {}
        for line in out.read_text().splitlines():
            task = json.loads(line)["task"]
            counts[task] = counts.get(task, 0) + 1
        missing = [t for t in self.r.tasks if not counts.get(t)]
        if missing:
            raise LoramixError(f"{out}: no verified traces for {missing}; the experts never answered correctly "
                               "(train them longer, or lower `difficulty`)")
        mixed = self._mixed_references()
        with atomic_path(self.path("traces_stage2.jsonl")) as tmp:
            tmp.write_text(out.read_text() + "".join(json.dumps(r) + "\n" for r in mixed))
        write_json(marker, {"traces_per_task": counts, "mixed_references": len(mixed)})

    def _mixed_references(self) -> list[dict]:
        """Reference (not distilled) traces of mixed prompts from the train split, so stage 2 can learn
        the two-answer format; no single-domain expert can produce them. Said so in the report."""
        rows = []
        for a, b in self.r.evaluate.mixed_pairs if self.r.distill.mixed_references else ():
            for ex in mixed_examples(a, b, "train", self.r.distill.mixed_references, seed=self.r.seed,
                                     difficulty=self.r.difficulty):
                rows.append({"prompt": ex.prompt, "completion": mixed_reference_completion(ex), "task": f"{a}+{b}",
                             "mode": "reference"})
        return rows

    def train_mixtures(self) -> None:
        rc, traces = self.r.router, str(self.path("traces_stage2.jsonl"))
        experts = [str(p) for p in self.rl_experts]
        for name, (router, top_k, options) in ROUTER_METHODS.items():
            if self.want(name):
                mixture = MixtureConfig(router=router, top_k=top_k, router_options=options,
                                        attention_lora_rank=rc.attention_lora_rank,
                                        attention_lora_alpha=rc.attention_lora_alpha)
                train_router(RouterTrainConfig(
                    base=self.base, experts=experts, traces=traces, out=str(self.path("methods", name)),
                    mixture=mixture, learning_rate=rc.learning_rate,
                    router_learning_rate=rc.router_learning_rate,
                    num_train_epochs=rc.num_train_epochs, max_steps=rc.max_steps, batch_size=rc.batch_size,
                    warmup_ratio=rc.warmup_ratio, lr_scheduler_type=rc.lr_scheduler_type,
                    max_length=self.r.max_length, seed=self.r.seed, progress=self.progress))
        if self.want("oracle") and not self.path("methods", "oracle").exists():
            make_oracle_mixture(self.base, experts, list(self.r.tasks), self.path("methods", "oracle"))
        if self.want("prompt_router") and not self.path("methods", "prompt_router").exists():
            build_prompt_router(self.base, experts, self.path("methods", "prompt_router"),
                                traces=self.path("traces.jsonl"), seed=self.r.seed)

    def train_baselines(self) -> None:
        traces, experts = str(self.path("traces_stage2.jsonl")), [str(p) for p in self.rl_experts]
        for name, method in MERGES.items():
            if self.want(name) and not self.path("methods", name).exists():
                merge_experts(self.base, experts, method, self.path("methods", name), seed=self.r.seed)
        m, x = self.r.multitask, self.r.remix
        ranks = {"multitask_lora": self.r.expert.rank, "single_lora_same_active": x.top_k * x.rank}
        for name, rank in ranks.items():
            if self.want(name):
                train_multitask(MultitaskConfig(
                    base=self.base, traces=traces, out=str(self.path("methods", name)), rank=rank, steps=m.steps,
                    batch_size=m.batch_size, learning_rate=m.learning_rate, max_length=self.r.max_length,
                    seed=self.r.seed, progress=self.progress))
        for name, router in (("remix", "remix"), ("mixlora_topk", "topk")):
            if self.want(name):
                train_remix(ReMixConfig(
                    out=self.path("methods", name), base=self.base, traces=Path(traces), router=router,
                    n_experts=x.n_experts, top_k=x.top_k, rank=x.rank, samples=x.samples, steps=x.steps,
                    batch_size=x.batch_size, learning_rate=x.learning_rate, max_length=self.r.max_length, seed=self.r.seed,
                    logging_steps=max(1, x.steps // 20), progress=self.progress))

    def method_paths(self) -> dict[str, Path | str]:
        paths: dict[str, Path | str] = {}
        if self.want("base"):
            paths["base"] = self.base
        for task in self.r.tasks:
            if self.want("expert_rl"):
                paths[f"expert_rl:{task}"] = self.path("experts", "rl", task)
            if self.want("expert_sft"):
                paths[f"expert_sft:{task}"] = self.path("experts", "sft", task)
        for name in (*MIXTURE_METHODS, *ADAPTER_METHODS):
            if self.want(name):
                paths[name] = self.path("methods", name)
        return paths

    def evaluate_all(self) -> None:
        ev = self.r.evaluate
        common = dict(split=ev.split, n=ev.n, difficulty=self.r.eval_difficulty, batch_size=ev.batch_size,
                      seed=self.r.seed)
        for name, path in self.method_paths().items():
            out = self.path("eval", f"{name.replace(':', '_')}.json")
            if out.is_file():
                continue
            self.console.print(f"evaluate {name}", highlight=False)
            model, tok, kind = load_for_eval(path, self.base)
            if kind == "mixture":
                log = Path(path) / "train_log.json"
                if log.is_file() and "ess_mean" not in log.read_text():
                    log = Path("-")  # too short a run to have logged routing
                routing = "oracle" if name == "oracle" else "model"
                result = analyze_mixture(model, tok, list(self.r.tasks), out=self.path("analysis", name),
                                         routing=routing, train_log=log if log.is_file() else None, **common)
                write_json(out, {"per_task": result["eval"], "kind": kind})
            else:
                write_json(out, {**evaluate_model(model, tok, list(self.r.tasks), **common).to_dict(), "kind": kind})
        for name in MIXED_METHODS:
            out = self.path("eval", f"mixed_{name}.json")
            if not ev.mixed_pairs or not self.want(name) or out.is_file():
                continue
            model, tok, _ = load_for_eval(self.path("methods", name), self.base)
            pairs = ["+".join(p) for p in ev.mixed_pairs]
            rep = evaluate_model(model, tok, pairs, routing="oracle" if name == "oracle" else None,
                                 **{**common, "n": ev.mixed_n})
            write_json(out, rep.to_dict())

    # -- report ----------------------------------------------------------------------------------
    def report(self) -> dict:
        report = build_report(self)
        write_report(report, self.run)
        return report

    def run_all(self) -> dict:
        self.run.mkdir(parents=True, exist_ok=True)
        write_json(self.path("recipe.json"), {"loramix_version": __version__, "recipe": asdict(self.r)})
        self.stage("1. base", self.build_base)
        self.stage("2. experts (GRPO, SFT)", self.train_experts)
        self.stage("3. distill traces", self.distill)
        self.stage("4-5. MoR-LoRA, routed baselines", self.train_mixtures)
        self.stage("5. merges, multi-task LoRA, ReMix", self.train_baselines)
        self.stage("6-7. evaluate and analyze", self.evaluate_all)
        return self.stage("8. report", self.report)


def run_pipeline(recipe: Recipe, root: str | Path = "runs", console: Console | None = None,
                 progress: bool = True) -> dict:
    """Run (or resume) the whole experiment; returns the report dict."""
    return Pipeline(recipe, root, console, progress).run_all()
