"""A benchmark's data split by stage (train for stages 1-3, test for evaluation), the recipes' and
commands' data options, the refusal of overlapping splits, and per-task evaluation budgets."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from loramix.errors import LoramixError
from loramix.pipeline import Pipeline
from loramix.recipe import Recipe, load_recipe
from loramix.tasks import get_task
from loramix.tasks.splits import build_task, parse_data

SPLITS = Path(__file__).parent / "fixtures" / "benchmarks" / "splits"
TRAIN, TEST, LEAKY = SPLITS / "gsm8k_train.jsonl", SPLITS / "gsm8k_test.jsonl", SPLITS / "gsm8k_test_leaky.jsonl"
RECIPES = Path(__file__).parent.parent / "recipes"


def _questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]


def _asked(examples) -> list[str]:
    """Which file question each example's prompt holds (the oracle: the raw files' questions)."""
    every = _questions(TRAIN) + _questions(TEST)
    return [next(q for q in every if q in ex.prompt) for ex in examples]


def _recipe(**task_kwargs) -> Recipe:
    return dataclasses.replace(Recipe(), name="splits", tasks=["gsm8k"], task_kwargs=task_kwargs, methods=["base"])


def test_each_split_reads_its_own_file():
    task = get_task("gsm8k", train=TRAIN, test=TEST)
    assert _asked(task.examples("train")) == _questions(TRAIN)
    assert _asked(task.examples("test")) == _questions(TEST) == _asked(task.examples())
    assert _asked(task.examples("validation")) == _questions(TEST)  # no validation file: the test file
    boolq = get_task("boolq", train=SPLITS / "boolq_train.jsonl", test=SPLITS / "boolq_dev.jsonl")
    assert [e.answer for e in boolq.examples("test")] == ["true", "false"]
    assert "is water wet" in boolq.examples("test")[0].prompt  # test is the dev file for BoolQ


def test_a_split_without_a_file_names_task_and_split():
    with pytest.raises(LoramixError, match=r"task 'gsm8k' needs a data file for its train split.*gsm8k:train=FILE"):
        get_task("gsm8k", test=TEST).examples("train")
    with pytest.raises(LoramixError, match=r"task 'boolq' needs a data file for its test split"):
        get_task("boolq", train=SPLITS / "boolq_train.jsonl").examples("test")


def test_stages_get_the_recipe_data(tmp_path, monkeypatch):
    """Experts and distillation are handed the task's data and read train rows; evaluation reads test rows."""
    import loramix.pipeline as pipeline_mod

    data = {"gsm8k": {"train": str(TRAIN), "test": str(TEST)}}
    recipe = dataclasses.replace(_recipe(**data), methods=["base", "expert_rl"])
    recipe.distill.max_new_tokens, recipe.evaluate.max_new_tokens = 77, 99
    pipe = Pipeline(recipe, tmp_path, progress=False)
    pipe.base = "unused"
    seen: dict = {}
    monkeypatch.setattr(pipeline_mod, "train_expert", lambda cfg, console=None: seen.setdefault("expert", cfg))
    pipe.train_experts()
    cfg = seen["expert"]
    assert _asked(get_task(cfg.task, **cfg.task_kwargs).examples("train")) == _questions(TRAIN)

    def fake_distill(cfg, progress=True):
        seen["distill"] = cfg
        raise LoramixError("stop after the config")

    monkeypatch.setattr(pipeline_mod, "distill", fake_distill)
    with pytest.raises(LoramixError, match="stop after"):
        pipe.distill()
    assert seen["distill"].task_kwargs == data and seen["distill"].max_new_tokens == 77
    assert _asked(build_task("gsm8k", seen["distill"].task_kwargs).examples("train")) == _questions(TRAIN)

    monkeypatch.setattr(pipeline_mod, "load_for_eval", lambda path, base=None: (None, None, "base"))

    def fake_evaluate(model, tok, tasks, **kw):
        seen["eval"] = kw
        raise LoramixError("stop after the options")

    monkeypatch.setattr(pipeline_mod, "evaluate_model", fake_evaluate)
    with pytest.raises(LoramixError, match="stop after"):
        pipe._evaluate_one("base", "unused")
    kw = seen["eval"]
    assert kw["max_new_tokens"] == 99 and kw["split"] == "test"
    assert _asked(build_task("gsm8k", kw["task_kwargs"]).examples(kw["split"])) == _questions(TEST)
    assert _asked(pipe.task("gsm8k").examples("train")) == _questions(TRAIN)


def test_evaluate_model_reads_the_test_file():
    from loramix.base_model import build_tokenizer
    from loramix.evaluate import evaluate_model

    tok = build_tokenizer()
    report = evaluate_model(EosLM(tok), tok, ["gsm8k"], n=5, max_new_tokens=4, keep_samples=5,
                            task_kwargs={"gsm8k": {"train": TRAIN, "test": TEST}})
    assert report.per_task["gsm8k"]["n"] == 2
    assert [next(q for q in _questions(TEST) if q in s["prompt"]) for s in report.samples["gsm8k"]] == _questions(TEST)


@pytest.mark.parametrize("data, says", [
    ({"path": str(TEST)}, "are the same file; 2 of 2 train rows are test rows"),
    ({"train": str(TEST), "test": str(TEST)}, "are the same file"),
    ({"train": str(TRAIN), "test": str(LEAKY)}, "share 1 rows .*1 of 3 train rows"),
])
def test_overlapping_splits_are_refused(tmp_path, data, says):
    with pytest.raises(LoramixError, match=says) as err:
        Pipeline(_recipe(gsm8k=data), tmp_path, progress=False)
    message = str(err.value)
    assert "task 'gsm8k'" in message and str(data.get("train", data.get("path"))) in message
    assert str(data.get("test", data.get("path"))) in message
    assert not (tmp_path / "splits").exists()  # refused before anything ran


def test_disjoint_splits_and_bad_task_kwargs(tmp_path):
    Pipeline(_recipe(gsm8k={"train": str(TRAIN), "test": str(TEST)}), tmp_path, progress=False)
    with pytest.raises(LoramixError, match=r"task_kwargs.arc: not a task of the recipe"):
        Pipeline(_recipe(gsm8k={"train": str(TRAIN), "test": str(TEST)}, arc={"test": str(TEST)}), tmp_path)
    with pytest.raises(LoramixError, match="no such file"):
        Pipeline(_recipe(gsm8k={"train": str(tmp_path / "nope.jsonl"), "test": str(TEST)}), tmp_path)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-3b"])
def test_real_recipes_name_train_and_test(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert set(recipe.task_kwargs) == set(recipe.tasks) == {"gsm8k", "arc", "medqa", "cola", "boolq"}
    for task, data in recipe.task_kwargs.items():
        assert set(data) == {"train", "test"} and data["train"] != data["test"], task
        assert all(f.startswith("data/") for f in data.values()), task
    assert recipe.expert.max_completion_length >= 2048 and recipe.distill.max_new_tokens >= 2048
    assert recipe.evaluate.max_new_tokens >= 1024  # the authors' budgets (2048)


def test_parse_data():
    assert parse_data(["gsm8k:train=a.jsonl", "gsm8k:test=b.jsonl", "arc=c", " boolq : test = d "]) == {
        "gsm8k": {"train": "a.jsonl", "test": "b.jsonl"}, "arc": {"path": "c"}, "boolq": {"test": "d"}}
    assert parse_data(None) == {}
    for bad, says in [("gsm8k", "expected TASK:SPLIT=FILE"), ("gsm8k:train=", "expected TASK:SPLIT=FILE"),
                      (":train=a", "expected TASK:SPLIT=FILE"), ("gsm8k:=a", "expected TASK:SPLIT=FILE"),
                      ("gsm8k:tset=a", "unknown split 'tset'; valid: train, validation, test")]:
        with pytest.raises(LoramixError, match=says):
            parse_data([bad])
    with pytest.raises(LoramixError, match="gsm8k:train given twice"):
        parse_data(["gsm8k:train=a", "gsm8k:train=b"])
    with pytest.raises(LoramixError, match="task 'arc' is not among the tasks"):
        parse_data(["arc:train=a"], ["gsm8k"])


def test_data_option_errors_on_the_command_line(capsys):
    from loramix.cli import main

    for argv in (["evaluate", "default", "--tasks", "gsm8k", "--data", "gsm8k:tset=x.jsonl"],
                 ["train-expert", "--task", "gsm8k", "--out", "x", "--data", "arc:train=x.jsonl"]):
        with pytest.raises(SystemExit) as exc:
            import sys
            old, sys.argv = sys.argv, ["loramix", *argv]
            try:
                main()
            finally:
                sys.argv = old
        assert exc.value.code == 2
    err = capsys.readouterr()
    text = err.out + err.err
    assert "unknown split 'tset'" in text and "task 'arc' is not among the tasks" in text


class EosLM(nn.Module):
    """A fake causal LM that answers every prompt with EOS at once, and records each call's budget."""

    def __init__(self, tok):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.tok, self.budgets = tok, []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        self.budgets.append(max_new_tokens)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), eos_token_id)], dim=1)


def test_evaluation_budget_is_per_task():
    from loramix.base_model import build_tokenizer
    from loramix.evaluate import evaluate_model

    tok = build_tokenizer()
    alone = evaluate_model(EosLM(tok), tok, ["add"], n=4, difficulty="hard")
    both = evaluate_model(EosLM(tok), tok, ["add", "sort"], n=4, difficulty="hard")
    budgets = both.config["max_new_tokens_per_task"]
    add = get_task("add")  # oracle: 1.25 x the longest reference of add's own prompts + 8
    longest = max(len(tok(add.reference_completion(e), add_special_tokens=False)["input_ids"])
                  for e in add.examples("test", 4, seed=0, difficulty="hard"))
    assert alone.config["max_new_tokens_per_task"]["add"] == budgets["add"] == math.ceil(1.25 * longest) + 8
    assert budgets["sort"] != budgets["add"]  # so a shared budget would have changed add's
    model = EosLM(tok)
    evaluate_model(model, tok, ["add", "sort"], n=4, difficulty="hard", max_new_tokens=21)
    assert set(model.budgets) == {21}  # an explicit budget wins for every task
