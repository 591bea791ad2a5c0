"""A miniature pipeline (2 domains, a few steps) end to end, recipes, and the README splice."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loramix.errors import DataError, LoramixError
from loramix.pipeline import METHOD_FAMILIES, Pipeline, run_pipeline
from loramix.recipe import Recipe, load_recipe
from loramix.report import END, START, update_readme

from conftest import memorised_base

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


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
    report = run_pipeline(mini_recipe(base), root / "runs", progress=False)
    return root, base, report


def test_miniature_pipeline_writes_the_report(mini_run):
    root, base, report = mini_run
    run = root / "runs" / "mini"
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(report["methods"]))
    expected = {"base", "oracle", "mor_lora_hard", "soft", "topk2_norm", "gumbel", "merge_linear", "merge_ties",
                "merge_dare", "multitask_lora", "prompt_router", "remix", "mixlora_topk", "single_lora_same_active",
                "expert_rl:add", "expert_rl:strings", "expert_sft:add", "expert_sft:strings"}
    assert set(report["methods"]) == expected
    for name, m in report["methods"].items():
        assert set(m["accuracy"]) == {"add", "strings"} and all(0 <= a <= 1 for a in m["accuracy"].values())
        assert m["average"] == pytest.approx(sum(m["accuracy"].values()) / 2)
        assert isinstance(m["trainable_parameters"], int) and m["train_seconds"] >= 0
    assert report["methods"]["base"]["trainable_parameters"] == 0
    assert report["methods"]["mor_lora_hard"]["trainable_parameters"] < report["methods"]["remix"]["trainable_parameters"]
    # the memorised base answers its own training prompts; oracle routing keeps that
    assert report["routing"]["oracle"]["routing_accuracy"] == 1.0
    for name in ("mor_lora_hard", "soft", "topk2_norm", "gumbel", "remix", "mixlora_topk"):
        r = report["routing"][name]
        assert 0 < r["mean_max_mass"] <= 1 and r["ess"] >= 1
    assert report["routing"]["remix"]["ess"] == pytest.approx(2.0)  # constant weights over k=2
    assert set(report["mixed"]) == {"mor_lora_hard", "prompt_router", "oracle", "soft", "topk2_norm"}
    assert (run / "report.md").read_text().startswith("# loramix report: mini")
    assert (run / "ess_steps.png").is_file() and (run / "mor_lora_hard_usage.png").is_file()


def test_rerun_is_cached(mini_run):
    root, base, report = mini_run
    pipe = Pipeline(mini_recipe(base), root / "runs", progress=False)
    again = pipe.run_all()
    assert again["methods"] == report["methods"]
    assert pipe.timings["2. experts (GRPO, SFT)"] < 5 and pipe.timings["6-7. evaluate and analyze"] < 1


def test_readme_results_are_spliced_from_the_report(mini_run, tmp_path):
    root, _, report = mini_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\ntail\n")
    update_readme(root / "runs" / "mini", readme)
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| mor_lora_hard |" in text
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


def test_bad_recipes_name_the_field(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\nexpert: {steps: 3, stpes: 4}\n")
    with pytest.raises(DataError, match=r"r.yaml: expert.stpes: unknown key; valid: .*steps"):
        load_recipe(f)
    f.write_text("name: x\nexpert: {steps: many}\n")
    with pytest.raises(DataError, match=r"r.yaml: expert.steps: must be int, got 'many'"):
        load_recipe(f)
    f.write_text("tasks: add\n")
    with pytest.raises(DataError, match=r"r.yaml: tasks: must be a list"):
        load_recipe(f)
    f.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match=r"r.yaml: file: not valid YAML"):
        load_recipe(f)
    with pytest.raises(LoramixError, match="recipe methods: unknown"):
        Pipeline(dataclasses.replace(Recipe(), methods=["hard_mor"]), tmp_path)
