"""All 8 pipeline stages of a copy of the real recipe (recipes/qwen2.5-0.5b.yaml) on a real-shaped
tiny model: a random Qwen2ForCausalLM (hidden 64, 2 layers) with a byte-level BPE tokenizer and a
ChatML chat template, on the five benchmarks in their published layouts (GSM8K JSONL, AI2 ARC JSONL,
MedQA US 4-option JSONL, CoLA raw TSV, Google BoolQ JSONL), train and test files each. Only the step
counts, sizes and token budgets are cut; everything else (chat template on, rank, scheduler, STE,
mixed GSM8K+BoolQ protocol, split by stage) is the recipe's own code path.

A random model never answers correctly, and distillation keeps only verified traces (the pipeline
then stops, naming the tasks: tested below), so the base first memorises a short JSON answer to each
train prompt, as the chat template renders it, and the greedy traces verify."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from loramix.chat import render_prompt
from loramix.errors import LoramixError
from loramix.pipeline import ADAPTER_METHODS, MIXTURE_METHODS, STAGES, Pipeline, run_pipeline
from loramix.recipe import load_recipe
from loramix.tasks.format import format_completion
from loramix.tasks.mixed import mixed_examples
from loramix.tasks.splits import build_task

from conftest import bpe_chat_tokenizer

ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes" / "qwen2.5-0.5b.yaml"
DATA = Path(__file__).parent / "fixtures" / "benchmarks" / "real_shape"
FILES = {"gsm8k": ("gsm8k_train.jsonl", "gsm8k_test.jsonl"), "arc": ("arc_train.jsonl", "arc_test.jsonl"),
         "medqa": ("medqa_train.jsonl", "medqa_test.jsonl"),
         "cola": ("cola_in_domain_train.tsv", "cola_in_domain_dev.tsv"),
         "boolq": ("boolq_train.jsonl", "boolq_dev.jsonl")}
TASKS = ("gsm8k", "arc", "medqa", "cola", "boolq")
N_EVAL, MIXED_N, N_PROMPTS, UNSURE, BUDGET = 2, 2, 2, 2, 16
USER_MARK = "<|im_start|>user\n"


def task_kwargs() -> dict[str, dict[str, str]]:
    return {t: {"train": str(DATA / train), "test": str(DATA / test)} for t, (train, test) in FILES.items()}


def short_answer(answer: str) -> str:
    """What the base memorises for a train prompt: a one-word think block and the JSON answer, a
    trace distillation verifies, within the 16-token budget."""
    return format_completion("recall", answer)


def real_shape_base(folder: Path, *, memorise: int = 0, steps: int = 200) -> Path:
    """A tiny random Qwen2 (hidden 64, 2 layers, tied embeddings as in Qwen2.5-0.5B) with a BPE chat
    tokenizer trained on every prompt and answer of the fixtures, saved at ``folder``. ``memorise``:
    first trained to answer the first ``memorise`` train prompts of each task (rendered by the chat
    template) with their short answer and ``<|im_end|>``, so that greedy decoding verifies on them,
    and the next ``UNSURE`` train prompts with their answer and a wrong one alike, so that GRPO's
    sampled groups on them disagree (a group that agrees has no advantage: the LoRA would not move)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = task_kwargs()
    tasks = {t: build_task(t, kwargs) for t in TASKS}
    texts = []
    for t, task in tasks.items():
        for ex in task.examples("train") + task.examples("test"):
            texts += [ex.prompt, task.reference_completion(ex), short_answer(ex.answer)]
    for split in ("train", "test"):
        texts += [ex.prompt for ex in mixed_examples(tasks["gsm8k"], tasks["boolq"], split, 4, seed=1)]
    tok = bpe_chat_tokenizer(texts)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None))
    if memorise:
        rows = []
        for task in tasks.values():
            exs = task.examples("train")
            for i, ex in enumerate(exs[:memorise + UNSURE]):
                prompt = tok(render_prompt(tok, ex.prompt), add_special_tokens=False)["input_ids"]
                wrong = next((e.answer for e in exs if e.answer != ex.answer), "none")
                for answer in [ex.answer] if i < memorise else [ex.answer, wrong]:
                    ids = tok(short_answer(answer) + tok.eos_token, add_special_tokens=False)["input_ids"]
                    rows.append((prompt + ids, [-100] * len(prompt) + ids))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        mask = (torch.arange(width)[None] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(steps):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def real_recipe(base: Path, name: str = "real-shape"):
    """recipes/qwen2.5-0.5b.yaml with the tiny base, the fixture files, and steps and sizes cut to 1-2."""
    r = load_recipe(RECIPE)
    return dataclasses.replace(
        r, name=name, base=str(base), task_kwargs=task_kwargs(), max_length=512, seed=1, seeds=1,
        # one GRPO step over all n_train prompts, 8 generations each (the recipe's): groups on the
        # UNSURE prompts disagree, so every RL expert moves off LoRA B = 0 (identical experts are
        # refused by stage 3 as duplicates)
        expert=dataclasses.replace(r.expert, steps=1, sft_steps=1, batch_size=8 * (N_PROMPTS + UNSURE),
                                   n_train=N_PROMPTS + UNSURE,
                                   n_eval=2, max_completion_length=BUDGET),
        distill=dataclasses.replace(r.distill, n_prompts=N_PROMPTS, samples=1, max_new_tokens=BUDGET),
        router=dataclasses.replace(r.router, max_steps=1, batch_size=2),
        remix=dataclasses.replace(r.remix, samples=2, steps=1, batch_size=2),
        multitask=dataclasses.replace(r.multitask, steps=1, batch_size=2),
        evaluate=dataclasses.replace(r.evaluate, n=N_EVAL, batch_size=8, max_new_tokens=BUDGET, mixed_n=MIXED_N))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_shape")
    base = real_shape_base(root / "base", memorise=N_PROMPTS)
    recipe = real_recipe(base)
    report = run_pipeline(recipe, root / "runs", progress=False)
    return root, recipe, report


def test_the_recipe_copy_keeps_the_real_settings(real_run):
    _, recipe, _ = real_run
    real = load_recipe(RECIPE)
    assert recipe.tasks == list(TASKS) == real.tasks and recipe.chat_template is True
    assert recipe.evaluate.mixed_pairs == [["gsm8k", "boolq"]] == real.evaluate.mixed_pairs
    assert (recipe.expert.rank, recipe.expert.alpha, recipe.router.lr_scheduler_type, recipe.router.ste) == \
        (real.expert.rank, real.expert.alpha, real.router.lr_scheduler_type, real.router.ste)
    assert recipe.methods is None  # every method family


def test_every_stage_writes_its_output(real_run):
    root, recipe, report = real_run
    run = root / "runs" / recipe.name
    assert list(report["stage_seconds"]) == list(STAGES[:-1])
    for kind in ("rl", "sft"):  # stage 2
        for t in TASKS:
            folder = run / "experts" / kind / t
            assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["steps"] == 1, (kind, t)
            assert metrics["eval"]["before"]["sample"]["prompt"].startswith(USER_MARK), (kind, t)  # chat template
    # stage 3: greedy traces of the memorised train prompts verify; every trace is a train prompt
    traces = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    complete = json.loads((run / "traces.complete").read_text())
    assert set(complete["traces_per_task"]) == set(TASKS) and complete["mixed_references"] == 0
    assert sum(complete["traces_per_task"].values()) == len(traces)
    stage2 = (run / "traces_stage2.jsonl").read_text().splitlines()
    assert len(stage2) == len(traces)
    kwargs = task_kwargs()
    train = {t: {ex.prompt for ex in build_task(t, kwargs).examples("train")} for t in TASKS}
    test = {t: {ex.prompt for ex in build_task(t, kwargs).examples("test")} for t in TASKS}
    for row in traces:
        assert row["prompt"] in train[row["task"]] and not row["prompt"].startswith(USER_MARK), row
    for name in (*MIXTURE_METHODS, *ADAPTER_METHODS):  # stages 4 and 5
        assert (run / "methods" / name).is_dir(), name
    pipe = Pipeline(recipe, root / "runs", progress=False)
    pipe.base = recipe.base
    for name in pipe.method_paths():  # stages 6 and 7
        ev = json.loads((run / "eval" / f"{name.replace(':', '_')}.json").read_text())
        assert ev["per_task"], name
    for name in pipe.mixed_runs():
        mixed = json.loads((run / "eval" / f"mixed_{name}.json").read_text())
        assert set(mixed["per_task"]) == {"gsm8k+boolq"}, name
    # evaluation read the test files, rendered by the chat template (prompts stored raw)
    base_eval = json.loads((run / "eval" / "base.json").read_text())
    assert base_eval["config"]["chat_template"] is True
    for t in TASKS:
        assert base_eval["samples"][t] and all(s["prompt"] in test[t] for s in base_eval["samples"][t]), t
    assert (run / "report.md").read_text().startswith(f"# loramix report: {recipe.name}")  # stage 8


def test_report_json_is_complete(real_run):
    root, recipe, report = real_run
    on_disk = json.loads((root / "runs" / recipe.name / "report.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(report["methods"]))
    expected = {"base", "oracle", "mor_lora_hard", "mor_lora_hard_chosen", "soft", "topk2_norm", "gumbel",
                "merge_linear", "merge_ties", "merge_dare", "multitask_lora", "prompt_router", "prompt_router_fair",
                "remix", "mixlora_topk", "soft_trainable", "single_lora_same_active",
                *(f"expert_rl:{t}" for t in TASKS), *(f"expert_sft:{t}" for t in TASKS)}
    assert set(on_disk["methods"]) == expected
    assert on_disk["n_eval"] == {t: N_EVAL for t in TASKS}
    for name, m in on_disk["methods"].items():
        assert m["seeds"] == 1 and isinstance(m["trainable_parameters"], int), name
        if name.startswith("expert_sft:"):  # scored on its own domain only
            own = name.partition(":")[2]
            assert [t for t, a in m["accuracy"].items() if a is not None] == [own], name
            continue
        assert set(m["accuracy"]) == set(TASKS) and all(0 <= a <= 1 for a in m["accuracy"].values()), name
        assert m["average"] == pytest.approx(sum(m["accuracy"].values()) / len(TASKS)), name
    assert set(on_disk["mixed"]) == {"gsm8k+boolq"}
    assert set(on_disk["mixed"]["gsm8k+boolq"]) == {"base", "segment_oracle", "mor_lora_hard", "prompt_router",
                                                     "prompt_router_fair"}
    for name, c in on_disk["mixed"]["gsm8k+boolq"].items():
        assert c["n"] == MIXED_N and 0 <= c["accuracy"] <= 1 and c["ci"][0] <= c["accuracy"] <= c["ci"][1], name
    assert on_disk["preconditions"] and on_disk["targets"]
    for row in on_disk["preconditions"] + on_disk["targets"]:
        assert set(row) >= {"name", "value", "ci", "threshold", "verdict"}
        assert row["verdict"] in ("met", "not met", "undecided"), row
    assert any(r["name"].startswith("gsm8k: RL expert beats the base") for r in on_disk["preconditions"])


def test_distill_stops_clearly_when_no_trace_verifies(real_run, tmp_path):
    """An untrained base (same shape and tokenizer) under the trained experts answers nothing right:
    stage 3 refuses to go on, naming the tasks, instead of training routers on nothing."""
    root, recipe, _ = real_run
    base = real_shape_base(tmp_path / "random", memorise=0)
    shutil.copytree(root / "runs" / recipe.name / "experts", tmp_path / "runs" / "random" / "experts")
    pipe = Pipeline(real_recipe(base, name="random"), tmp_path / "runs", progress=False)
    pipe.build_base()
    with pytest.raises(LoramixError, match=r"no verified traces for \['gsm8k', 'arc', 'medqa', 'cola', 'boolq'\]"):
        pipe.distill()
    assert not (tmp_path / "runs" / "random" / "traces.complete").exists()
