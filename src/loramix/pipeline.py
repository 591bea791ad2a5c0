"""`loramix pipeline`: the paper's experiment end to end, as resumable, cached stages.

1. build or load the base;  2. one RLVR (GRPO) expert per domain, and the same-size SFT experts;
3. distill verified traces;  4. MoR-LoRA (hard, shared router + attention LoRA) and the routed
   baselines (soft, normalised top-2, Gumbel, oracle, prompt-level router);
5. merges, multi-task LoRA, a single LoRA with ReMix's active parameters, ReMix, MixLoRA-style top-k;
6. evaluate the base, the experts and the plain adapters on every domain;
7. analyze every mixture's routing while scoring it, plus mixed prompts;
8. ``runs/<name>/report.md`` and ``report.json``.

Every stage writes its output atomically and is skipped when that output exists, and every training
command resumes from its own checkpoints, so rerunning after a crash (even ``kill -9``) picks up where
it stopped. ``<run>/stage_seconds.json`` keeps each stage's time: a rerun adds a stage's time only
when the stage wrote something, so a fully cached rerun keeps the original times (and reports its
own in ``report.json``'s ``last_run_seconds``).

Only loramix's stage headings, progress bars and messages reach the terminal (the HF Trainer's log
dicts go to ``trainer_log.jsonl`` in each run's work folder); with ``progress=False`` nothing does.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loramix import __version__
from loramix.analysis import analyze_mixture
from loramix.base_model import build_or_reuse
from loramix.baselines.merges import merge_experts
from loramix.baselines.oracle import make_oracle_mixture
from loramix.errors import LoramixError, unknown_name
from loramix.evaluate import evaluate_model, load_for_eval
from loramix.io import atomic_path, read_json, write_json
from loramix.loading import resolve_base
from loramix.mixture import MixtureConfig
from loramix.recipe import Recipe
from loramix.report import build_report, write_report
from loramix.routers import STE_MODES, GumbelOptions, HardOptions, TopKOptions
from loramix.tasks import list_tasks
from loramix.tasks.mixed import mixed_examples, mixed_reference_completion
from loramix.tasks.splits import build_task, check_disjoint
from loramix.train.common import quiet_hf
from loramix.train.distill import DistillConfig, distill
from loramix.train.experts import ExpertTrainConfig, train_expert
from loramix.train.multitask import MultitaskConfig, train_multitask
from loramix.train.prompt_router import build_prompt_router
from loramix.train.remix import ReMixConfig, train_remix
from loramix.train.router import RouterTrainConfig, train_router

ROUTER_METHODS = {  # name -> (router, top_k, router options); trained over the frozen RL experts
    "mor_lora_hard": ("hard", 1, HardOptions(ste="full")),  # the paper's STE formula
    "mor_lora_hard_chosen": ("hard", 1, HardOptions(ste="chosen")),  # the authors' released code
    "soft": ("soft", None, None),
    "topk2_norm": ("topk", 2, TopKOptions(normalize=True)),
    "gumbel": ("gumbel", None, GumbelOptions(hard=True)),
}
MERGES = {"merge_linear": "linear", "merge_ties": "ties", "merge_dare": "dare_ties"}
PROMPT_ROUTERS = ("prompt_router", "prompt_router_fair")  # plain: fixed router; fair: the hard mixture's
REMIX_METHODS = {"remix": "remix", "mixlora_topk": "topk", "soft_trainable": "soft"}  # name -> router; fresh LoRAs
MIXTURE_METHODS = ("oracle", *ROUTER_METHODS, *PROMPT_ROUTERS, *REMIX_METHODS)
ADAPTER_METHODS = (*MERGES, "multitask_lora", "single_lora_same_active")
METHOD_FAMILIES = ("base", "expert_rl", "expert_sft", "oracle", "segment_oracle", *ROUTER_METHODS, *MERGES,
                   "multitask_lora", *PROMPT_ROUTERS, *REMIX_METHODS, "single_lora_same_active")
FROZEN_EXPERT_METHODS = ("oracle", *ROUTER_METHODS, *PROMPT_ROUTERS)  # mixtures over the frozen RL experts
SEEDED_METHODS = (*ROUTER_METHODS, *PROMPT_ROUTERS, *REMIX_METHODS, "multitask_lora",  # trained with
                  "single_lora_same_active")  # `recipe.seeds` seeds
MIXED_METHODS = ("base", "segment_oracle", "mor_lora_hard", *PROMPT_ROUTERS)  # token- vs prompt-level
MIXED_ALL_SEEDS = ("mor_lora_hard", "prompt_router_fair")  # the token- vs prompt-level comparison; others: 1 seed
SEED_MARK = "-s"  # methods/mor_lora_hard-s1 is mor_lora_hard trained with seed + 1


def method_of(run: str) -> str:
    """The method a run belongs to: ``mor_lora_hard-s2`` -> ``mor_lora_hard``."""
    head, mark, tail = run.rpartition(SEED_MARK)
    return head if mark and tail.isdigit() else run
STAGE_FILE = "stage_seconds.json"  # in the run folder: each stage's seconds, kept across reruns
NOT_STAGE_OUTPUTS = {STAGE_FILE, "recipe.json", "report.json", "report.md", "ess_steps.png",
                     "mor_lora_hard_usage.png"}  # rewritten by every run: not a sign that a stage worked
STAGES = ("1. base", "2. experts (GRPO, SFT)", "3. distill traces", "4. MoR-LoRA and routed baselines",
          "5. merges, multi-task LoRA, ReMix", "6. evaluate base, experts, adapters",
          "7. analyze mixtures (routing, accuracy, mixed prompts)", "8. report")


class Pipeline:
    def __init__(self, recipe: Recipe, root: str | Path = "runs", console: Console | None = None,
                 progress: bool = True):
        """``progress=False``: quiet, nothing printed (no headings, bars or messages); errors raise."""
        self.r, self.progress = recipe, progress
        self.console = (console or Console()) if progress else Console(quiet=True)
        self.run = Path(root) / recipe.name
        families = recipe.methods or list(METHOD_FAMILIES)
        unknown = sorted(set(families) - set(METHOD_FAMILIES))
        if unknown:
            raise LoramixError(f"recipe methods: unknown {unknown}; valid: {', '.join(METHOD_FAMILIES)}")
        self.families = families
        known = list_tasks()
        for name in sorted({*recipe.tasks, *(t for pair in recipe.evaluate.mixed_pairs for t in pair)}):
            if name not in known:  # refused before any model is built or loaded
                raise unknown_name("task", name, known)
        self._check_data()
        if recipe.router.ste not in STE_MODES:  # refused before anything runs
            raise LoramixError(f"recipe router.ste: unknown {recipe.router.ste!r}; valid: {', '.join(STE_MODES)}")
        self.timings: dict[str, float] = {}  # per stage: seconds over the runs in which it wrote something
        self.run_seconds: dict[str, float] = {}  # per stage: seconds in this run

    # -- helpers ---------------------------------------------------------------------------------
    def _check_data(self) -> None:
        """The recipe's data, before anything runs: every task_kwargs entry names a task of the
        recipe, and no benchmark trains and is evaluated on the same rows (``check_disjoint``)."""
        names = [*self.r.tasks, *(t for pair in self.r.evaluate.mixed_pairs for t in pair)]
        for name, kwargs in self.r.task_kwargs.items():
            if name not in names:
                raise LoramixError(f"recipe task_kwargs.{name}: not a task of the recipe ({', '.join(self.r.tasks)})")
            if not isinstance(kwargs, dict):
                raise LoramixError(f"recipe task_kwargs.{name}: must be a mapping such as {{train: FILE, test: FILE}}")
        check_disjoint(self.r.task_kwargs, list(self.r.task_kwargs))

    def task(self, name: str):
        """The task ``name`` with the recipe's data for it: every stage builds its tasks here."""
        return build_task(name, self.r.task_kwargs)

    def stage(self, name: str, fn, *args, keep_time: bool = True, **kwargs):
        """Run one stage. Its time is added to the kept ``timings`` (``stage_seconds.json``) only when
        it wrote something, or has no time on record yet: a cached stage keeps its original time.
        ``keep_time=False`` (the report, written while it runs): this run's time only."""
        self.console.rule(f"[bold]{name}")
        before = self._outputs()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = round(time.perf_counter() - start, 2)
        self.run_seconds[name] = seconds
        if keep_time and (name not in self.timings or self._outputs() != before):
            self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 2)
            write_json(self.path(STAGE_FILE), self.timings)
        return result

    def _outputs(self) -> set[tuple[str, int]]:
        """Every file the stages wrote in the run folder, with its modification time."""
        found = set()
        for p in self.run.rglob("*"):
            rel = p.relative_to(self.run)
            if rel.parts[0] in NOT_STAGE_OUTPUTS:
                continue
            try:
                if p.is_file():
                    found.add((str(rel), p.stat().st_mtime_ns))
            except OSError:  # gone meanwhile
                continue
        return found

    def _load_timings(self) -> None:
        f = self.path(STAGE_FILE)
        try:
            saved = read_json(f) if f.is_file() else {}
        except LoramixError:  # unreadable: start the ledger over
            saved = {}
        self.timings = {k: float(v) for k, v in saved.items() if k in STAGES and isinstance(v, (int, float))} \
            if isinstance(saved, dict) else {}

    def want(self, family: str) -> bool:
        """Whether the recipe asks for ``family``; the fair prompt router also needs the hard mixture
        it is built from."""
        if family == "prompt_router_fair" and "mor_lora_hard" not in self.families:
            return False
        return family in self.families

    def path(self, *parts: str) -> Path:
        return self.run.joinpath(*parts)

    def runs_of(self, name: str) -> list[tuple[str, int]]:
        """``(run name, seed)`` of each training of method ``name``: ``recipe.seeds`` of them for a
        stage-2 method (``name``, ``name-s1``, ...), else one."""
        k = self.r.seeds if name in SEEDED_METHODS else 1
        return [(name if i == 0 else f"{name}{SEED_MARK}{i}", self.r.seed + i) for i in range(k)]

    @property
    def rl_experts(self) -> list[Path]:
        return [self.path("experts", "rl", t) for t in self.r.tasks]

    # -- stages ----------------------------------------------------------------------------------
    def build_base(self) -> None:
        # the embedded default is built on first use, with its bar only when not quiet
        self.base = str(build_or_reuse(progress=self.progress, **self.r.embedded_base)[0]
                        if str(self.r.base) == "default" else resolve_base(self.r.base))
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
                    task=task, task_kwargs=self.r.task_kwargs.get(task, {}),
                    out=self.path("experts", "rl" if method == "grpo" else "sft", task), base=self.base,
                    init_adapter=init,
                    method=method, sft_warmup_steps=e.sft_warmup_steps if method == "grpo" else 0,
                    steps=e.steps if method == "grpo" else e.sft_steps, batch_size=e.batch_size,
                    num_generations=e.num_generations, temperature=e.temperature, top_p=e.top_p, beta=e.beta,
                    lr_scheduler_type=e.lr_scheduler_type, warmup_ratio=e.warmup_ratio, dropout=e.dropout,
                    max_completion_length=e.max_completion_length,
                    learning_rate=e.learning_rate if method == "grpo" else e.sft_learning_rate,
                    sft_learning_rate=e.sft_learning_rate,
                    rank=e.rank, alpha=e.alpha, difficulty=self.r.difficulty, n_train=e.n_train,
                    mixed_share=e.mixed_share if method == "sft" or e.sft_warmup_steps else 0.0,
                    n_eval=e.n_eval, seed=self.r.seed, chat_template=self.r.chat_template, progress=self.progress)
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
                              max_new_tokens=d.max_new_tokens, difficulty=self.r.difficulty, seed=self.r.seed,
                              task_kwargs=self.r.task_kwargs, chat_template=self.r.chat_template),
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
            for ex in mixed_examples(self.task(a), self.task(b), "train", self.r.distill.mixed_references, seed=self.r.seed,
                                     difficulty=self.r.difficulty):
                rows.append({"prompt": ex.prompt, "completion": mixed_reference_completion(ex), "task": f"{a}+{b}",
                             "mode": "reference"})
        return rows

    def train_mixtures(self) -> None:
        rc, traces = self.r.router, str(self.path("traces_stage2.jsonl"))
        experts = [str(p) for p in self.rl_experts]
        for name, (router, top_k, options) in ROUTER_METHODS.items():
            for run, seed in self.runs_of(name) if self.want(name) else ():
                if name == "mor_lora_hard":
                    options = HardOptions(ste=rc.ste)  # the recipe's estimator (router.ste)
                mixture = MixtureConfig(router=router, top_k=top_k, router_options=options,
                                        attention_lora_rank=rc.attention_lora_rank,
                                        attention_lora_alpha=rc.attention_lora_alpha,
                                        attention_lora_dropout=rc.attention_lora_dropout)
                train_router(RouterTrainConfig(
                    base=self.base, experts=experts, traces=traces, out=str(self.path("methods", run)),
                    mixture=mixture, learning_rate=rc.learning_rate,
                    router_learning_rate=rc.router_learning_rate,
                    num_train_epochs=rc.num_train_epochs, max_steps=rc.max_steps, batch_size=rc.batch_size,
                    warmup_ratio=rc.warmup_ratio, lr_scheduler_type=rc.lr_scheduler_type,
                    max_length=self.r.max_length, seed=seed, chat_template=self.r.chat_template,
                    progress=self.progress))
        if (self.want("oracle") or self.want("segment_oracle")) and not self.path("methods", "oracle").exists():
            make_oracle_mixture(self.base, experts, list(self.r.tasks), self.path("methods", "oracle"))
        # plain: a fixed router over the experts; fair: the hard mixture (same experts, same attention
        # LoRA trained on the same traces) with one decision per sequence instead of per token
        for name in PROMPT_ROUTERS:
            if not self.want(name):
                continue
            for (run, seed), (hard, _) in zip(self.runs_of(name), self.runs_of("mor_lora_hard")):
                if not self.path("methods", run).exists():
                    build_prompt_router(self.base, experts, self.path("methods", run),
                                        traces=self.path("traces.jsonl"), seed=seed,
                                        mixture=self.path("methods", hard) if name == "prompt_router_fair" else None,
                                        chat_template=self.r.chat_template)

    def train_baselines(self) -> None:
        traces, experts = str(self.path("traces_stage2.jsonl")), [str(p) for p in self.rl_experts]
        for name, method in MERGES.items():
            if self.want(name) and not self.path("methods", name).exists():
                merge_experts(self.base, experts, method, self.path("methods", name), seed=self.r.seed)
        # ReMix's two single-LoRA comparators: the same total trainable LoRA parameters (rank n*r, with the
        # multitask stage's schedule) and the same activated ones (rank k*r, with ReMix's own schedule)
        m, x = self.r.multitask, self.r.remix
        plans = {"multitask_lora": (x.n_experts * x.rank, m.steps, m.batch_size, m.learning_rate),
                 "single_lora_same_active": (x.top_k * x.rank, x.steps, x.batch_size, x.learning_rate)}
        for name, (rank, steps, batch_size, lr) in plans.items():
            for run, seed in self.runs_of(name) if self.want(name) else ():
                train_multitask(MultitaskConfig(
                    base=self.base, traces=traces, out=str(self.path("methods", run)), rank=rank, steps=steps,
                    batch_size=batch_size, learning_rate=lr, max_length=self.r.max_length, seed=seed,
                    chat_template=self.r.chat_template, progress=self.progress))
        for name, router in REMIX_METHODS.items():
            for run, seed in self.runs_of(name) if self.want(name) else ():
                train_remix(ReMixConfig(
                    out=self.path("methods", run), base=self.base, traces=Path(traces), router=router,
                    n_experts=x.n_experts, top_k=x.top_k, rank=x.rank, samples=x.samples, steps=x.steps,
                    batch_size=x.batch_size, learning_rate=x.learning_rate, max_length=self.r.max_length, seed=seed,
                    chat_template=self.r.chat_template, logging_steps=max(1, x.steps // 20), progress=self.progress))

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
                for run, _ in self.runs_of(name):
                    paths[run] = self.path("methods", run)
        return paths

    def _common_eval(self) -> dict:
        ev = self.r.evaluate
        return dict(split=ev.split, n=ev.n, difficulty=self.r.eval_difficulty, batch_size=ev.batch_size,
                    max_new_tokens=ev.max_new_tokens, seed=self.r.seed, chat_template=self.r.chat_template,
                    task_kwargs=self.r.task_kwargs)

    def _eval_bar(self, jobs: list[tuple[str, object]], label: str):
        """Run ``jobs`` (name, zero-argument function) under one progress bar named ``label``."""
        if not jobs:
            return
        columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[now]}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, disable=not self.progress) as bar:
            task = bar.add_task(label, total=len(jobs), now="")
            for name, job in jobs:
                bar.update(task, now=name)
                job()
                bar.advance(task)
            bar.update(task, now="")

    def _evaluate_one(self, name: str, path) -> None:
        """Score one method on every domain into ``eval/<name>.json``; a mixture's first seed is scored
        while its routing is analyzed (``analysis/<name>``), its other seeds only scored."""
        common, out = self._common_eval(), self.path("eval", f"{name.replace(':', '_')}.json")
        model, tok, kind = load_for_eval(path, self.base)
        if kind == "mixture" and method_of(name) == name:  # the report reads the routing of seed 0's run only
            log = Path(path) / "train_log.json"
            if log.is_file() and "ess_mean" not in log.read_text():
                log = Path("-")  # too short a run to have logged routing
            routing = "oracle" if name == "oracle" else "model"
            result = analyze_mixture(model, tok, list(self.r.tasks), out=self.path("analysis", name),
                                     routing=routing, train_log=log if log.is_file() else None, **common)
            write_json(out, {"per_task": result["eval"], "kind": kind})
        else:  # an SFT expert is compared on its own domain only (RL vs SFT), which saves four domains
            tasks = [name.partition(":")[2]] if name.startswith("expert_sft:") else list(self.r.tasks)
            write_json(out, {**evaluate_model(model, tok, tasks, **common).to_dict(), "kind": kind})

    def _evaluate_mixed(self, run: str) -> None:
        """Score one method (one seed's run) on the recipe's mixed pairs into ``eval/mixed_<run>.json``.
        ``segment_oracle`` is the oracle mixture routed by segment."""
        ev = self.r.evaluate
        if run == "base":
            model, tok, _ = load_for_eval(self.base)
            routing = None
        else:
            folder = "oracle" if run == "segment_oracle" else run
            model, tok, _ = load_for_eval(self.path("methods", folder), self.base)
            routing = {"oracle": "oracle", "segment_oracle": "segment"}.get(run)
        pairs = ["+".join(p) for p in ev.mixed_pairs]
        rep = evaluate_model(model, tok, pairs, routing=routing, **{**self._common_eval(), "n": ev.mixed_n})
        write_json(self.path("eval", f"mixed_{run}.json"), rep.to_dict())

    def mixed_runs(self) -> list[str]:
        """Every (method, seed) run scored on mixed prompts."""
        out = []
        for name in MIXED_METHODS:
            if not self.want(name):
                continue
            runs = [run for run, _ in self.runs_of(name)]
            out += runs if name in MIXED_ALL_SEEDS else runs[:1]
        return out

    def _to_evaluate(self, mixtures: bool) -> list[tuple[str, object]]:
        return [(name, lambda name=name, path=path: self._evaluate_one(name, path))
                for name, path in self.method_paths().items()
                if (method_of(name) in MIXTURE_METHODS) == mixtures
                and not self.path("eval", f"{name.replace(':', '_')}.json").is_file()]

    def evaluate_all(self) -> None:
        """Stage 6: the base, the experts and the plain adapters (merges, multi-task LoRAs)."""
        self._eval_bar(self._to_evaluate(mixtures=False), "evaluate")

    def analyze_all(self) -> None:
        """Stage 7: every mixture, scored while its routing is analyzed, then the mixed prompts."""
        jobs = self._to_evaluate(mixtures=True)
        if self.r.evaluate.mixed_pairs:
            jobs += [(f"mixed {run}", lambda run=run: self._evaluate_mixed(run)) for run in self.mixed_runs()
                     if not self.path("eval", f"mixed_{run}.json").is_file()]
        self._eval_bar(jobs, "analyze")

    # -- report ----------------------------------------------------------------------------------
    def report(self) -> dict:
        report = build_report(self)
        write_report(report, self.run)
        return report

    def run_all(self) -> dict:
        quiet_hf()  # HF/TRL's own bars and advisories stay off the terminal
        self.run.mkdir(parents=True, exist_ok=True)
        write_json(self.path("recipe.json"), {"loramix_version": __version__, "recipe": asdict(self.r)})
        self._load_timings()
        steps = (self.build_base, self.train_experts, self.distill, self.train_mixtures, self.train_baselines,
                 self.evaluate_all, self.analyze_all)
        for name, fn in zip(STAGES, steps):
            self.stage(name, fn)
        return self.stage(STAGES[-1], self.report, keep_time=False)


def run_pipeline(recipe: Recipe, root: str | Path = "runs", console: Console | None = None,
                 progress: bool = True) -> dict:
    """Run (or resume) the whole experiment; returns the report dict."""
    return Pipeline(recipe, root, console, progress).run_all()
