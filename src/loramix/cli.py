"""The `loramix` command line. Each subcommand is a thin call into a typed function of a module;
no logic lives here. User errors (`loramix.errors.LoramixError`) print one line and exit 2; `--debug`
shows the traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console

from loramix.errors import LoramixError

# Each command imports the module it calls inside its body: those modules pull in torch, transformers
# and TRL (seconds), and `loramix --help` or a usage error should not wait for them.

try:  # typer >= 0.29 vendors click; older typer raises click's own exceptions
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer
    _TyperClickException = click.exceptions.ClickException
CLICK_ERRORS = (_TyperClickException, click.exceptions.ClickException)
CLICK_ABORT = (typer.Abort, click.exceptions.Abort)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Mixtures of LoRA experts: train one expert per domain, compose them with a hard (MoR-LoRA), "
                       "soft or ReMix router, and evaluate them against the baselines.")
console = Console()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", metavar="", help="Show Python tracebacks for errors.")) -> None:
    """``--debug`` is read by ``main`` from ``sys.argv``; declared here so that it is a known option."""


# --- core -------------------------------------------------------------------------------------


@app.command()
def pipeline(
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe YAML (default: the built-in tiny recipe)."),
    root: Path = typer.Option(Path("runs"), "--root", help="Runs folder; outputs go to <root>/<recipe name>."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's results section."),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="Print only the final tables (and errors)."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="", help=(
        "Check the recipe without training (base config and tokenizer, data files, disjoint splits, token "
        "budgets) and print the plan; exit 1 on any problem.")),
    base: Optional[str] = typer.Option(None, "--base", help="Use this base model folder instead of the recipe's."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=(
        "Use this file for a task's split instead of the recipe's (repeatable; TASK=FILE: every split).")),
) -> None:
    """The whole experiment, resumable: experts, traces, MoR-LoRA, baselines, evaluation, report."""
    from loramix.pipeline import run_pipeline
    from loramix.recipe import load_recipe, with_overrides
    from loramix.report import tables_markdown, update_readme
    from loramix.tasks.splits import parse_data

    recipe = load_recipe(config)
    recipe = with_overrides(recipe, base, parse_data(data, [*recipe.tasks, *(t for p in recipe.evaluate.mixed_pairs
                                                                              for t in p)]))
    if dry_run:
        from loramix.dryrun import dry_run as check, print_dry_run

        result = check(recipe)
        print_dry_run(result, console)
        if not result.ok:
            raise typer.Exit(1)
        return
    report = run_pipeline(recipe, root, console=console, progress=not quiet)
    console.print(tables_markdown(report), highlight=False, soft_wrap=True)
    if not quiet:
        console.print(f"report: {root / recipe.name / 'report.md'}", highlight=False)
    if readme is not None:
        update_readme(root / recipe.name, readme)


@app.command()
def ablate(
    config: Path = typer.Option(Path("recipes/remix-ablation.yaml"), "--config", help="Ablation recipe YAML."),
    root: Path = typer.Option(Path("runs"), "--root", help="Runs folder; outputs go to <root>/<recipe name>."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's ablation section."),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="Print only the final tables (and errors)."),
) -> None:
    """ReMix's ablations (k, one rank-k·r LoRA, M, log Q, omega, no RLOO, no top-k), resumable."""
    from loramix.ablation import ablation_markdown, load_ablation_recipe, run_ablation, update_readme_ablation

    report = run_ablation(config, root, progress=not quiet)
    console.print(ablation_markdown(report), highlight=False, soft_wrap=True)
    if readme is not None:
        update_readme_ablation(root / load_ablation_recipe(config).name, readme)


@app.command()
def report(
    run: Path = typer.Argument(..., help="A pipeline run folder (holding report.json)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Rewrite this README's results section."),
) -> None:
    """Print a run's report tables; optionally splice them into a README."""
    import json

    from loramix.report import tables_markdown, update_readme

    path = run / "report.json"
    if not path.is_file():
        raise LoramixError(f"{path}: missing; run `loramix pipeline` first")
    console.print(tables_markdown(json.loads(path.read_text())), highlight=False, soft_wrap=True)
    if readme is not None:
        update_readme(run, readme)


@app.command()
def demo(
    root: Path = typer.Option(Path("runs"), "--root", help="Runs folder."),
) -> None:
    """The main job on the embedded default: `loramix pipeline --config recipes/tiny.yaml`."""
    # every parameter given: called as a function, a typer command's omitted options are OptionInfo objects
    pipeline(config=_tiny_recipe(), root=root, readme=None, quiet=False, dry_run=False, base=None, data=None)


def _tiny_recipe() -> Optional[Path]:
    path = Path("recipes/tiny.yaml")
    return path if path.is_file() else None


# --- tasks (issue 3) --------------------------------------------------------------------------

tasks_app = typer.Typer(no_args_is_help=True, help="Verifiable tasks: list them, check a data file.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
def tasks_list() -> None:
    """Show the registered tasks."""
    from rich.table import Table

    from loramix.tasks import list_tasks, task_info

    table = Table("name", "kind", "answer type", "verifier", "description")
    for name in list_tasks():
        info = task_info(name)
        table.add_row(name, info.kind, info.answer_type, info.verifier, info.description)
    console.print(table)


@tasks_app.command("verify")
def tasks_verify(
    task: str = typer.Argument(..., help="Task name (see `loramix tasks list`)."),
    data: Path = typer.Option(..., "--data", help="Raw data file (JSONL, JSON, parquet) or save_to_disk folder."),
    split: Optional[str] = typer.Option(None, help="Split to read from a DatasetDict folder."),
) -> None:
    """Check that every gold answer in a data file passes the task's own verifier."""
    from loramix.tasks import get_task, verify_file

    report = verify_file(get_task(task), data, split)
    for f in report.failures[:20]:
        console.print(f"{data}: {f.where}: gold {f.answer!r} fails the verifier (read back {f.extracted!r})",
                      highlight=False, soft_wrap=True)
    console.print(f"{task}: checked {report.checked}, failed {report.failed}", highlight=False)
    if not report.ok:
        raise SystemExit(1)  # not typer.Exit: main() runs click with standalone_mode=False


# --- base model (issue 3) ---------------------------------------------------------------------

base_app = typer.Typer(no_args_is_help=True, help="The tiny embedded base model.")
app.add_typer(base_app, name="base")


@base_app.command("build")
def base_build(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the cache path of this config)."),
    seed: int = typer.Option(0, help="Seed; the same seed and config give identical weights."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: the built-in config)."),
    hidden: Optional[int] = typer.Option(None, help="Hidden size."),
    layers: Optional[int] = typer.Option(None, help="Number of decoder layers."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    force: bool = typer.Option(False, metavar="", help="Rebuild even if a complete build exists."),
) -> None:
    """Pretrain the tiny base model on CPU (cached: reused if already built)."""
    from loramix.base_model import base_info, build_or_reuse

    given = {"steps": steps, "hidden": hidden, "layers": layers, "batch_size": batch_size, "lr": lr}
    overrides = {k: v for k, v in given.items() if v is not None}
    path, built = build_or_reuse(out, force=force, seed=seed, **overrides)
    info = base_info(path)
    verb = "built" if built else "already built"
    console.print(
        f"{verb}: {path} ({info['parameters']:,} parameters, {info['build_seconds']} s, "
        f"final loss {info['final_loss']})",
        highlight=False,
        soft_wrap=True,
    )


@base_app.command("path")
def base_path() -> None:
    """Print the cache path of the default base model (and whether it is built)."""
    from loramix.base_model import default_base_path, is_built

    path = default_base_path()
    console.print(f"{path} ({'built' if is_built(path) else 'not built'})", highlight=False, soft_wrap=True)


# --- training (issue 4) -----------------------------------------------------------------------


CHAT_TEMPLATE_HELP = ("Render prompts with the base tokenizer's chat template (one user message), when it has one "
                      "(Instruct models; the embedded base has none).")
DATA_HELP = ("A benchmark's data, per split: TASK:SPLIT=FILE (SPLIT: train, validation or test; for CoLA and BoolQ "
             "test is the dev file), or TASK=FILE for one file or save_to_disk folder for every split. Repeatable: "
             "--data gsm8k:train=data/gsm8k/train.jsonl --data gsm8k:test=data/gsm8k/test.jsonl.")


@app.command("train-expert")
def train_expert_cmd(
    task: str = typer.Option(..., "--task", help="Task name (see `loramix tasks list`)."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    out: Path = typer.Option(..., "--out", help="Output adapter folder (appears only when complete)."),
    method: str = typer.Option("grpo", "--method", help="grpo (RLVR) or sft (on reference traces)."),
    sft_warmup_steps: int = typer.Option(0, "--sft-warmup-steps", help="With grpo: SFT steps first (sft+grpo)."),
    steps: int = typer.Option(60, "--steps", help="Optimizer steps (of the GRPO phase with a warm-up)."),
    batch_size: int = typer.Option(64, "--batch-size", help="GRPO: completions per step; SFT: examples per step."),
    num_generations: int = typer.Option(8, "--num-generations", help="GRPO completions per prompt."),
    temperature: float = typer.Option(1.0, "--temperature", help="GRPO sampling temperature."),
    max_completion_length: Optional[int] = typer.Option(
        None, "--max-completion-length", help="Tokens per completion (default: longest reference + 25%)."),
    lr: float = typer.Option(5e-4, "--learning-rate", "--lr", help="Learning rate."),
    sft_lr: Optional[float] = typer.Option(None, "--sft-learning-rate", "--sft-lr", help="Learning rate of the SFT phase (default: --learning-rate)."),
    init_adapter: Optional[Path] = typer.Option(
        None, "--init-adapter", help="Start from this PEFT adapter, e.g. the same-size SFT expert (reported as sft+grpo)."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank r."),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha."),
    dropout: float = typer.Option(0.0, "--dropout", help="LoRA dropout."),
    beta: float = typer.Option(0.0, "--beta", help="GRPO KL coefficient (0: no reference model)."),
    difficulty: str = typer.Option("medium", "--difficulty", help="easy, medium or hard."),
    n_train: int = typer.Option(1000, "--n-train", help="Number of train prompts."),
    n_eval: int = typer.Option(100, "--n-eval", help="Held-out validation prompts for accuracy before/after."),
    mixed_share: float = typer.Option(
        0.0, "--mixed-share", help="SFT on a built-in domain: share of prompts made two-part, beside an easy question of another domain."),
    seed: int = typer.Option(0, "--seed", help="Seed (data, LoRA init, sampling)."),
    save_steps: int = typer.Option(10, "--save-steps", help="Checkpoint every this many steps (for resume)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    force: bool = typer.Option(False, "--force", metavar="", help="Retrain even if a complete or differently-configured run exists."),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar or messages."),
) -> None:
    """Train one LoRA expert (MLP projections) on one task by GRPO or SFT; resumes if interrupted."""
    from loramix.tasks.splits import parse_data
    from loramix.train import ExpertTrainConfig, train_expert

    config = ExpertTrainConfig(
        task=task, task_kwargs=parse_data(data, [task]).get(task, {}), base=base, out=out, method=method, sft_warmup_steps=sft_warmup_steps, steps=steps,
        batch_size=batch_size, num_generations=num_generations, temperature=temperature,
        max_completion_length=max_completion_length, learning_rate=lr, sft_learning_rate=sft_lr,
        init_adapter=init_adapter, rank=rank, alpha=alpha, dropout=dropout, beta=beta, difficulty=difficulty,
        n_train=n_train, n_eval=n_eval, mixed_share=mixed_share, seed=seed, save_steps=save_steps,
        chat_template=chat_template, threads=threads, force=force, progress=not quiet,
    )
    train_expert(config, console=console)


@app.command("train-remix")
def train_remix_cmd(
    out: Path = typer.Option(..., "--out", help="Output mixture folder (appears only when complete)."),
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    task: Optional[list[str]] = typer.Option(None, "--task", "--tasks", help="Task(s) whose reference traces to train on (repeatable or comma-separated)."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    traces: Optional[Path] = typer.Option(None, "--traces", help="Traces JSONL: prompt/completion or chat messages rows, optional domain."),
    router: str = typer.Option("remix", "--router", help="remix (RLOO, sampled top-k) or topk (MixLoRA baseline)."),
    n_experts: int = typer.Option(8, "--n-experts", "--experts-n", help="Fresh LoRA experts per layer."),
    top_k: int = typer.Option(2, "--top-k", "--k", help="Experts active per token."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank r of each expert."),
    samples: int = typer.Option(4, "--samples", help="RLOO samples M per sequence (remix)."),
    omega: str = typer.Option("linear", "--omega", help="ReMix weight: linear 2/(kr) or sqrt 2/sqrt(kr)."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per step (each repeated M times)."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", "--lr", help="Learning rate."),
    router_learning_rate: Optional[float] = typer.Option(None, "--router-learning-rate", "--router-lr", help="Router learning rate (default: --learning-rate)."),
    n_examples: int = typer.Option(512, "--n-examples", help="Train examples per task."),
    difficulty: Optional[str] = typer.Option(None, "--difficulty", help="Task difficulty (default: the task's)."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per sequence."),
    logq_tokens: str = typer.Option("all", "--logq-tokens", help="log Q over all attended tokens or 'completion'."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    logging_steps: int = typer.Option(10, "--logging-steps", help="Log (loss, ESS per layer) every this many steps."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    save_steps: int = typer.Option(100, "--save-steps", help="Checkpoint every this many steps (for resume)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar."),
    force: bool = typer.Option(False, "--force", metavar="", help="Retrain even if --out holds a run with another config."),
) -> None:
    """Train fresh LoRA experts + per-layer routers with ReMix (RLOO) or the top-k baseline."""
    from loramix.tasks.splits import parse_data
    from loramix.train.remix import ReMixConfig, train_remix

    config = ReMixConfig(
        out=out, base=base, tasks=tuple(_bl_split(task)), task_kwargs=parse_data(data, _bl_split(task)), traces=traces, router=router, n_experts=n_experts, top_k=top_k,
        rank=rank, samples=samples, omega=omega, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        router_learning_rate=router_learning_rate,
        n_examples=n_examples, difficulty=difficulty, max_length=max_length, logq_tokens=logq_tokens, seed=seed,
        logging_steps=logging_steps, save_steps=save_steps, threads=threads, progress=not quiet,
        force=force, chat_template=chat_template,
    )
    path = train_remix(config)
    console.print(f"mixture: {path}", highlight=False, soft_wrap=True)


def _bl_split(values: Optional[list[str]]) -> list[str]:
    """Repeated and/or comma-separated option values."""
    return [t.strip() for v in values or () for t in str(v).split(",") if t.strip()]


@app.command("merge")
def merge_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    method: str = typer.Option(..., "--method", help="linear, cat, ties, dare (= dare_ties), dare_ties or dare_linear."),
    out: Path = typer.Option(..., "--out", help="Output PEFT adapter folder (appears only when complete)."),
    weights: Optional[list[str]] = typer.Option(None, "--weights", help="One weight per expert (default: equal, 1/E)."),
    density: float = typer.Option(0.5, "--density", help="Kept share for ties/dare."),
    seed: int = typer.Option(0, "--seed", help="Seed (DARE's random drop)."),
) -> None:
    """Merge experts into one PEFT adapter (PEFT add_weighted_adapter: linear, cat, TIES, DARE)."""
    from loramix.baselines.merges import merge_experts

    ws = [float(w) for w in _bl_split(weights)] or None
    path = merge_experts(base, _bl_split(experts), method, out, weights=ws, density=density, seed=seed)
    console.print(f"merged adapter: {path}", highlight=False, soft_wrap=True)


@app.command("train-multitask")
def train_multitask_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    traces: Path = typer.Option(..., "--traces", help="Traces JSONL (prompt/completion or chat messages rows), e.g. the union of all tasks."),
    out: Path = typer.Option(..., "--out", help="Output PEFT adapter folder (appears only when complete)."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank r (set it to match a mixture's active parameters)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha (default: 2 x rank)."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per step."),
    lr: float = typer.Option(5e-4, "--learning-rate", "--lr", help="Learning rate."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per sequence (longer traces are refused)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    save_steps: int = typer.Option(50, "--save-steps", help="Checkpoint every this many steps (for resume)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    force: bool = typer.Option(False, "--force", metavar="", help="Retrain even if a complete run with another config exists."),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar."),
) -> None:
    """Train one multi-task LoRA (MLP projections) by SFT on a traces file; resumes if interrupted."""
    from loramix.train.multitask import MultitaskConfig, train_multitask

    config = MultitaskConfig(base=base, traces=str(traces), out=str(out), rank=rank, alpha=alpha, steps=steps,
                             batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                             save_steps=save_steps, chat_template=chat_template, threads=threads, force=force,
                             progress=not quiet)
    console.print(f"multi-task LoRA: {train_multitask(config)}", highlight=False, soft_wrap=True)


@app.command("train-prompt-router")
def train_prompt_router_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    out: Path = typer.Option(..., "--out", help="Output mixture folder (fixed router + prompt_router.*)."),
    traces: Optional[Path] = typer.Option(None, "--traces", help="Traces JSONL with task and expert_index per row."),
    tasks: Optional[list[str]] = typer.Option(None, "--tasks", "--task", help="Or: task names, task i -> expert i."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    n_per_task: int = typer.Option(200, "--n-per-task", help="With --tasks: train prompts per task."),
    steps: int = typer.Option(300, "--steps", help="Classifier optimizer steps (full batch)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    mixture: Optional[Path] = typer.Option(
        None, "--mixture", help="A trained mixture over the same experts (e.g. the hard one): keep it, attention "
                                "LoRA included, and route one expert per sequence (the fair prompt-level baseline)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
) -> None:
    """Train a prompt-level router: one expert per prompt from the base model's mean-pooled prompt states."""
    import json as _json

    from loramix.tasks.splits import parse_data
    from loramix.train.prompt_router import build_prompt_router

    path = build_prompt_router(base, _bl_split(experts), out, traces=traces, tasks=_bl_split(tasks) or None,
                               task_kwargs=parse_data(data, _bl_split(tasks)),
                               n_per_task=n_per_task, steps=steps, seed=seed, mixture=mixture,
                               chat_template=chat_template)
    acc = _json.loads((path / "metrics.json").read_text())["heldout_accuracy"]
    console.print(f"prompt router: {path} (held-out accuracy {acc})", highlight=False, soft_wrap=True)


@app.command("oracle-mixture")
def oracle_mixture_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    tasks: list[str] = typer.Option(..., "--tasks", "--task", help="One task per expert, in order."),
    out: Path = typer.Option(..., "--out", help="Output mixture folder (for evaluate --routing oracle)."),
) -> None:
    """Save a fixed-router mixture whose experts are named after their tasks (oracle routing)."""
    from loramix.baselines.oracle import make_oracle_mixture

    path = make_oracle_mixture(base, _bl_split(experts), _bl_split(tasks), out)
    console.print(f"oracle mixture: {path}", highlight=False, soft_wrap=True)


@app.command("build-xlora")
def build_xlora_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    out: Path = typer.Option(..., "--out", help="Output recipe folder (loramix_baseline.json + classifier)."),
    traces: Optional[Path] = typer.Option(None, "--traces", help="Train the X-LoRA classifier by SFT on these traces."),
    steps: int = typer.Option(0, "--steps", help="Classifier SFT steps (0: untrained classifier)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per step."),
    lr: float = typer.Option(1e-3, "--learning-rate", "--lr", help="Learning rate."),
    depth: int = typer.Option(1, "--depth", help="X-LoRA classifier depth."),
    layerwise: bool = typer.Option(False, "--layerwise", metavar="", help="Layer-wise scalings."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar."),
) -> None:
    """PEFT X-LoRA over the experts (classifier optionally trained by SFT on traces)."""
    from loramix.train.xlora import build_xlora

    path = build_xlora(base, _bl_split(experts), out, traces=traces, steps=steps, batch_size=batch_size,
                       learning_rate=lr, seed=seed, chat_template=chat_template, progress=not quiet,
                       xlora_depth=depth, layerwise_scalings=layerwise)
    console.print(f"X-LoRA: {path}", highlight=False, soft_wrap=True)


@app.command("build-arrow")
def build_arrow_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    out: Path = typer.Option(..., "--out", help="Output recipe folder (loramix_baseline.json)."),
    top_k: int = typer.Option(3, "--top-k", help="Experts combined per token (capped at the number of experts)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Arrow router softmax temperature."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
) -> None:
    """PEFT Arrow (training-free routing) over the experts."""
    from loramix.baselines.peft_mixtures import build_arrow

    path = build_arrow(base, _bl_split(experts), out, top_k=top_k, router_temperature=temperature, seed=seed)
    console.print(f"Arrow: {path}", highlight=False, soft_wrap=True)


@app.command("distill")
def distill_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders, one per task (repeatable or comma-separated)."),
    tasks: list[str] = typer.Option(..., "--tasks", "--task", help="One task per expert, in order."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Traces JSONL (appended batch by batch; a rerun resumes)."),
    n_prompts: int = typer.Option(200, "--n-prompts", help="Training prompts per task."),
    samples: int = typer.Option(4, "--samples", help="Sampled generations per prompt (plus one greedy)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    max_per_prompt: int = typer.Option(2, "--max-per-prompt", help="Traces kept per prompt."),
    max_per_task: int = typer.Option(1000, "--max-per-task", help="Traces kept per task."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per completion."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generate call."),
    difficulty: str = typer.Option("medium", "--difficulty", help="easy, medium or hard."),
    seed: int = typer.Option(0, "--seed", help="Seed (data and sampling)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar."),
) -> None:
    """Stage 2a: each expert answers its task's train prompts; verified traces go to a JSONL file."""
    from loramix.tasks.splits import parse_data
    from loramix.train.distill import DistillConfig, distill

    cfg = DistillConfig(base=base, experts=_bl_split(experts), tasks=_bl_split(tasks), out=str(out),
                        task_kwargs=parse_data(data, _bl_split(tasks)),
                        n_prompts=n_prompts, samples=samples, temperature=temperature,
                        max_per_prompt=max_per_prompt, max_per_task=max_per_task, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, difficulty=difficulty, seed=seed, chat_template=chat_template)
    console.print(f"traces: {distill(cfg, progress=not quiet)}", highlight=False, soft_wrap=True)


@app.command("train-router")
def train_router_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="Expert adapter folders (repeatable or comma-separated)."),
    traces: Path = typer.Option(..., "--traces", help="Traces JSONL (prompt/completion or chat messages rows, optional domain), e.g. from distill."),
    out: Path = typer.Option(..., "--out", help="Output mixture folder (appears only when complete)."),
    router: str = typer.Option("hard", "--router", help="hard, soft, topk, gumbel, remix or fixed."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token (default: the router's)."),
    attention_rank: int = typer.Option(8, "--attention-rank", help="Rank of the trainable attention LoRA (0: none)."),
    steps: int = typer.Option(-1, "--steps", help="Optimizer steps (-1: --epochs over the traces)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Epochs over the traces (when --steps is -1)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per step."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", "--lr", help="Learning rate."),
    router_learning_rate: Optional[float] = typer.Option(None, "--router-learning-rate", "--router-lr", help="The router's own learning rate (default: --learning-rate)."),
    per_layer_router: bool = typer.Option(False, "--per-layer-router", metavar="", help="One router per layer instead of one shared router."),
    ste: Optional[str] = typer.Option(None, "--ste", help="hard/gumbel straight-through estimator: full (the paper's formula; every expert is computed in training; the default) or chosen (the authors' released code; sparse)."),
    load_balance: float = typer.Option(0.0, "--load-balance", help="Switch load-balancing loss coefficient."),
    z_loss: float = typer.Option(0.0, "--z-loss", help="Router z-loss coefficient."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per sequence (longer traces are refused)."),
    save_steps: int = typer.Option(50, "--save-steps", help="Checkpoint every this many steps (for resume)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    quiet: bool = typer.Option(False, "--quiet", metavar="", help="No progress bar."),
    force: bool = typer.Option(False, "--force", metavar="", help="Retrain even if --out holds a run with another config."),
) -> None:
    """Stage 2b: train the router (+ attention LoRA) over frozen experts; resumes if interrupted."""
    from loramix.mixture import MixtureConfig
    from loramix.routers import router_options
    from loramix.train.router import RouterTrainConfig, train_router

    mixture = MixtureConfig(router=router, top_k=top_k, shared_router=not per_layer_router,
                            router_options=router_options(router, ste=ste), attention_lora_rank=attention_rank,
                            load_balance_coef=load_balance, z_loss_coef=z_loss)
    cfg = RouterTrainConfig(base=base, experts=_bl_split(experts), traces=str(traces), out=str(out), mixture=mixture,
                            max_steps=steps, num_train_epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, router_learning_rate=router_learning_rate, max_length=max_length, save_steps=save_steps, seed=seed,
                            chat_template=chat_template, progress=not quiet, force=force)
    console.print(f"mixture: {train_router(cfg)}", highlight=False, soft_wrap=True)


# --- compose & export (issue 14) --------------------------------------------------------------

EXPERTS_DIR_HELP = ("Where a mixture's experts are now, if they moved: a folder holding them, found by folder "
                    "name or by the sha256 the mixture recorded.")


@app.command("compose")
def compose_cmd(
    base: str = typer.Option("default", "--base", help="Base model folder, Hub id, or 'default' for the embedded base."),
    experts: list[str] = typer.Option(..., "--experts", "--expert", help="PEFT LoRA adapter folders or Hub ids (repeatable or comma-separated)."),
    out: Path = typer.Option(..., "--out", help="Output mixture folder (appears only when complete)."),
    router: str = typer.Option("hard", "--router", help="hard, soft, topk, gumbel, remix or fixed."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token (default: the router's)."),
    per_layer_router: bool = typer.Option(False, "--per-layer-router", metavar="", help="One router per layer instead of one shared router."),
    attention_rank: int = typer.Option(0, "--attention-rank", help="Rank of an (untrained, zero-delta) attention LoRA (0: none)."),
    ste: Optional[str] = typer.Option(None, "--ste", help="hard/gumbel straight-through estimator: full or chosen."),
    seed: int = typer.Option(0, "--seed", help="Seed of the router's initial weights."),
) -> None:
    """Compose your own LoRA adapters into a mixture with a fresh (untrained) router; train it with train-router."""
    from loramix.mixture import MixtureConfig, compose_folders
    from loramix.routers import router_options

    config = MixtureConfig(router=router, top_k=top_k, shared_router=not per_layer_router,
                           router_options=router_options(router, ste=ste), attention_lora_rank=attention_rank)
    path = compose_folders(base, _bl_split(experts), out, config, seed=seed)
    console.print(f"mixture: {path}", highlight=False, soft_wrap=True)


@app.command("export")
def export_cmd(
    mixture: Path = typer.Argument(..., help="A loramix mixture folder."),
    out: Path = typer.Option(..., "--out", help="New self-contained folder: the mixture, its experts and a README model card."),
    experts_dir: Optional[Path] = typer.Option(None, "--experts-dir", help=EXPERTS_DIR_HELP),
) -> None:
    """Copy a mixture and its experts into one folder that can be moved or shared as a whole."""
    from loramix.export import export_mixture

    console.print(f"exported: {export_mixture(mixture, out, experts_dir=experts_dir)}", highlight=False, soft_wrap=True)


# --- evaluate & analyze (issue 5) -------------------------------------------------------------


def _task_list(values: Optional[list[str]]) -> list[str]:
    return [t for v in values or () for t in v.split(",") if t.strip()]


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(..., help="'default', an HF model folder, a PEFT adapter folder or a mixture folder."),
    tasks: list[str] = typer.Option(..., "--tasks", "--task", help="Task names (repeatable or comma-separated); a+b is a mixed prompt."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    base: Optional[str] = typer.Option(None, "--base", help="Base model for an adapter or mixture, or 'default' (default: the one it recorded)."),
    mixed: bool = typer.Option(False, "--mixed", metavar="", help="Evaluate every pair of the tasks as mixed-domain prompts."),
    n: int = typer.Option(200, "--n", help="Examples per task."),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    difficulty: Optional[str] = typer.Option(None, "--difficulty", help="easy, medium or hard (default: the one the pipeline evaluates at)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generate call."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: longest reference + 25%."),
    do_sample: bool = typer.Option(False, "--sample", metavar="", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling (with --sample)."),
    routing: str = typer.Option("model", "--routing", help="Mixtures: model (token level), oracle, segment (the segment oracle: each token to its sub-question's expert) or prompt."),
    expert_for: Optional[list[str]] = typer.Option(None, "--expert-for", help="TASK=INDEX (or TASK=EXPERT_NAME), repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed (data and sampling)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report JSON here (atomic)."),
    experts_dir: Optional[Path] = typer.Option(None, "--experts-dir", help=EXPERTS_DIR_HELP),
) -> None:
    """Accuracy, format rate and completion length per task, by batched generation."""
    from loramix.evaluate import evaluate_path, report_table
    from loramix.tasks.splits import parse_data

    report = evaluate_path(model, _task_list(tasks), task_kwargs=parse_data(data), base=base, expert_for=expert_for, out=out, mixed=mixed, n=n,
                           split=split, difficulty=difficulty, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           do_sample=do_sample, temperature=temperature, top_p=top_p, routing=routing, seed=seed,
                           chat_template=chat_template, experts_dir=experts_dir)
    console.print(report_table(report, title=f"{model} ({report.config['kind']})"))
    if out is not None:
        console.print(f"wrote {out}", highlight=False, soft_wrap=True)


@app.command("analyze")
def analyze_cmd(
    mixture: Path = typer.Argument(..., help="A loramix mixture folder."),
    tasks: list[str] = typer.Option(..., "--tasks", "--task", help="Task names (repeatable or comma-separated); a+b is a mixed prompt."),
    data: Optional[list[str]] = typer.Option(None, "--data", metavar="TASK:SPLIT=FILE", help=DATA_HELP),
    base: Optional[str] = typer.Option(None, "--base", help="Base model folder or 'default' (default: the one the mixture recorded)."),
    out: Path = typer.Option(..., "--out", help="Output folder: analysis.json, usage_heatmap.png, ess_steps.png, tokens.html."),
    expert_for: Optional[list[str]] = typer.Option(None, "--expert-for", help="TASK=INDEX (default: experts named like tasks)."),
    train_log: Optional[Path] = typer.Option(None, "--train-log", help="train_log.json (HF log_history) for ESS over steps."),
    n: int = typer.Option(20, "--n", help="Examples per task."),
    mixed: bool = typer.Option(False, "--mixed", metavar="", help="Analyse every pair of the tasks as mixed-domain prompts."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Site index the HTML colours by (default: majority over sites)."),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    difficulty: Optional[str] = typer.Option(None, "--difficulty", help="easy, medium or hard (default: the one the pipeline evaluates at)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per generate call."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: longest reference + 25%."),
    routing: str = typer.Option("model", "--routing", help="model, oracle, segment or prompt."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    experts_dir: Optional[Path] = typer.Option(None, "--experts-dir", help=EXPERTS_DIR_HELP),
) -> None:
    """Routing analysis of a mixture: expert shares, routing accuracy, max mass, ESS, token colours."""
    from loramix.analysis import analyze_path, summary_table
    from loramix.tasks.splits import parse_data

    result = analyze_path(mixture, _task_list(tasks), task_kwargs=parse_data(data), base=base, expert_for=expert_for, out=out, train_log=train_log,
                          n=n, mixed=mixed, layer=layer, split=split, difficulty=difficulty, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, routing=routing, seed=seed, chat_template=chat_template,
                          experts_dir=experts_dir)
    console.print(summary_table(result))
    console.print(f"wrote {out}: {', '.join(result['files'])}", highlight=False, soft_wrap=True)


@app.command("generate")
def generate_cmd(
    model: str = typer.Argument(..., help="'default', an HF model folder (e.g. merged), a PEFT adapter folder or a mixture folder."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt (repeatable). Bash: $'add: 12+34\\n' for a newline."),
    file: Optional[Path] = typer.Option(None, "--file", help="Prompts JSONL: one {\"prompt\": ...} or {\"messages\": [...]} object per line."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write JSONL rows {prompt, completion, finished, tokens} here (atomic)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model for an adapter or mixture, or 'default' (default: the one it recorded)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per completion."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generate call."),
    do_sample: bool = typer.Option(False, "--sample", metavar="", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling (with --sample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling."),
    show_routing: bool = typer.Option(False, "--show-routing", metavar="", help="Mixtures: colour each completion token by its expert (and add per-token expert ids to --out)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="With --show-routing: colour by this site index (default: majority over sites)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help=CHAT_TEMPLATE_HELP),
    experts_dir: Optional[Path] = typer.Option(None, "--experts-dir", help=EXPERTS_DIR_HELP),
) -> None:
    """Generate completions for your own prompts with any saved model, batched with the KV cache."""
    from loramix.generation import generate_path, terminal_view

    result = generate_path(model, prompt or (), prompts_file=file, base=base, out=out, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                           show_routing=show_routing, layer=layer, chat_template=chat_template, experts_dir=experts_dir)
    if out is None or show_routing:
        console.print(terminal_view(result), highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"wrote {out} ({len(result.rows)} completions)", highlight=False, soft_wrap=True)


# --- bench (issue 6) --------------------------------------------------------------------------


@app.command()
def bench(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write rows, targets and meta as JSON here."),
    png: Optional[Path] = typer.Option(None, "--png", help="Plot of time against E (default: next to --json, else runs/bench.png)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quick: bool = typer.Option(False, "--quick", metavar="", help="Reduced size, E in {2, 8, 32}: a few minutes on 2 CPU cores."),
    tiny: bool = typer.Option(False, "--tiny", metavar="", help="Smoke-test size (seconds); not a measurement."),
    experts: Optional[str] = typer.Option(None, help="Comma-separated expert counts, e.g. 2,8,32 (default: the size's)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated subset of base,peft_lora,hard,soft,remix,xlora,arrow."),
    repeats: Optional[int] = typer.Option(None, help="Timed rounds per method (median reported)."),
    workloads: Optional[str] = typer.Option(None, help="Comma-separated subset of train,prefill,decode."),
    batch: Optional[int] = typer.Option(None, help="Batch size of every workload (default: the size's)."),
    shape: Optional[str] = typer.Option(None, help="A released model's configuration with random weights: qwen2.5-0.5b, qwen2.5-1.5b, llama-3.2-1b or llama-3.2-3b (default: the size's toy Llama)."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 (bf16) or float16 (fp16) for the base, experts and adapters (default: float32)."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank of every expert (default: the size's)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence in train and prefill (default: the size's)."),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", help="Greedy tokens per decode call (default: the size's)."),
    other_experts: Optional[str] = typer.Option(None, "--other-experts", help="Expert counts for remix, xlora and arrow, e.g. 8 (default: those of --experts)."),
    from_json: Optional[Path] = typer.Option(None, "--from-json", help="Do not time: print (and --readme) the tables of this bench JSON."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Write the tables into this README's bench section (needs --json or --from-json)."),
) -> None:
    """Time routed LoRA experts against the base model, PEFT LoRA, X-LoRA and Arrow."""
    from loramix.bench import WORKLOADS, load_result, markdown_tables, parse_list, pick_size, run_bench, update_readme

    if from_json is not None:
        result = load_result(from_json)
        console.print(markdown_tables(result), markup=False, highlight=False, soft_wrap=True)
        if readme is not None:
            console.print(f"updated {update_readme(result, from_json, readme)}", highlight=False)
        return
    if readme is not None and json_out is None:
        raise LoramixError("--readme: also give --json, so the README names the file its tables come from")
    png = png or (json_out.with_suffix(".png") if json_out else Path("runs/bench.png"))
    result = run_bench(pick_size(quick, tiny), device=device, experts=parse_list(experts, int, "--experts"),
                       methods=parse_list(methods, str, "--methods"),
                       workloads=parse_list(workloads, str, "--workloads") or WORKLOADS, batch=batch,
                       repeats=repeats, json_path=json_out, png_path=png, shape=shape, dtype=dtype, rank=rank,
                       seq=seq_len, new_tokens=new_tokens,
                       other_experts=parse_list(other_experts, int, "--other-experts"),
                       log=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    console.print(markdown_tables(result), markup=False, highlight=False, soft_wrap=True)
    where = f"{json_out} and {png}" if json_out else str(png)
    console.print(f"wrote {where} ({result.meta['total_seconds']:.0f}s)", highlight=False, soft_wrap=True)
    if readme is not None:
        console.print(f"updated {update_readme(result, json_out, readme)}", highlight=False)



def main() -> None:
    # loramix shows its own progress; HF's per-load / per-map bars and advisory logs are noise here
    for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(var, value)
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except LoramixError as err:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as err:  # pragma: no cover - passthrough
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code)
    except CLICK_ABORT:
        sys.exit(130)
    except CLICK_ERRORS as err:  # a usage mistake: the usage line and one error line, no traceback
        if debug:
            raise
        sys.exit(_usage_error(err))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(err) -> int:
    if type(err).__name__ == "NoArgsIsHelpError":  # `loramix` alone: the help text
        err.show()
        return 0
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
    print(f"error: {err.format_message()}", file=sys.stderr)
    return getattr(err, "exit_code", 2)


if __name__ == "__main__":  # pragma: no cover
    main()
