"""`loramix ablate`: a miniature ablation (two values of k, sampled inference, two seeds, a few steps)
end to end, its resume, the shipped recipe, and the plan's sharing of the default run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loramix.ablation import (AblationKnobs, AblationRecipe, ablation_markdown, load_ablation_recipe, plan,
                              run_ablation, update_readme_ablation)
from loramix.errors import DataError, LoramixError
from loramix.recipe import EvalStage, ReMixStage

from conftest import saved_tiny_base

RECIPE = Path(__file__).parent.parent / "recipes" / "remix-ablation.yaml"


def test_shipped_recipe_plans_every_knob_of_the_issue():
    r = load_ablation_recipe(RECIPE)
    variants, knobs = plan(r)
    assert set(knobs) == {"k", "single_lora_k", "samples", "logq", "omega", "rloo", "inference"}
    assert list(knobs["k"]) == [1, 2, 3, 4] and list(knobs["samples"]) == [2, 4, 8, 16]
    assert knobs["k"][2] == knobs["samples"][4] == knobs["omega"]["linear"] == knobs["rloo"]["on"] == "default"
    assert variants["single_lora_r16"].single_lora_rank == 16 and variants["no_topk"].sample_at_inference
    assert dict(variants["no_rloo"].overrides) == {"freeze_router": True}
    assert r.seeds >= 2 and r.evaluate.n >= 300


def test_bad_ablation_recipes_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("knobs: {kk: [1]}\n")
    with pytest.raises(DataError, match="knobs.kk"):
        load_ablation_recipe(bad)
    with pytest.raises(LoramixError, match="k=9 exceeds"):
        plan(dataclasses.replace(AblationRecipe(), knobs=AblationKnobs(k=[9])))


def _mini(base: Path) -> AblationRecipe:
    return AblationRecipe(
        name="mini-ablation", base=str(base), tasks=["add", "strings"], difficulty="easy", seeds=2, n_examples=6,
        max_length=256, remix=ReMixStage(n_experts=3, top_k=2, rank=2, samples=2, steps=2, batch_size=4),
        evaluate=EvalStage(n=3, batch_size=8),
        knobs=AblationKnobs(k=[1, 2], single_lora_k=[1], samples=[], logq=[], omega=[], no_rloo=True, no_topk=True))


def test_miniature_ablation_runs_reports_and_resumes(tmp_path, monkeypatch):
    saved_tiny_base(tmp_path)
    r = _mini(tmp_path / "base")
    cfg = tmp_path / "mini.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(dataclasses.asdict(r)))
    report = run_ablation(cfg, tmp_path / "runs", progress=False)
    run = tmp_path / "runs" / "mini-ablation"
    assert set(report["ablations"]) == {"k", "single_lora_k", "rloo", "inference"}
    for knob, values in report["ablations"].items():
        for value, a in values.items():
            assert len(a["seeds"]) == 2 and 0 <= a["average"] <= 1, (knob, value)
            assert a["ci"][0] <= a["average"] + 1e-9 <= a["ci"][1] + 2e-9
    assert report["ablations"]["k"]["2"]["run"] == "default" and report["ablations"]["k"]["1"]["paper"] == 56.2
    for name in ("default-s0", "default-s1", "k=1-s1", "single_lora_r2-s0", "no_rloo-s0", "no_topk-s1"):
        assert (run / "runs" / name).is_dir() and (run / "eval" / f"{name}.json").is_file(), name
    sampled = json.loads((run / "runs" / "no_topk-s0" / "mixture_config.json").read_text())
    assert sampled["router_options"]["inference"] == "sample"
    names = [t["name"] for t in report["targets"]]
    assert any(n.startswith("accuracy rises with k") for n in names)
    assert "k=1 rank-r ReMix beats one rank-1r LoRA" in names
    assert all(t["verdict"] in ("met", "not met", "undecided") for t in report["targets"])
    # the frozen routers did not move; the trained ones did
    from safetensors.torch import load_file

    frozen, trained = (load_file(str(run / "runs" / f"{n}-s0" / "mixture.safetensors")) for n in ("no_rloo", "default"))
    from loramix.train.remix import ReMixConfig, build_mixture
    from transformers import AutoModelForCausalLM

    init = build_mixture(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                         ReMixConfig(tasks=("add",), n_experts=3, top_k=2, rank=2, seed=0)).state_dict()
    router_keys = [k for k in frozen if k.startswith("routers.")]
    assert router_keys and all(frozen[k].equal(init[k]) for k in router_keys)
    assert not all(trained[k].equal(init[k]) for k in router_keys)
    md = (run / "report.md").read_text()
    assert "k experts per token (Table 5)" in md and "| verdict |" in md
    # a rerun trains and evaluates nothing
    import loramix.train.remix as remix

    monkeypatch.setattr(remix, "_fit", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = run_ablation(cfg, tmp_path / "runs", progress=False)
    assert again["ablations"] == report["ablations"]
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- ablation:start -->\nold\n<!-- ablation:end -->\ny\n")
    update_readme_ablation(run, readme)
    assert ablation_markdown(report) in readme.read_text() and "old" not in readme.read_text()
