"""`loramix pipeline --dry-run`: check a recipe before hours of GPU time are spent on it.

A real recipe fails late when it fails: a data file missing for the fourth task, a train file that
shares questions with the test file, a trace budget longer than the router's ``max_length``. The dry
run finds all of these at once, with no weights loaded (the base's config and tokenizer only) and no
base built, and prints the plan: the stages, the examples per task and split, and each stage's
generation and training token bounds, so a GPU budget can be sized from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loramix.chat import has_chat_template, render_prompts, uses_chat_template
from loramix.errors import LoramixError
from loramix.recipe import Recipe
from loramix.tasks import list_tasks
from loramix.tasks.mixed import MIXED_SEP
from loramix.tasks.splits import build_task, check_disjoint


@dataclass
class SplitRow:
    """One task's split: the file it reads (or ``generated``) and how many examples it holds."""

    task: str
    split: str
    source: str
    examples: int


@dataclass
class StageRow:
    """One pipeline stage: what it runs and its token bounds (0: none)."""

    stage: str
    work: str
    generation_tokens: int = 0
    training_tokens: int = 0


@dataclass
class DryRunReport:
    """What ``dry_run`` found: one line per failure (empty: the recipe is ready) and the plan."""

    recipe: str
    base: str = ""
    context: int | None = None  # the base's max_position_embeddings
    chat_template: str = ""
    failures: list[str] = field(default_factory=list)
    splits: list[SplitRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Split:
    """A loaded split: its examples and their rendered prompt lengths, in file order."""

    examples: list
    prompt_tokens: list[int]

    def longest(self, n: int) -> int:
        return max(self.prompt_tokens[:n], default=0)


def _load_base(recipe: Recipe, report: DryRunReport):
    """(tokenizer, context) of the recipe's base, from its config and tokenizer only; the embedded
    default is not built when missing (the report says it would be). ``(None, None)`` on failure."""
    from loramix.base_model import DEFAULT_CONFIG, build_tokenizer, default_base_path, is_built, llama_config
    from loramix.loading import WEIGHT_PATTERNS

    if str(recipe.base) == "default":
        path = default_base_path()
        if not is_built(path):
            report.base = f"default: not built yet, would be built at {path} (minutes on CPU)"
            return build_tokenizer(), llama_config(DEFAULT_CONFIG.hidden, DEFAULT_CONFIG.layers).max_position_embeddings
        report.base = f"default ({path})"
    else:
        path = Path(recipe.base).expanduser()
        report.base = str(path)
        problem = ("not a folder" if not path.is_dir() else "no config.json; not a Hugging Face model folder"
                   if not (path / "config.json").is_file() else "no model weights (model.safetensors or "
                   "pytorch_model.bin)" if not any(path.glob(p) for p in WEIGHT_PATTERNS) else None)
        if problem:
            report.failures.append(f"{path}: recipe base: {problem}")
            return None, None
    from transformers import AutoConfig, AutoTokenizer

    try:
        config, tok = AutoConfig.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        report.failures.append(f"{path}: recipe base: cannot load config/tokenizer ({str(err).splitlines()[0]})")
        return None, None
    return tok, getattr(config, "max_position_embeddings", None)


def _examples(task, split: str, n: int, difficulty: str) -> list:
    """A benchmark's whole split (its file), or ``n`` generated examples of a synthetic task."""
    from loramix.tasks.benchmarks import BenchmarkTask

    if isinstance(task, BenchmarkTask):
        return task.examples(split)
    try:
        return task.examples(split, n, seed=0, difficulty=difficulty)
    except TypeError:  # tasks without difficulty levels
        return task.examples(split, n, seed=0)


def _source(task, split: str) -> str:
    from loramix.tasks.benchmarks import BenchmarkTask

    if not isinstance(task, BenchmarkTask):
        return "generated"
    file, part = task.source(split)
    return f"{file} [{part}]" if Path(file).is_dir() else str(file)


def _lengths(tok, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _check_names(recipe: Recipe, report: DryRunReport) -> list[str]:
    """The recipe's tasks (and mixed pairs' tasks) that exist; each unknown name or bad
    ``task_kwargs`` entry is a failure line."""
    known, names = list_tasks(), [*recipe.tasks, *(t for p in recipe.evaluate.mixed_pairs for t in p)]
    good = []
    for name in dict.fromkeys(names):
        if name in known:
            good.append(name)
        else:
            report.failures.append(f"recipe tasks: unknown task {name!r}; valid: {', '.join(known)}")
    for name, kwargs in recipe.task_kwargs.items():
        if name not in names:
            report.failures.append(f"recipe task_kwargs.{name}: not a task of the recipe ({', '.join(recipe.tasks)})")
        elif not isinstance(kwargs, dict):
            report.failures.append(f"recipe task_kwargs.{name}: must be a mapping such as {{train: FILE, test: FILE}}")
    return good


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def dry_run(recipe: Recipe) -> DryRunReport:
    """Validate ``recipe`` without training or loading weights: the base's config and tokenizer
    (and its chat template), every task's data per split, disjoint train/test splits, and the token
    budgets against ``max_length`` and the model's context. Every problem is one line of
    ``failures``; the plan (examples per split, token bounds per stage) is filled in either way."""
    from loramix.evaluate import _default_max_new_tokens
    from loramix.pipeline import STAGES
    from loramix.routers import STE_MODES
    from loramix.train.experts import auto_completion_length

    report = DryRunReport(recipe.name)
    pipe = _method_plan(recipe, report)
    if recipe.router.ste not in STE_MODES:
        report.failures.append(f"recipe router.ste: unknown {recipe.router.ste!r}; valid: {', '.join(STE_MODES)}")
    tok, context = _load_base(recipe, report)
    report.context = context
    if tok is not None:
        used = uses_chat_template(tok, recipe.chat_template)
        report.chat_template = ("present, used" if used else "present, not used (recipe chat_template: false)"
                                if has_chat_template(tok) else "absent: prompts stay plain")
    if tok is not None and context is not None and recipe.max_length > context:
        report.failures.append(f"recipe max_length: {recipe.max_length} exceeds the base's context "
                               f"(max_position_embeddings {context})")

    e, d, ev = recipe.expert, recipe.distill, recipe.evaluate
    need = {"train": (max(e.n_train, d.n_prompts), recipe.difficulty), ev.split: (ev.n, recipe.eval_difficulty)}
    need.setdefault("validation", (e.n_eval, recipe.difficulty))
    loaded: dict[tuple[str, str], _Split] = {}
    tasks = _check_names(recipe, report)
    for name in tasks:
        try:
            task = build_task(name, recipe.task_kwargs)
        except LoramixError as err:
            report.failures.append(_one_line(err))
            continue
        ok, read = True, {}  # read: a benchmark file -> its loaded split (None: it failed), read once
        for split, (n, difficulty) in need.items():
            if split == "validation" and name not in recipe.tasks:
                continue  # a mixed pair's task is only evaluated
            try:
                source = _source(task, split)
                if source in read:  # e.g. validation, which reads the test file when it has none
                    if read[source] is not None:
                        loaded[name, split] = read[source]
                        report.splits.append(SplitRow(name, split, source, len(read[source].examples)))
                    continue
                if source != "generated":
                    read[source] = None
                exs = _examples(task, split, n, difficulty)
            except LoramixError as err:
                message = _one_line(err)
                report.failures.append(message if message.startswith(f"task {name!r}") else
                                       f"task {name!r} ({split}): {message}")
                ok = False
                continue
            if not exs:
                report.failures.append(f"task {name!r}: {source}: no {split} examples")
                ok = False
            lengths = _lengths(tok, render_prompts(tok, [x.prompt for x in exs], recipe.chat_template)) \
                if tok is not None else []
            loaded[name, split] = _Split(exs, lengths)
            if source != "generated":
                read[source] = loaded[name, split]
            report.splits.append(SplitRow(name, split, source, len(exs)))
        if ok and name in recipe.task_kwargs:
            try:
                check_disjoint(recipe.task_kwargs, [name])
            except LoramixError as err:
                report.failures.append(_one_line(err))
    if tok is not None:
        _plan(recipe, pipe, tok, context, loaded, report, auto_completion_length, _default_max_new_tokens)
    report.stages.insert(0, StageRow(STAGES[0], report.base or str(recipe.base)))
    report.stages.append(StageRow(STAGES[-1], "report.md, report.json"))
    return report


def _plan(recipe: Recipe, pipe, tok, context: int | None, loaded: dict, report: DryRunReport,
          auto_completion_length, default_eval_budget) -> None:
    """Check the budgets and fill in the token bounds of stages 2-7."""
    from loramix.pipeline import MIXTURE_METHODS, REMIX_METHODS, ROUTER_METHODS, STAGES, method_of

    e, d, ev, L = recipe.expert, recipe.distill, recipe.evaluate, recipe.max_length
    fail = report.failures.append
    grpo_gen = grpo_train = sft_train = distill_gen = traces = 0
    for name in recipe.tasks:
        train = loaded.get((name, "train"))
        if train is None or not train.examples:
            continue
        task = build_task(name, recipe.task_kwargs)
        n_train, n_distill = min(e.n_train, len(train.examples)), min(d.n_prompts, len(train.examples))
        mcl = e.max_completion_length
        if mcl is None:
            try:
                mcl = auto_completion_length(task, tok, train.examples[:n_train], context, recipe.chat_template)
            except LoramixError as err:
                fail(_one_line(err))
                continue
        prompt = train.longest(n_train)
        if context is not None and prompt + mcl > context:
            fail(f"task {name!r}: GRPO: the longest train prompt ({prompt} tokens) + expert.max_completion_length "
                 f"({mcl}) = {prompt + mcl} exceeds the base's context ({context})")
        completions = e.steps * e.batch_size
        grpo_gen += completions * mcl
        grpo_train += completions * (prompt + mcl)
        if pipe.want("expert_sft") or e.grpo_from_sft:
            refs = _lengths(tok, [task.reference_completion(x) for x in train.examples[:n_train]])
            sft_train += e.sft_steps * e.batch_size * max(p + r for p, r in zip(train.prompt_tokens, refs))
        longest = train.longest(n_distill)
        if longest + d.max_new_tokens > L:
            fail(f"task {name!r}: traces: the longest train prompt ({longest} tokens) + distill.max_new_tokens "
                 f"({d.max_new_tokens}) = {longest + d.max_new_tokens} exceeds max_length ({L})")
        distill_gen += n_distill * d.samples * d.max_new_tokens
        traces += min(d.max_per_task, n_distill * d.max_per_prompt)
    traces += len(ev.mixed_pairs) * d.mixed_references
    report.stages.append(StageRow(
        STAGES[1], f"{len(recipe.tasks)} GRPO experts ({e.steps} steps x {e.batch_size} completions)"
        + (f", {len(recipe.tasks)} SFT experts ({e.sft_steps} steps)" if sft_train else ""),
        grpo_gen, grpo_train + sft_train))
    report.stages.append(StageRow(STAGES[2], f"<= {traces} traces ({d.samples} samples per prompt)", distill_gen))

    seqs = (lambda steps, batch: steps * batch * L)
    router_runs = sum(len(pipe.runs_of(m)) for m in ROUTER_METHODS if pipe.want(m))
    rc = recipe.router
    per_router = seqs(rc.max_steps, rc.batch_size) if rc.max_steps > 0 else int(rc.num_train_epochs * traces * L)
    report.stages.append(StageRow(STAGES[3], f"{router_runs} router trainings over {traces} traces (x max_length {L})",
                                  0, router_runs * per_router))
    x, m = recipe.remix, recipe.multitask
    remix_runs = sum(len(pipe.runs_of(n)) for n in REMIX_METHODS if pipe.want(n))
    multi_runs, same_runs = (len(pipe.runs_of(n)) if pipe.want(n) else 0
                             for n in ("multitask_lora", "single_lora_same_active"))
    report.stages.append(StageRow(
        STAGES[4], f"{multi_runs + same_runs} single LoRAs, {remix_runs} ReMix/top-k/soft trainings",
        0, multi_runs * seqs(m.steps, m.batch_size) + same_runs * seqs(x.steps, x.batch_size)
        + remix_runs * seqs(x.steps, x.batch_size) * x.samples))

    budgets: dict[str, int] = {}
    prompts: dict[str, int] = {}
    for name in dict.fromkeys([*recipe.tasks, *("+".join(p) for p in ev.mixed_pairs)]):
        if MIXED_SEP in name:
            if not all((t, ev.split) in loaded for t in name.split(MIXED_SEP)):
                continue
            try:
                task = build_task(name, recipe.task_kwargs)
                exs = task.examples(ev.split, ev.mixed_n, seed=recipe.seed, difficulty=recipe.eval_difficulty)
            except LoramixError as err:
                fail(_one_line(err))
                continue
            split = _Split(exs, _lengths(tok, render_prompts(tok, [x.prompt for x in exs], recipe.chat_template)))
        else:
            split = loaded.get((name, ev.split))
            if split is None or not split.examples:
                continue
            task = build_task(name, recipe.task_kwargs)
        n = min(ev.mixed_n if MIXED_SEP in name else ev.n, len(split.examples))
        budget = ev.max_new_tokens or default_eval_budget(tok, task, split.examples[:n])
        prompt = split.longest(n)
        if context is not None and prompt + budget > context:
            fail(f"task {name!r}: evaluation: the longest {ev.split} prompt ({prompt} tokens) + the evaluation budget "
                 f"({budget}) = {prompt + budget} exceeds the base's context ({context})")
        budgets[name], prompts[name] = budget, n
    single = [t for t in recipe.tasks if t in budgets]
    per_model = sum(prompts[t] * budgets[t] for t in single)
    runs = list(pipe.method_paths())
    plain = [r for r in runs if method_of(r) not in MIXTURE_METHODS]
    mixtures = [r for r in runs if method_of(r) in MIXTURE_METHODS]
    sft = sum(r.startswith("expert_sft:") for r in plain)  # an SFT expert is scored on its own task only
    own = sum(prompts[t] * budgets[t] for t in single if f"expert_sft:{t}" in plain)
    report.stages.append(StageRow(STAGES[5], f"{len(plain)} models x {len(single)} tasks",
                                  (len(plain) - sft) * per_model + own))
    pairs = [n for n in budgets if MIXED_SEP in n]
    mixed = len(pipe.mixed_runs()) if pairs else 0
    report.stages.append(StageRow(
        STAGES[6], f"{len(mixtures)} mixtures x {len(single)} tasks" + (f", {mixed} x {len(pairs)} mixed pairs"
                                                                          if pairs else ""),
        len(mixtures) * per_model + mixed * sum(prompts[p] * budgets[p] for p in pairs)))


def _method_plan(recipe: Recipe, report: DryRunReport):
    """A ``Pipeline`` that only answers which methods and runs the recipe asks for (``want``,
    ``runs_of``, ``method_paths``, ``mixed_runs``): built without ``__init__``, which stops at the
    first problem where the dry run collects them all."""
    from loramix.pipeline import METHOD_FAMILIES, Pipeline

    pipe = Pipeline.__new__(Pipeline)
    pipe.r, pipe.base, pipe.run = recipe, str(recipe.base), Path("runs") / recipe.name
    families = recipe.methods or list(METHOD_FAMILIES)
    unknown = sorted(set(families) - set(METHOD_FAMILIES))
    if unknown:
        report.failures.append(f"recipe methods: unknown {unknown}; valid: {', '.join(METHOD_FAMILIES)}")
    pipe.families = [f for f in families if f in METHOD_FAMILIES]
    return pipe


def print_dry_run(report: DryRunReport, console: Console) -> None:
    """The plan as tables, then each failure on one line (or that the recipe is ready)."""
    console.print(f"recipe {report.recipe}: base {report.base}"
                  + (f", context {report.context}" if report.context else "")
                  + (f", chat template {report.chat_template}" if report.chat_template else ""), highlight=False)
    data = Table("task", "split", "source", "examples", title="data")
    for row in report.splits:
        data.add_row(row.task, row.split, row.source, str(row.examples))
    console.print(data)
    plan = Table("stage", "work", "generation tokens (<=)", "training tokens (<=)", title="plan")
    for row in report.stages:
        plan.add_row(row.stage, row.work, f"{row.generation_tokens:,}" if row.generation_tokens else "-",
                     f"{row.training_tokens:,}" if row.training_tokens else "-")
    console.print(plan)
    for line in report.failures:
        console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    console.print(f"dry run: {len(report.failures)} problem(s)" if report.failures else
                  "dry run: the recipe is ready", highlight=False)


__all__ = ["DryRunReport", "SplitRow", "StageRow", "dry_run", "print_dry_run"]
