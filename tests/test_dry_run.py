"""`loramix pipeline --dry-run`: a real recipe checked against fixture data and a tiny real-shaped
model folder, without training or loading weights; each problem is one failure line."""

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import bpe_chat_tokenizer, tiny_model
from loramix.dryrun import dry_run
from loramix.recipe import load_recipe

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
SPLITS = FIXTURES / "splits"
RECIPE = Path(__file__).parent.parent / "recipes" / "qwen2.5-0.5b.yaml"
TASKS = ("gsm8k", "arc", "medqa", "cola", "boolq")


def _halves(src: Path, root: Path, name: str, k: int) -> dict[str, str]:
    """The first ``k`` rows of a published-layout fixture as the train file, the rest as the test file."""
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    (root / f"{name}_train.jsonl").write_text("\n".join(lines[:k]) + "\n")
    (root / f"{name}_test.jsonl").write_text("\n".join(lines[k:]) + "\n")
    return {"train": str(root / f"{name}_train.jsonl"), "test": str(root / f"{name}_test.jsonl")}


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory):
    """(model folder, task_kwargs): a tiny Qwen2 with a 32k context and a BPE tokenizer with a chat
    template, and train/test files of the five benchmarks."""
    root = tmp_path_factory.mktemp("dry_run")
    data = {"gsm8k": {"train": str(SPLITS / "gsm8k_train.jsonl"), "test": str(SPLITS / "gsm8k_test.jsonl")},
            "boolq": {"train": str(SPLITS / "boolq_train.jsonl"), "test": str(SPLITS / "boolq_dev.jsonl")},
            "arc": _halves(FIXTURES / "arc_ai2.jsonl", root, "arc", 3),
            "medqa": _halves(FIXTURES / "medqa_us_4.jsonl", root, "medqa", 2),
            "cola": _halves(FIXTURES / "cola.jsonl", root, "cola", 2)}
    texts = [Path(f).read_text() for d in data.values() for f in d.values()]
    tok = bpe_chat_tokenizer(texts)
    model = tiny_model("qwen2", vocab=len(tok))
    model.config.max_position_embeddings = 32768  # Qwen2.5-0.5B's context: the recipe's budgets fit it
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base", data


def _recipe(real_shape, **changes):
    base, data = real_shape
    return dataclasses.replace(load_recipe(RECIPE), base=str(base), task_kwargs=data, **changes)


def test_real_recipe_passes_and_plans(real_shape):
    report = dry_run(_recipe(real_shape))
    assert report.failures == []
    assert report.chat_template == "present, used" and report.context == 32768
    counts = {(r.task, r.split): r.examples for r in report.splits}
    # the oracle: the fixture files' row counts
    assert counts["gsm8k", "train"] == 3 and counts["gsm8k", "test"] == 2
    assert counts["arc", "train"] == 3 and counts["arc", "test"] == 2
    assert counts["medqa", "train"] == 2 and counts["medqa", "test"] == 1
    assert counts["cola", "train"] == 2 and counts["cola", "test"] == 2
    assert counts["boolq", "test"] == 2
    from loramix.pipeline import STAGES

    stages = {s.stage: s for s in report.stages}
    assert list(stages) == list(STAGES)
    recipe = _recipe(real_shape)
    e, d = recipe.expert, recipe.distill
    assert stages[STAGES[1]].generation_tokens == 5 * e.steps * e.batch_size * e.max_completion_length
    n_prompts = sum(counts[t, "train"] for t in TASKS)  # every train row, fewer than n_prompts
    assert stages[STAGES[2]].generation_tokens == n_prompts * d.samples * d.max_new_tokens
    assert stages[STAGES[3]].training_tokens > 0 and stages[STAGES[5]].generation_tokens > 0


def test_the_done_when_command(real_shape, tmp_path, monkeypatch):
    """`loramix pipeline --config recipes/qwen2.5-0.5b.yaml --dry-run` with the model folder and the
    fixture data given on the command line; nothing is written."""
    from rich.console import Console

    from loramix import cli
    from loramix.cli import app

    monkeypatch.setattr(cli, "console", Console(width=200))

    base, data = real_shape
    args = ["pipeline", "--config", str(RECIPE), "--dry-run", "--root", str(tmp_path / "runs"), "--base", str(base)]
    for task, files in data.items():
        args += [a for split, f in files.items() for a in ("--data", f"{task}:{split}={f}")]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "the recipe is ready" in result.output and "2. experts (GRPO, SFT)" in result.output
    assert "arc_train.jsonl" in result.output and "present, used" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("problem", ["missing", "overlap", "budget"])
def test_each_problem_is_one_line(real_shape, tmp_path, problem):
    base, data = real_shape
    data = {k: dict(v) for k, v in data.items()}
    changes = {}
    if problem == "missing":
        data["medqa"]["test"] = str(tmp_path / "nope.jsonl")
        says = ["nope.jsonl"]
    elif problem == "overlap":
        data["gsm8k"]["test"] = str(SPLITS / "gsm8k_test_leaky.jsonl")
        says = ["task 'gsm8k'", "share 1 rows"]
    else:
        changes["max_length"] = 2100  # a 2048-token trace plus any prompt longer than 52 tokens does not fit
        says = ["distill.max_new_tokens (2048)", "exceeds max_length (2100)"]
    report = dry_run(_recipe((base, data), **changes))
    if problem == "budget":  # the oracle: which tasks' longest rendered train prompt is over 52 tokens
        from transformers import AutoTokenizer

        from loramix.chat import render_prompt
        from loramix.tasks.splits import build_task

        tok = AutoTokenizer.from_pretrained(base)
        over = [t for t in TASKS if max(len(tok(render_prompt(tok, x.prompt), add_special_tokens=False)["input_ids"])
                                        for x in build_task(t, data).examples("train")) > 52]
        assert over and len(report.failures) == len(over)
        assert all(f"task {t!r}: traces" in line for t, line in zip(over, report.failures))
    else:
        assert len(report.failures) == 1, report.failures
    assert all(s in report.failures[0] for s in says), report.failures
    assert all("\n" not in line for line in report.failures)


def test_failures_exit_1_on_the_command_line(real_shape, tmp_path):
    from loramix.cli import app

    base, _ = real_shape
    result = CliRunner().invoke(app, ["pipeline", "--config", str(RECIPE), "--dry-run", "--base", str(base)],
                                terminal_width=200)
    assert result.exit_code == 1
    # the recipe's own data/ files are not here: one line per task and split, and the budget check is skipped
    assert result.output.count("error:") == 10
    assert "dry run: 10 problem(s)" in result.output


def test_default_recipe_does_not_build_the_base():
    """The conftest guard fails the test if the default base were built."""
    from loramix.base_model import default_base_path
    from loramix.recipe import Recipe

    report = dry_run(Recipe())
    assert report.failures == [] and "would be built" in report.base and not default_base_path().exists()
    assert report.chat_template == "absent: prompts stay plain"
    assert {r.split for r in report.splits} == {"train", "validation", "test"}
    assert {r.task for r in report.splits} == set(Recipe().tasks)
