"""Mixed-domain prompts of two benchmarks (the authors' GSM8K + BoolQ protocol): one merged template
naming one answer key per domain, random order fixed by the seed, joint and per-part scoring, the
segments the segment oracle routes by, no mixed traces in the real recipes' training, and the
prompt-level baseline routing a whole mixed prompt to one expert."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from loramix.errors import LoramixError
from loramix.evaluate import score_completions
from loramix.tasks import get_task
from loramix.tasks.benchmarks.base import INSTRUCTION
from loramix.tasks.mixed import (MixedTask, mixed_answers, prompt_segments, prompt_token_segments,
                                 resolve_task)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
REAL_RECIPES = ("qwen2.5-0.5b.yaml", "qwen2.5-1.5b.yaml", "llama-3.2-3b.yaml")


def _pair(a: str = "gsm8k", b: str = "boolq") -> MixedTask:
    return MixedTask(get_task(a, test=FIXTURES / f"{a}.jsonl"), get_task(b, test=FIXTURES / f"{b}.jsonl"))


def _completion(answers: dict) -> str:
    return "<think>3*1200=3600; 3600-500=3100. The passage says a quarter.</think>\n" + json.dumps(answers)


def _span(ex, part) -> tuple[int, int]:
    """Where a part's question text stands in the merged prompt (it appears there exactly once)."""
    text = get_task(part.task).question_text(part)
    at = ex.prompt.index(text)
    assert ex.prompt.count(text) == 1
    return at, at + len(text)


# --- the merged template --------------------------------------------------------------------------


def test_merged_prompt_has_one_instruction_naming_both_keys():
    task = _pair()
    exs = task.examples("test", 10, seed=0)
    assert len(exs) == 2  # as many as the smaller draw (the GSM8K fixture has 2 rows)
    for ex in exs:
        first, second = ex.order
        keys = [f"{first.task}_answer", f"{second.task}_answer"]
        assert tuple(keys) == ex.keys
        # no single-key instruction: neither a part's INSTRUCTION nor an "answer" key
        assert INSTRUCTION not in ex.prompt and '"answer"' not in ex.prompt
        assert ex.prompt.count("<think></think>") == 1
        naming = [line for line in ex.prompt.splitlines() if any(k in line for k in keys)]
        assert len(naming) == 1 and naming[0].index(keys[0]) < naming[0].index(keys[1])  # in prompt order
        assert naming[0].startswith("Think through both tasks step by step inside <think></think>")
        # the instruction stands before the questions (the authors' layout), each question once
        (a0, a1), (b0, b1) = _span(ex, first), _span(ex, second)
        assert ex.prompt.index(naming[0]) < a0 < a1 <= b0 < b1 == len(ex.prompt)
        # each task's own line is kept (its answer format), without its INSTRUCTION
        assert f"1. {get_task(first.task).task_line(first)}\n" in ex.prompt
        assert f"2. {get_task(second.task).task_line(second)}\n" in ex.prompt
    # the parts are the fixture rows, and their gold answers sit under their keys
    golds = {json.loads(ex.answer)["gsm8k_answer"] for ex in exs}
    assert golds == {"3100", "4"}
    assert all(json.loads(ex.answer)["boolq_answer"] in ("true", "false") for ex in exs)


def test_order_is_random_but_fixed_by_the_seed():
    task = _pair()
    runs = {seed: [(ex.prompt, ex.swapped) for ex in task.examples("test", 2, seed=seed)] for seed in range(12)}
    assert all(runs[s] == [(ex.prompt, ex.swapped) for ex in _pair().examples("test", 2, seed=s)] for s in (0, 5))
    swaps = [sw for r in runs.values() for _, sw in r]
    assert True in swaps and False in swaps  # both orders occur
    for ex in _pair().examples("test", 2, seed=3):
        first = ex.order[0]
        task_line = get_task(first.task).task_line(first)
        assert ex.prompt.splitlines()[2] == f"1. {task_line}"  # the first-listed task is the first part
    assert len({tuple(p for p, _ in r) for r in runs.values()}) > 1  # the seed also draws the rows


def test_benchmark_mixes_only_with_a_benchmark_and_synthetic_pairs_keep_their_format():
    with pytest.raises(LoramixError, match="mixes only with another benchmark"):
        MixedTask(get_task("gsm8k", test=FIXTURES / "gsm8k.jsonl"), "add")
    with pytest.raises(LoramixError, match="mixes only with another benchmark"):
        resolve_task("add+boolq")
    ex = MixedTask("add", "bool").examples("test", 3, seed=0)[0]
    first, second = ex.order
    assert ex.prompt == first.prompt + second.prompt + f"keys: {first.task}_answer {second.task}_answer\n"
    assert ex.pieces == ()


def test_any_two_benchmarks_merge():
    task = _pair("arc", "cola")
    for ex in task.examples("test", 3, seed=1):
        assert INSTRUCTION not in ex.prompt and "arc_answer" in ex.prompt and "cola_answer" in ex.prompt
        assert "A. " in ex.prompt and "Sentence: " in ex.prompt
    from loramix.tasks import Example

    with pytest.raises(LoramixError, match="not a benchmark prompt"):
        get_task("gsm8k").question_text(Example("add: 1+2\n", "3", task="gsm8k"))


# --- scoring --------------------------------------------------------------------------------------


def test_hand_written_completions_are_scored_jointly_and_per_part():
    task = _pair()
    ex = next(e for e in task.examples("test", 2, seed=0) if e.a.answer == "3100")
    bool_gold = ex.b.answer
    wrong_bool = "false" if bool_gold == "true" else "true"
    both = _completion({"gsm8k_answer": "3,100", "boolq_answer": bool_gold.capitalize()})
    one = _completion({"boolq_answer": wrong_bool, "gsm8k_answer": "3100"})
    single_key = _completion({"answer": "3100"})  # the single-task format: no key of the pair
    no_think = json.dumps({"gsm8k_answer": "3100", "boolq_answer": bool_gold})
    assert mixed_answers(both, task.keys) == ("3,100", bool_gold.capitalize())
    assert task.part_correct(both, ex) == (True, True) and task.is_correct(both, ex) and task.is_formatted(both)
    assert task.part_correct(one, ex) == (True, False) and not task.is_correct(one, ex)
    assert task.part_correct(single_key, ex) == (False, False) and not task.is_formatted(single_key)
    assert task.is_correct(no_think, ex) and not task.is_formatted(no_think)  # right answers, no think block
    m = score_completions(task, [ex] * 4, [both, one, single_key, no_think])
    assert m["outcomes"] == [1, 0, 0, 1] and m["accuracy"] == 0.5 and m["format_rate"] == 0.5
    assert m["part_accuracy"] == {"gsm8k": 0.75, "boolq": 0.5}


# --- segments (the segment oracle's ground truth) ---------------------------------------------------


def test_segments_cover_the_merged_prompt():
    task = _pair()
    for seed in range(4):
        for ex in task.examples("test", 2, seed=seed):
            labels = prompt_segments(ex)
            assert len(labels) == len(ex.prompt)
            first, second = ex.order
            for j, part in enumerate((first, second)):
                a, b = _span(ex, part)
                assert set(labels[a:b]) == {j}, (seed, j)  # every character of a question is its part's
            line2 = ex.prompt.index("\n2. ") + 1
            assert labels[0] == 0 and labels[line2] == 1  # header: first part; each numbered line its own
            instr = ex.prompt.index("Think through both")
            key2_end = ex.prompt.index(ex.keys[1], instr) + len(ex.keys[1])
            assert labels[key2_end - 2] == 0 and labels[key2_end - 1] == 1  # keyed as the keys: line


def test_token_segments_follow_the_questions_with_a_subword_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    task = _pair()
    exs = [ex for seed in range(3) for ex in task.examples("test", 2, seed=seed)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([ex.prompt for ex in exs], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    for ex in exs:
        ids = tok(ex.prompt, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == ex.prompt and len(ids) < len(ex.prompt) / 2  # real multi-character tokens
        parts = prompt_token_segments(ex, tok, ids)
        assert len(parts) == len(ids)
        end = 0
        for t, label in zip(ids, parts):
            start, end = end, end + len(tok.decode([t]))
            for j, part in enumerate(ex.order):
                a, b = _span(ex, part)
                if a <= start and end <= b:  # a token inside a question belongs to that question's part
                    assert label == j
        assert parts[-1] == 1 and parts[0] == 0


# --- training and the prompt-level baseline ---------------------------------------------------------


def test_real_recipes_evaluate_gsm8k_boolq_and_train_on_no_mixed_traces():
    from loramix.recipe import load_recipe

    import yaml

    real = [(path.name, load_recipe(path)) for path in sorted((ROOT / "recipes").glob("*.yaml"))
            if "gsm8k" in (yaml.safe_load(path.read_text()).get("tasks") or [])]  # the real-model recipes
    assert set(REAL_RECIPES) <= {name for name, _ in real}
    for name, recipe in real:
        assert ["gsm8k", "boolq"] in recipe.evaluate.mixed_pairs, name
        assert recipe.distill.mixed_references == 0, name


def test_pipeline_adds_mixed_traces_only_when_asked(tmp_path):
    from loramix.pipeline import Pipeline
    from loramix.recipe import load_recipe

    train = {"gsm8k": {"question": "Ben has 2 apples and buys 5. How many now?", "answer": "2+5=7\n#### 7"},
             "boolq": {"question": "is the sky green", "passage": "The sky is blue on a clear day.", "answer": False}}
    kwargs = {}
    for name, row in train.items():
        (tmp_path / f"{name}_train.jsonl").write_text(json.dumps(row) + "\n")
        kwargs[name] = {"train": str(tmp_path / f"{name}_train.jsonl"), "test": str(FIXTURES / f"{name}.jsonl")}
    recipe = dataclasses.replace(load_recipe(ROOT / "recipes" / "qwen2.5-0.5b.yaml"), task_kwargs=kwargs)
    assert Pipeline(recipe, tmp_path / "runs", progress=False)._mixed_references() == []
    asked = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, mixed_references=3))
    rows = Pipeline(asked, tmp_path / "runs", progress=False)._mixed_references()
    assert len(rows) == 1 and rows[0]["task"] == "gsm8k+boolq"  # one train row each
    assert INSTRUCTION not in rows[0]["prompt"] and "gsm8k_answer" in rows[0]["prompt"]


class _FixedClassifier:
    """A stand-in prompt classifier: the expert is picked from the prompt's text, so one decision
    covers the whole (mixed) prompt, as the authors' classification baseline does."""

    def __init__(self):
        self.seen: list[str] = []

    def predict(self, model, tokenizer, prompts, batch_size=32):
        self.seen += list(prompts)
        return [0 if "Passage:" in p.split("Task 1:")[-1].split("Task 2:")[0] else 1 for p in prompts]


def test_prompt_level_baseline_routes_a_whole_mixed_prompt_to_one_expert(tmp_path, monkeypatch):
    from conftest import make_adapter

    from transformers import LlamaForCausalLM

    from loramix.base_model import build_tokenizer, llama_config
    from loramix.evaluate import evaluate_model
    from loramix.mixture import compose
    from loramix.tasks import registry

    for name in ("gsm8k", "boolq"):  # the fixtures as these tasks' data, for evaluate_model's names
        info = registry._REGISTRY[name]
        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(
            info, factory=lambda cls=info.factory, f=FIXTURES / f"{name}.jsonl", **kw: cls(**{"test": f, **kw})))
    torch.manual_seed(0)  # a tiny random Llama whose context holds a merged prompt (~600 characters)
    model, tok = LlamaForCausalLM(llama_config(32, 1, heads=1, max_positions=1024)).eval(), build_tokenizer()
    tok.model_max_length = 1024
    experts = [make_adapter(model, tmp_path / f"e{i}", r=2, alpha=4, seed=i) for i in range(2)]
    mixture = compose(model, experts, router="hard")
    classifier = _FixedClassifier()
    mixture.prompt_router = classifier  # as load_for_eval attaches a trained one
    rep = evaluate_model(mixture, tok, ["gsm8k+boolq"], n=2, max_new_tokens=3, batch_size=2,
                         collect_routing=True, chat_template=False)
    assert rep.config["routing"] == "prompt" and "part_accuracy" in rep.per_task["gsm8k+boolq"]
    exs = _pair().examples("test", 2, seed=0)
    assert sorted(classifier.seen) == sorted(ex.prompt for ex in exs)  # each whole merged prompt, once
    records = rep.routing["gsm8k+boolq"]
    assert len(records) == 2
    for r in records:
        want = 0 if exs[r.example].order[0].task == "boolq" else 1
        assert set(r.expert_ids.unique().tolist()) == {want}  # every token, prompt and completion
        assert set(r.token_task) == {"gsm8k", "boolq"}  # while its tokens belong to two domains
