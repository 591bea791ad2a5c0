"""A miniature pipeline (2 domains, a few steps) end to end, recipes, and the README splice."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from loramix.errors import DataError, LoramixError
from loramix.pipeline import METHOD_FAMILIES, STAGES, Pipeline, run_pipeline
from loramix.recipe import Recipe, load_recipe
from loramix.report import END, START, update_readme

from conftest import memorised_base

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml") if "ablation" not in p.stem)


def mini_recipe(base: Path, **kw) -> Recipe:
    r = load_recipe(None)
    return dataclasses.replace(
        r, name="mini", base=str(base), tasks=["add", "strings"], difficulty="easy", eval_difficulty="easy",
        max_length=256,
        expert=dataclasses.replace(r.expert, steps=2, sft_steps=2, batch_size=8, num_generations=4, n_train=8,
                                   n_eval=4),
        distill=dataclasses.replace(r.distill, n_prompts=4, samples=1),
        router=dataclasses.replace(r.router, max_steps=3, batch_size=4, attention_lora_rank=2),
        remix=dataclasses.replace(r.remix, n_experts=3, top_k=2, rank=2, samples=2, steps=3, batch_size=4),
        multitask=dataclasses.replace(r.multitask, steps=3, batch_size=4),
        evaluate=dataclasses.replace(r.evaluate, n=3, batch_size=8, mixed_pairs=[["add", "strings"]], mixed_n=2),
        **kw)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    base = memorised_base(root / "base", ("add", "strings"), n=4)
    report = run_pipeline(mini_recipe(base, seeds=2), root / "runs", progress=False)
    return root, base, report


def test_miniature_pipeline_writes_the_report(mini_run):
    root, base, report = mini_run
    run = root / "runs" / "mini"
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(report["methods"]))
    expected = {"base", "oracle", "mor_lora_hard", "mor_lora_hard_chosen", "soft", "topk2_norm", "gumbel",
                "merge_linear", "merge_ties", "merge_dare", "multitask_lora", "prompt_router", "prompt_router_fair",
                "remix", "mixlora_topk", "soft_trainable", "single_lora_same_active",
                "expert_rl:add", "expert_rl:strings", "expert_sft:add", "expert_sft:strings"}
    assert set(report["methods"]) == expected
    seeded = {"mor_lora_hard", "mor_lora_hard_chosen", "soft", "topk2_norm", "gumbel", "prompt_router",
              "prompt_router_fair", "remix", "mixlora_topk", "soft_trainable", "multitask_lora",
              "single_lora_same_active"}
    assert report["n_eval"] == {"add": 3, "strings": 3}
    for name, m in report["methods"].items():
        assert m["seeds"] == (2 if name in seeded else 1), name
        assert isinstance(m["trainable_parameters"], int) and m["train_seconds"] >= 0
        assert m["added_parameters"] >= m["trainable_parameters"]
        if name.startswith("expert_sft:"):  # scored on its own domain only
            own = name.partition(":")[2]
            assert [t for t, a in m["accuracy"].items() if a is not None] == [own] and m["average"] is None
            continue
        assert set(m["accuracy"]) == {"add", "strings"} and all(0 <= a <= 1 for a in m["accuracy"].values())
        assert m["average"] == pytest.approx(sum(m["accuracy"].values()) / 2)
        assert len(m["average_seeds"]) == m["seeds"], name
        assert m["average"] == pytest.approx(sum(m["average_seeds"]) / m["seeds"], abs=1e-3)
        for t, (lo, hi) in m["accuracy_ci"].items():
            assert lo <= m["accuracy"][t] + 1e-9 and m["accuracy"][t] <= hi + 1e-9, (name, t)
        lo, hi = m["average_ci"]
        assert lo <= m["average"] + 1e-9 <= hi + 2e-9
        assert (run / "methods" / (name + "-s1")).is_dir() == (name in seeded)
    # a routed mixture adds its trainable router and attention LoRA plus the frozen experts
    hard = report["methods"]["mor_lora_hard"]
    experts = sum(report["methods"][f"expert_rl:{t}"]["trainable_parameters"] for t in ("add", "strings"))
    assert hard["added_parameters"] == hard["trainable_parameters"] + experts
    assert report["methods"]["base"]["trainable_parameters"] == 0
    assert report["methods"]["mor_lora_hard"]["trainable_parameters"] < report["methods"]["remix"]["trainable_parameters"]
    # the memorised base answers its own training prompts; oracle routing keeps that
    assert report["routing"]["oracle"]["routing_accuracy"] == 1.0
    assert report["methods"]["soft_trainable"]["trainable_parameters"] == report["methods"]["remix"]["trainable_parameters"]
    # ReMix's single-LoRA comparators: rank n*r (its total LoRA parameters) and k*r (its active ones): n=3, k=2
    single, multi = (report["methods"][m]["trainable_parameters"] for m in ("single_lora_same_active", "multitask_lora"))
    assert multi * 2 == single * 3 and multi < report["methods"]["remix"]["trainable_parameters"]
    for name in ("mor_lora_hard", "soft", "topk2_norm", "gumbel", "remix", "mixlora_topk", "soft_trainable"):
        r = report["routing"][name]
        assert 0 < r["mean_max_mass"] <= 1 and r["ess"] >= 1
    assert report["routing"]["remix"]["ess"] == pytest.approx(2.0)  # constant weights over k=2
    assert set(report["mixed"]) == {"add+strings"}
    assert set(report["mixed"]["add+strings"]) == {"base", "segment_oracle", "mor_lora_hard", "prompt_router",
                                                   "prompt_router_fair"}
    for name, c in report["mixed"]["add+strings"].items():
        assert c["seeds"] == (2 if name in ("mor_lora_hard", "prompt_router_fair") else 1), name
        assert c["n"] == 2 and c["ci"][0] <= c["accuracy"] <= c["ci"][1] and 0 <= c["format_rate"] <= 1
    for row in report["preconditions"] + report["targets"]:
        assert set(row) >= {"name", "value", "ci", "threshold", "verdict"}
        assert row["verdict"] in ("met", "not met", "undecided"), row
    names = [r["name"] for r in report["preconditions"]]
    assert "add: RL expert beats the base by >= 25 points" in names and "mixed pairs evaluated >= 3" in names
    assert next(r for r in report["preconditions"] if r["name"] == "mixed pairs evaluated >= 3")["verdict"] == "not met"
    assert any(r["name"].startswith("ste=full") for r in report["targets"])
    curves = report["routing_over_training"]  # from each mixture's train_log.json, 3 logged steps
    for name in ("soft_trainable", "mixlora_topk", "remix"):
        c = curves[name]
        assert c["steps"] == [1, 2, 3] and all(1.0 <= w <= m + 1e-6 <= 3.0 + 1e-6
                                              for w, m in zip(c["ess_q_token_worst"], c["ess_q_token"])), name
    assert any(r["name"].startswith("soft_trainable collapses") for r in report["targets"])
    assert (run / "report.md").read_text().startswith("# loramix report: mini")
    assert (run / "ess_steps.png").is_file() and (run / "mor_lora_hard_usage.png").is_file()


def test_rerun_is_cached_keeps_the_stage_times_and_prints_headings_1_to_8(mini_run):
    from rich.console import Console

    root, base, report = mini_run
    assert list(report["stage_seconds"]) == list(STAGES[:-1]) and report["stage_seconds"]["2. experts (GRPO, SFT)"] > 0
    shown = io.StringIO()
    pipe = Pipeline(mini_recipe(base, seeds=2), root / "runs", console=Console(file=shown, width=100), progress=True)
    again = pipe.run_all()
    assert again["methods"] == report["methods"]
    assert again["stage_seconds"] == report["stage_seconds"]  # every stage cached: the first run's times stay
    on_disk = json.loads((root / "runs" / "mini" / "report.json").read_text())
    assert on_disk["stage_seconds"] == report["stage_seconds"]
    assert on_disk["last_run_seconds"] == again["last_run_seconds"]
    headings = re.findall(r"─ (\d)\. ", shown.getvalue())
    assert headings == [str(i) for i in range(1, 9)], shown.getvalue()
    assert "{'" not in shown.getvalue()
    quiet = io.StringIO()  # quiet: nothing at all (the CLI prints the tables after)
    Pipeline(mini_recipe(base, seeds=2), root / "runs", console=Console(file=quiet, width=100),
             progress=False).run_all()
    assert quiet.getvalue() == ""


def test_trainer_log_dicts_go_to_a_file_not_the_terminal(tmp_path, capfd):
    import torch
    from transformers import Trainer

    from conftest import tiny_model
    from loramix.train.common import TRAINER_LOG_FILE, run_trainer, training_arguments

    torch.manual_seed(0)
    rows = [{"input_ids": r, "labels": r} for r in torch.randint(3, 97, (8, 12))]
    args = training_arguments(tmp_path / "work", max_steps=3, logging_steps=1, per_device_train_batch_size=4,
                              save_steps=100)
    run_trainer(Trainer(model=tiny_model(hidden=32).train(), args=args, train_dataset=rows), "t", resume=None,
                progress=False)
    printed = capfd.readouterr()
    assert "loss" not in printed.out + printed.err
    logged = [json.loads(line) for line in (tmp_path / "work" / TRAINER_LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3] and "train_runtime" in logged[-1]


def test_distill_bar_reaches_its_total_when_max_per_task_stops_early(monkeypatch):
    """``max_per_task`` ends a task's distillation before its prompts run out; its bar still ends full."""
    from rich.progress import Progress

    import loramix.train.distill as distill_mod
    from loramix.generation import Completion
    from loramix.tasks import get_task
    from loramix.train.common import processes

    task = get_task("add")

    def right_answers(model, tok, cfg, index, chunk):  # greedy: the reference completion; no samples
        return [[Completion(task.reference_completion(ex), True, 1)] for _, ex in chunk], [[] for _ in chunk]

    monkeypatch.setattr(distill_mod, "_generate_batch", right_answers)
    cfg = distill_mod.DistillConfig(base="-", experts=["-"], tasks=["add"], out="-", n_prompts=8, samples=0,
                                    batch_size=2, max_per_task=3, difficulty="easy")
    state = distill_mod._Resume(Path("-"), set(), set(), {})
    model = type("M", (), {"set_adapter": lambda self, name: None})()
    job = distill_mod._Job(0, "expert0", "-", "add", task)
    with Progress(disable=True) as bar:
        distill_mod._distill_job(job, cfg, model, None, state, bar, None, processes())
        (t,) = bar.tasks
        assert state.count("add") == 3 and t.completed == t.total == 8


def test_readme_results_are_spliced_from_the_report(mini_run, tmp_path):
    root, _, report = mini_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nOLD RESULTS\n{END}\n\ntail\n")
    update_readme(root / "runs" / "mini", readme)
    text = readme.read_text()
    assert "Preconditions of the embedded world" in text and "| verdict |" in text
    assert "OLD RESULTS" not in text and text.endswith("tail\n") and "| mor_lora_hard |" in text
    # a section named after the recipe is preferred, so one README holds several recipes' results
    named = "<!-- results:mini:start -->\nOLD MINI\n<!-- results:mini:end -->"
    readme.write_text(f"{START}\nOLD TINY\n{END}\n{named}\n")
    update_readme(root / "runs" / "mini", readme)
    text = readme.read_text()
    plain, named_part = text.split("<!-- results:mini:start -->")
    assert "OLD TINY" in plain and "| mor_lora_hard |" not in plain
    assert "OLD MINI" not in named_part and "| mor_lora_hard |" in named_part
    readme.write_text("no markers")
    with pytest.raises(LoramixError, match="no <!-- results:start -->"):
        update_readme(root / "runs" / "mini", readme)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_load_and_real_model_recipes_run_one_step(path, tmp_path):
    """Every shipped recipe validates; a real-model recipe starts and runs one training step on a
    tiny random model (its base and data swapped for local tiny ones)."""
    recipe = load_recipe(path)
    assert set(recipe.methods or METHOD_FAMILIES) <= set(METHOD_FAMILIES)
    if recipe.base == "default":  # the embedded-default recipes run in full in the miniature test
        return
    from loramix.base_model import tiny_random_llama

    model, tok = tiny_random_llama(hidden=64, layers=2)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    small = dataclasses.replace(recipe, base=str(tmp_path / "base"), tasks=["add"], task_kwargs={},
                                expert=dataclasses.replace(recipe.expert, steps=1, batch_size=4, num_generations=2,
                                                           n_train=4, n_eval=2, max_completion_length=8))
    pipe = Pipeline(dataclasses.replace(small, methods=["expert_rl"]), tmp_path / "runs", progress=False)
    pipe.build_base()
    pipe.train_experts()
    metrics = json.loads((tmp_path / "runs" / recipe.name / "experts" / "rl" / "add" / "metrics.json").read_text())
    assert metrics["steps"] == 1


BAD_RECIPES = [  # (YAML, what the error says: the file, the field, the problem)
    ("name: x\nexpert: {steps: 3, stpes: 4}\n", r"r.yaml: expert.stpes: unknown key; valid: .*steps"),
    ("name: x\nexpert: {steps: many}\n", r"r.yaml: expert.steps: must be int, got 'many'"),
    ("tasks: add\n", r"r.yaml: tasks: must be a list"),
    ("name: [unclosed\n", r"r.yaml: file: not valid YAML"),
    ("embedded_base: {layers: 4, stpes: 1000}\n", r"r.yaml: embedded_base.stpes: unknown key; valid: .*steps"),
    ("embedded_base: {layers: four}\n", r"r.yaml: embedded_base.layers: must be int, got 'four'"),
    ("base: /models/qwen\nembedded_base: {layers: 4}\n", r"r.yaml: embedded_base: applies to base: default only"),
]


def test_bad_recipes_name_the_field(tmp_path):
    f = tmp_path / "r.yaml"
    for text, message in BAD_RECIPES:
        f.write_text(text)
        with pytest.raises(DataError, match=message):
            load_recipe(f)
    with pytest.raises(LoramixError, match="recipe methods: unknown"):
        Pipeline(dataclasses.replace(Recipe(), methods=["hard_mor"]), tmp_path)


def test_embedded_base_fields_pick_the_built_base(tmp_path, monkeypatch):
    """``embedded_base`` changes the default base's config, and the pipeline uses that build."""
    from loramix import base_model, pipeline

    seen = {}

    def fake_build(out=None, *, progress=True, **overrides):
        seen.update(overrides)
        return tmp_path / "base-4", False

    monkeypatch.setattr(pipeline, "build_or_reuse", fake_build)
    f = tmp_path / "r.yaml"
    f.write_text("embedded_base: {layers: 4, steps: 1000}\n")
    pipe = Pipeline(load_recipe(f), tmp_path / "runs", progress=False)
    pipe.build_base()
    assert seen == {"layers": 4, "steps": 1000} and pipe.base == str(tmp_path / "base-4")
    assert base_model.default_base_path(dataclasses.replace(base_model.DEFAULT_CONFIG, layers=4)) != \
        base_model.default_base_path(base_model.DEFAULT_CONFIG)


def test_demo_command_runs_the_tiny_recipe(tmp_path, monkeypatch):
    """`make demo` is `loramix demo`: it must reach the pipeline with the shipped tiny recipe (a
    command calling another command must pass every option, or it gets typer's OptionInfo objects)."""
    from typer.testing import CliRunner

    from loramix import pipeline as pipeline_module
    from loramix.cli import app

    seen = {}

    def fake_run(recipe, root, console=None, progress=True):
        seen.update(recipe=recipe, root=root)
        return {"methods": {}}

    monkeypatch.setattr(pipeline_module, "run_pipeline", fake_run)
    monkeypatch.setattr("loramix.report.tables_markdown", lambda report: "tables")
    res = CliRunner().invoke(app, ["demo", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen["recipe"] == load_recipe(Path("recipes/tiny.yaml")) and seen["root"] == tmp_path
