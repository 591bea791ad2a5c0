"""loramix.evaluate: scoring, mixed prompts, loading every model kind, routing modes and the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from loramix.errors import LoramixError
from loramix.evaluate import (MixedTask, evaluate_model, load_for_eval, mixed_answers, mixed_examples,
                              mixed_reference_completion, parse_expert_pairs, parse_tasks, resolve_expert_map,
                              score_completions)
from loramix.generation import Completion
from loramix.tasks import format_completion, get_task

MLP = ["gate_proj", "up_proj", "down_proj"]
ROOT = Path(__file__).resolve().parents[1]


def build_models(root: Path, routers=("hard",)) -> dict:
    """A tiny random Llama (hidden 32) saved with its tokenizer, two PEFT adapters named after tasks
    (add, sort) and one mixture folder per router."""
    from peft import LoraConfig, get_peft_model

    from loramix.base_model import tiny_random_llama
    from loramix.mixture import compose

    model, tok = tiny_random_llama(hidden=32, layers=2)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    paths = {"base": base}
    for i, name in enumerate(["add", "sort"]):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
            r=2, lora_alpha=4, init_lora_weights=False, target_modules=MLP))
        peft_model.save_pretrained(root / name)
        paths[name] = root / name
    for router in routers:
        fresh, _ = tiny_random_llama(hidden=32, layers=2)
        compose(fresh, [paths["add"], paths["sort"]], router=router, seed=0).save_pretrained(root / f"mix_{router}")
        paths[f"mix_{router}"] = root / f"mix_{router}"
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("eval_models"))


# --- scoring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["add", "sort", "bool", "mod", "strings"])
def test_reference_completions_score_one_and_wrong_ones_zero(name):
    task = get_task(name)
    exs = task.examples("test", 6, seed=3, difficulty="hard")
    refs = [task.reference_completion(e) for e in exs]
    m = score_completions(task, exs, refs)
    assert m["accuracy"] == 1.0 and m["format_rate"] == 1.0 and m["n"] == 6 and m["mean_length"] is None
    wrong = [format_completion(e.reasoning, e.answer + "7") for e in exs]
    m = score_completions(name, exs, wrong)
    assert m["accuracy"] == 0.0 and m["format_rate"] == 1.0
    m = score_completions(task, exs, [e.answer for e in exs])  # right answer, no format
    assert m["format_rate"] == 0.0


def test_score_completions_lengths_and_lists():
    task = get_task("add")
    exs = task.examples("test", 2, seed=0)
    c = [[Completion(task.reference_completion(exs[0]), True, 10), Completion("nope", False, 4)],
         [Completion(task.reference_completion(exs[1]), True, 6)]]
    m = score_completions(task, exs, c)
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3) and m["mean_length"] == pytest.approx(20 / 3)
    assert m["finished_rate"] == pytest.approx(2 / 3)
    with pytest.raises(LoramixError):
        score_completions(task, exs, ["x"])


# --- mixed prompts ----------------------------------------------------------------------------------


def test_mixed_examples_and_reference_verify():
    exs = mixed_examples("add", "bool", "test", 20, seed=1, difficulty="hard")
    assert len(exs) == 20 and exs[0].task == "add+bool"
    assert {ex.swapped for ex in exs} == {False, True}  # the order is drawn per example
    for ex in exs:
        first, second = ex.order
        assert ex.prompt == first.prompt + second.prompt + f"keys: {first.task}_answer {second.task}_answer\n"
    task = MixedTask("add", "bool")
    for ex in exs:
        ref = mixed_reference_completion(ex)
        assert ref.startswith("<think>") and "</think>\n{" in ref
        assert list(json.loads(ref.split("</think>\n")[1])) == list(ex.keys)  # keys in prompt order
        assert mixed_answers(ref, task.keys) == (ex.a.answer, ex.b.answer)
        assert task.is_correct(ref, ex) and task.is_formatted(ref)
    m = score_completions(task, exs, [mixed_reference_completion(e) for e in exs])
    assert m["accuracy"] == 1.0 and m["format_rate"] == 1.0 and m["part_accuracy"] == {"add": 1.0, "bool": 1.0}
    assert m["outcomes"] == [1] * 20
    with pytest.raises(LoramixError, match="two different tasks"):
        MixedTask("add", "add")


def test_mixed_swapped_or_wrong_answer_fails():
    exs = mixed_examples("add", "sort", "test", 4, seed=0)
    task = MixedTask("add", "sort")
    ex = exs[0]
    swapped = '<think>x</think>\n' + json.dumps({"add_answer": ex.b.answer, "sort_answer": ex.a.answer})
    assert not task.is_correct(swapped, ex) and task.part_correct(swapped, ex) == (False, False)
    half = '<think>x</think>\n' + json.dumps({"sort_answer": ex.b.answer + " 1", "add_answer": ex.a.answer})
    assert task.part_correct(half, ex) == (True, False) and not task.is_correct(half, ex)
    only_one = '<think>x</think>\n' + json.dumps({"add_answer": ex.a.answer})
    assert not task.is_formatted(only_one) and task.part_correct(only_one, ex) == (True, False)
    unnamed = '<think>x</think>\n' + json.dumps({"answer1": ex.a.answer, "answer2": ex.b.answer})
    assert task.part_correct(unnamed, ex) == (False, False) and not task.is_formatted(unnamed)
    m = score_completions(task, [ex, exs[1]], [half, mixed_reference_completion(exs[1])])
    assert m["accuracy"] == 0.5 and m["part_accuracy"] == {"add": 1.0, "sort": 0.5} and m["outcomes"] == [0, 1]


def test_mixed_segments_follow_the_sub_questions():
    from loramix.tasks.mixed import completion_segments, prompt_segments, segment_at

    ex = next(e for e in mixed_examples("add", "bool", "test", 10, seed=0) if not e.swapped)
    labels = prompt_segments(ex)
    assert len(labels) == len(ex.prompt)
    n_a = len(ex.a.prompt)
    assert set(labels[:n_a]) == {0} and set(labels[n_a:n_a + len(ex.b.prompt)]) == {1}
    keys_line = ex.prompt[n_a + len(ex.b.prompt):]  # "keys: add_answer bool_answer\n"
    assert labels[-1] == 1 and labels[n_a + len(ex.b.prompt) + keys_line.index("add_answer") + 9] == 0
    ref = mixed_reference_completion(ex)
    seg = completion_segments(ref, ex.keys)
    sep, close = ref.index(";"), ref.index("</think>")
    assert set(seg[:sep]) == {0} and set(seg[sep:close + 8]) == {1}
    tail = ref[close + 8:]
    after_a = close + 8 + tail.index("add_answer") + len("add_answer")
    after_b = close + 8 + tail.index("bool_answer") + len("bool_answer")
    assert seg[after_a - 1] == 0 and seg[after_b - 1] == 1 and seg[-1] == 1
    # unfinished text: the part is decided by what has been written so far
    assert segment_at("<think>1+2", 8, ex.keys) == 0 and segment_at("<think>1+2;T", 11, ex.keys) == 1


def test_mixed_task_to_dataset_shape():
    from loramix.tasks import examples_to_dataset

    task = MixedTask("mod", "strings")
    ds = examples_to_dataset(task, task.examples("train", 3, seed=0))
    assert ds.column_names == ["prompt", "answer", "task", "completion"] and ds[0]["task"] == "mod+strings"
    assert set(json.loads(ds[0]["answer"])) == {"mod_answer", "strings_answer"}


def test_parse_tasks_and_expert_maps():
    assert parse_tasks(["add,sort", "bool"]) == ["add", "sort", "bool"]
    assert parse_tasks(["add,sort,bool"], mixed=True) == ["add+sort", "add+bool", "sort+bool"]
    assert parse_tasks(["add+bool"]) == ["add+bool"]
    with pytest.raises(LoramixError):
        parse_tasks(["add"], mixed=True)
    with pytest.raises(LoramixError, match="unknown task"):
        evaluate_model(None, None, ["nosuchtask"])
    assert parse_expert_pairs(["add=1", "sort=e0,bool=0"]) == {"add": "1", "sort": "e0", "bool": "0"}
    with pytest.raises(LoramixError, match="TASK=INDEX"):
        parse_expert_pairs(["add"])
    names = ["add", "e_sort"]
    assert resolve_expert_map(names, ["add", "sort"], {"sort": "e_sort"}) == {"add": 0, "sort": 1}
    assert resolve_expert_map(names, ["add+sort"], {"sort": "1"}) == {"add": 0, "sort": 1}
    assert resolve_expert_map(names, ["sort"]) is None
    with pytest.raises(LoramixError, match="--expert-for"):
        resolve_expert_map(names, ["sort"], required=True)
    with pytest.raises(LoramixError, match="outside"):
        resolve_expert_map(names, ["add"], {"add": "5"})


# --- the pipeline on a model whose generations are known --------------------------------------------


class OracleLM(nn.Module):
    """A fake causal LM: ``generate`` appends the reference completion (then EOS) of each prompt."""

    def __init__(self, tok, answers: dict[str, str]):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.tok, self.answers = tok, answers

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()].tolist())
            new = self.tok(self.answers[prompt], add_special_tokens=False)["input_ids"][:max_new_tokens - 1]
            rows.append(new + [eos_token_id])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_evaluate_model_on_known_generations():
    from loramix.base_model import build_tokenizer

    tok = build_tokenizer()
    answers = {}
    for name in ("add", "bool"):
        task = get_task(name)
        for e in task.examples("test", 5, seed=0, difficulty="hard"):
            answers[e.prompt] = task.reference_completion(e)
    mixed = MixedTask("add", "bool")
    for e in mixed.examples("test", 5, seed=0, difficulty="hard"):
        answers[e.prompt] = mixed_reference_completion(e)
    report = evaluate_model(OracleLM(tok, answers), tok, ["add", "bool", "add+bool"], n=5, batch_size=2,
                            difficulty="hard")
    for name, m in report.per_task.items():
        assert m["accuracy"] == 1.0 and m["format_rate"] == 1.0 and m["finished_rate"] == 1.0, name
    ex = get_task("add").examples("test", 5, seed=0)
    assert report.per_task["add"]["mean_length"] == pytest.approx(
        sum(len(get_task("add").reference_completion(e)) for e in ex) / 5)
    assert report.per_task["add+bool"]["part_accuracy"] == {"add": 1.0, "bool": 1.0}
    assert report.average["accuracy"] == 1.0
    # the same fake model truncated by max_new_tokens: answers cut off, so nothing is right
    short = evaluate_model(OracleLM(tok, answers), tok, ["add"], n=5, max_new_tokens=10, difficulty="hard")
    assert short.per_task["add"]["accuracy"] == 0.0 and short.per_task["add"]["format_rate"] == 0.0


# --- real tiny models --------------------------------------------------------------------------------


KEYS = {"accuracy", "format_rate", "mean_length", "n", "finished_rate"}


def _check(report, tasks, n):
    assert list(report.per_task) == tasks
    for m in report.per_task.values():
        assert KEYS <= set(m) and 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["format_rate"] <= 1.0
        assert m["n"] == n and 0 < m["mean_length"] <= report.config["max_new_tokens"]
    json.dumps(report.to_dict())


def test_load_and_evaluate_base_folder(models):
    model, tok, kind = load_for_eval(models["base"])
    assert kind == "hf" and tok.padding_side == "left"
    _check(evaluate_model(model, tok, ["add", "sort"], n=3, max_new_tokens=6), ["add", "sort"], 3)


def test_load_and_evaluate_peft_folder(models):
    from peft import PeftModel

    model, tok, kind = load_for_eval(models["add"], str(models["base"]))
    assert kind == "peft" and isinstance(model, PeftModel)
    _check(evaluate_model(model, tok, ["add"], n=2, max_new_tokens=6), ["add"], 2)
    with pytest.raises(LoramixError, match="needs a loramix mixture"):
        evaluate_model(model, tok, ["add"], n=2, routing="oracle")


def test_load_and_evaluate_mixture_folder(models):
    from loramix.mixture import MixtureModel

    model, tok, kind = load_for_eval(models["mix_hard"], str(models["base"]))
    assert kind == "mixture" and isinstance(model, MixtureModel) and model.expert_names == ["add", "sort"]
    report = evaluate_model(model, tok, ["add", "sort"], n=3, max_new_tokens=6, collect_routing=True)
    _check(report, ["add", "sort"], 3)
    rec = report.routing["add"][0]
    prompt = get_task("add").examples("test", 3, seed=0, difficulty=report.config["difficulty"])[0].prompt
    # the record holds exactly the prompt's tokens, then the fed completion tokens: no padding
    assert rec.token_ids[:rec.n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    completion = report.samples["add"][0]["completion"]
    assert completion.startswith(tok.decode(rec.token_ids[rec.n_prompt:]))
    assert len(rec.token_ids) - rec.n_prompt in (len(tok(completion)["input_ids"]) - 1,
                                                 len(tok(completion)["input_ids"]))
    assert rec.expert_ids.shape == (2, len(rec.token_ids), 1) and rec.probs.shape == (2, len(rec.token_ids), 2)


def test_mixture_routing_modes(models):
    model, tok, _ = load_for_eval(models["mix_hard"], str(models["base"]))
    rep = evaluate_model(model, tok, ["add", "sort"], n=3, max_new_tokens=5, routing="oracle",
                         expert_for_task={"add": 1, "sort": 0}, collect_routing=True)
    assert all(bool((r.expert_ids == 1).all()) for r in rep.routing["add"])
    assert all(bool((r.expert_ids == 0).all()) for r in rep.routing["sort"])
    rep = evaluate_model(model, tok, ["add", "sort"], n=3, max_new_tokens=5, routing="prompt",
                         mixed=True, collect_routing=True)
    assert list(rep.per_task) == ["add+sort"] and "part_accuracy" in rep.per_task["add+sort"]
    examples = mixed_examples("add", "sort", "test", 3, seed=0, difficulty="hard")
    for r in rep.routing["add+sort"]:  # one expert for the whole sequence
        assert r.expert_ids.unique().numel() == 1
        first, second = examples[r.example].order
        assert r.token_task[0] == first.task and r.token_task[len(first.prompt)] == second.task
        assert r.token_task[r.n_prompt - 1] == second.task and len(r.token_task) == len(r.token_ids)
    # the segment oracle: each token, of the prompt and of the generated completion, goes to the
    # expert of the part it belongs to, decided while generating; checked against the labels the
    # analysis computes afterwards from the finished text
    emap = {"add": 1, "sort": 0}
    rep = evaluate_model(model, tok, ["add+sort", "add"], n=6, max_new_tokens=12, routing="segment",
                         expert_for_task=emap, collect_routing=True)
    seen = set()
    for r in rep.routing["add+sort"]:
        want = torch.tensor([emap[t] for t in r.token_task])
        assert torch.equal(r.expert_ids[..., 0], want.expand_as(r.expert_ids[..., 0]))
        seen |= set(want.tolist())
    assert seen == {0, 1}
    assert all(bool((r.expert_ids == 1).all()) for r in rep.routing["add"])  # one domain: the oracle
    with pytest.raises(LoramixError, match="no expert"):
        evaluate_model(model, tok, ["add+bool"], n=1, routing="segment", expert_for_task=emap)
    with pytest.raises(LoramixError, match="routing mode"):
        evaluate_model(model, tok, ["add"], n=1, routing="bogus")


def test_load_for_eval_errors(models, tmp_path):
    with pytest.raises(LoramixError, match="not found"):
        load_for_eval(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoramixError, match="not a model"):
        load_for_eval(tmp_path / "empty")
    moved = tmp_path / "mix"
    cfg = json.loads((models["mix_hard"] / "mixture_config.json").read_text())
    cfg["base_model"]["name_or_path"] = str(tmp_path / "gone")
    moved.mkdir()
    (moved / "mixture_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoramixError, match="needs --base"):
        load_for_eval(moved)


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_evaluate_writes_json(models, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", str(models["mix_hard"]), "--base", str(models["base"]),
                                   "--tasks", "add,sort", "--n", "2", "--max-new-tokens", "5", "--routing", "oracle",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data) == {"per_task", "average", "config", "samples"}
    assert set(data["per_task"]) == {"add", "sort"} and KEYS <= set(data["per_task"]["add"])
    assert data["config"]["kind"] == "mixture" and data["config"]["expert_for_task"] == {"add": 0, "sort": 1}
    assert "average" in res.output and not list(tmp_path.glob(".*tmp"))
    res = CliRunner().invoke(app, ["evaluate", str(models["base"]), "--tasks", "add", "--tasks", "bool",
                                   "--mixed", "--n", "2", "--max-new-tokens", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert list(json.loads(out.read_text())["per_task"]) == ["add+bool"]


def test_cli_evaluate_user_error_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("loramix")
    res = subprocess.run([str(exe), "evaluate", str(tmp_path / "nothing"), "--tasks", "add"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stdout and "not found" in res.stdout and "Traceback" not in res.stdout + res.stderr
