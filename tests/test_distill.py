"""Stage 2a: only verified traces are kept, with provenance; reruns resume without duplicates."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoModelForCausalLM

from loramix.tasks import get_task
from loramix.train.distill import DistillConfig, distill

from conftest import memorised_base


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny Llama trained to reproduce the reference completions of 4 `add` prompts, and an
    identity expert (B = 0) on it: its greedy answers to those prompts are correct."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("distill")
    memorised_base(root / "base", ("add",), n=4)
    exs = get_task("add").examples("train", 6, seed=0, difficulty="easy")
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["gate_proj", "up_proj", "down_proj"])
                   ).save_pretrained(str(root / "expert"))
    return root, exs


def config(root, out, **kw):
    args = dict(base=str(root / "base"), experts=[str(root / "expert")], tasks=["add"], out=str(out),
                n_prompts=6, samples=2, batch_size=2, difficulty="easy", max_new_tokens=80, temperature=0.3)
    args.update(kw)
    return DistillConfig(**args)


def test_distill_keeps_only_verified_traces_with_provenance(memorised, tmp_path):
    root, exs = memorised
    out = distill(config(root, tmp_path / "traces.jsonl"), progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    task = get_task("add")
    by_prompt = {ex.prompt: ex for ex in exs}
    assert rows, "the memorised prompts must yield traces"
    assert {r["prompt"] for r in rows} <= {ex.prompt for ex in exs[:4]} | {ex.prompt for ex in exs[4:]}
    for r in rows:
        assert task.is_correct(r["completion"], by_prompt[r["prompt"]])
        assert r["mode"] in ("greedy", "sample") and r["expert_index"] == 0 and r["reward"] > 1.0
    counts = {}
    for r in rows:
        counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
    assert max(counts.values()) <= 2  # max_per_prompt
    assert len({r["id"] for r in rows}) == len(rows)


def test_distill_resumes_without_duplicates(memorised, tmp_path):
    root, _ = memorised
    full = distill(config(root, tmp_path / "full.jsonl"), progress=False).read_text()
    path = tmp_path / "cut.jsonl"
    first = distill(config(root, path, n_prompts=2), progress=False).read_text()
    with open(path, "a") as f:  # a torn line, as after a kill mid-write
        f.write('{"id": "add:9:gre')
    again = distill(config(root, path), progress=False).read_text()
    assert again.startswith(first)
    assert sorted(again.splitlines()) == sorted(full.splitlines())
    assert distill(config(root, path), progress=False).read_text() == again  # nothing left to do


def test_caps_per_task(memorised, tmp_path):
    root, _ = memorised
    rows = distill(config(root, tmp_path / "cap.jsonl", max_per_task=1), progress=False).read_text().splitlines()
    assert len(rows) == 1
