"""The five synthetic domains: reference traces verify, splits are disjoint, generation is
deterministic, difficulty sets the length, and everything fits the tiny model's context."""

import re
import string

import pytest

from loramix.errors import LoramixError
from loramix.tasks import SYNTHETIC_TASKS, get_task, split_of
from loramix.tasks.synthetic.add import add_trace
from loramix.tasks.synthetic.boolean import apply_op, bool_trace, render
from loramix.tasks.synthetic.mod import mod_trace
from loramix.tasks.synthetic.sort import sort_trace
from loramix.tasks.synthetic.strings import shift_letter, shift_trace

PRINTABLE = set(string.printable) - set("\t\r\x0b\x0c")
MAX_LEN = {"easy": 200, "hard": 320}


def test_synthetic_names_fixed_order():
    assert SYNTHETIC_TASKS == ("add", "sort", "bool", "mod", "strings")


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reference_completions_verify_and_score_max(name, difficulty):
    task = get_task(name)
    for ex in task.examples("train", 200, difficulty=difficulty):
        completion = task.reference_completion(ex)
        assert task.is_correct(completion, ex), (ex, completion)
        assert task.reward(completion, ex) == pytest.approx(task.reward_config.max)
        assert ex.prompt.startswith(f"{name}: ") and ex.prompt.endswith("\n") and ex.task == name
        assert set(ex.prompt + completion) <= PRINTABLE


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_wrong_answers_fail(name):
    task = get_task(name)
    for ex in task.examples("test", 50, difficulty="hard"):
        wrong = {"add": lambda a: str(int(a) + 1), "mod": lambda a: str(int(a) + 20),
                 "sort": lambda a: " ".join(reversed(a.split())) if len(set(a.split())) > 1 else a + " 1",
                 "bool": lambda a: "F" if a == "T" else "T", "strings": lambda a: a + "x"}[name](ex.answer)
        bad = task.reference_completion(ex).replace(f'"answer": "{ex.answer}"', f'"answer": "{wrong}"')
        assert not task.is_correct(bad, ex)
        assert task.reward(bad, ex) == pytest.approx(-0.9)  # wrong + think (exclusive bonuses)


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_splits_disjoint(name):
    task = get_task(name)
    prompts = {s: {e.prompt for e in task.examples(s, 300, difficulty="easy")} for s in
               ("train", "validation", "test")}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    for split, ps in prompts.items():
        assert all(split_of(p) == split for p in ps)
    # a different seed gives different problems, still in their split
    other = {e.prompt for e in task.examples("train", 50, seed=1, difficulty="easy")}
    assert other != set(list(prompts["train"])[:50]) and all(split_of(p) == "train" for p in other)


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_deterministic_and_prefix_stable(name):
    a = get_task(name).examples("train", 40, seed=3, difficulty="medium")
    b = get_task(name).examples("train", 40, seed=3, difficulty="medium")
    assert a == b
    assert get_task(name).examples("train", 10, seed=3, difficulty="medium") == a[:10]
    assert get_task(name).examples("train", 40, seed=4, difficulty="medium") != a
    assert get_task(name).examples("train", 40, seed=3, difficulty=2) == a  # int level alias



@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_lengths_fit_the_context(name):
    task = get_task(name)
    for difficulty, limit in MAX_LEN.items():
        lengths = [len(e.prompt) + len(task.reference_completion(e))
                   for e in task.examples("train", 500, difficulty=difficulty)]
        assert max(lengths) <= limit, (name, difficulty, max(lengths))
    easy = [len(e.prompt) for e in task.examples("train", 200, difficulty="easy")]
    hard = [len(e.prompt) for e in task.examples("train", 200, difficulty="hard")]
    assert max(easy) <= min(hard) + 3 and sum(hard) / len(hard) > sum(easy) / len(easy) + 3


def _size(name: str, prompt: str) -> int:
    body = prompt.split(": ", 1)[1].strip()
    return {"add": lambda: max(len(x) for x in body.split("+")), "sort": lambda: len(body.split()),
            "bool": lambda: len(re.split(r"[&|^~#@]", body)[0]), "mod": lambda: len(body.split("%")[0]),
            "strings": lambda: len(body.split()[1])}[name]()


@pytest.mark.parametrize("name, easy, hard", [
    ("add", (2, 3), (4, 6)), ("sort", (3, 5), (6, 8)), ("bool", (3, 5), (6, 8)),
    ("mod", (2, 3), (5, 7)), ("strings", (3, 5), (6, 9)),
])
def test_difficulty_ranges(name, easy, hard):
    task = get_task(name)
    for difficulty, (lo, hi) in (("easy", easy), ("hard", hard)):
        sizes = {_size(name, e.prompt) for e in task.examples("train", 300, difficulty=difficulty)}
        assert min(sizes) == lo and max(sizes) == hi, (name, difficulty, sizes)


def test_bad_difficulty_and_split():
    with pytest.raises(LoramixError, match="unknown difficulty 'extreme'"):
        get_task("add").examples("train", 1, difficulty="extreme")
    with pytest.raises(LoramixError, match="unknown split 'eval'.*test.*train.*validation"):
        get_task("add").examples("eval", 1)
    assert get_task("add").examples("val", 3) == get_task("add").examples("validation", 3)


def test_trace_formats():
    assert add_trace(482, 739) == "2+9+0=11 8+3+1=12 4+7+1=12|1221"
    assert add_trace(4821, 39) == "1+9+0=10 2+3+1=06 8+0+0=08 4+0+0=04|4860"
    assert sort_trace([52, 7, 31, 9]) == "7 52|7 31 52|7 9 31 52"
    assert mod_trace(4837, 7) == "4%7=4 48%7=6 63%7=0 7%7=0"
    assert shift_trace("abz", 3) == "a>d b>e z>c" and shift_letter("y", 7) == "f"
    t, f = True, False
    assert render([t, f, t, t]) == "TFTT" and apply_op("^", [t, f], [t, t]) == [f, t]
    assert bool_trace([[t, f, t, t], [f, t, t, f]], ["^"]) == ("T^F=T F^T=T T^T=F T^F=T", "TTFT")
    assert bool_trace([[t, f], [f, f], [t, t]], ["~", "&"]) == ("T~F=F F~F=T, F&T=F T&T=T", "FT")
    assert bool_trace([[t, f, t, f], [t, t, f, f]], ["#"])[1] == "FTTT"
    assert bool_trace([[t, f, t, f], [t, t, f, f]], ["@"])[1] == "FFFT"


def test_bool_answers_are_strings_not_labels():
    """bool's answer is a T/F string as long as its operands: no answer is a majority class, and the
    answer follows from the prompt by left-to-right positionwise logic."""
    import collections

    ops = {"&": lambda a, b: a and b, "|": lambda a, b: a or b, "^": lambda a, b: a != b, "~": lambda a, b: a == b,
           "#": lambda a, b: not (a and b), "@": lambda a, b: not (a or b)}
    task = get_task("bool")
    for difficulty, most in (("easy", 0.2), ("medium", 0.15), ("hard", 0.05)):
        exs = task.examples("test", 300, difficulty=difficulty)
        top = collections.Counter(e.answer for e in exs).most_common(1)[0][1]
        assert top / len(exs) < most, (difficulty, top)  # medium: 9% (300 test prompts, seed 0)
        for e in exs:
            body = e.prompt.split(": ", 1)[1].strip()
            parts, signs = re.split(r"[&|^~#@]", body), re.findall(r"[&|^~#@]", body)
            value = [c == "T" for c in parts[0]]
            for op, nxt in zip(signs, parts[1:]):
                assert len(nxt) == len(value)
                value = [ops[op](x, c == "T") for x, c in zip(value, nxt)]
            assert e.answer == render(value) and "".join(p[-1] for p in e.reasoning.split("\n")[-1].split(", ")[-1].split()) == e.answer


def test_medium_is_beyond_easy():
    """The eval level (medium) needs something pretraining (easy) never shows: longer inputs (add,
    sort), the operators # and @ (bool), moduli 10-11 (mod), shifts 4-7 (strings)."""
    def examples(name, difficulty):
        return get_task(name).examples("train", 300, difficulty=difficulty)

    for name in ("add", "sort"):
        easy = {_size(name, e.prompt) for e in examples(name, "easy")}
        medium = {_size(name, e.prompt) for e in examples(name, "medium")}
        assert max(medium) > max(easy) and min(medium) >= min(easy), (name, easy, medium)
    ops = lambda d: {c for e in examples("bool", d) for c in "&|#@^~" if c in e.prompt}  # noqa: E731
    assert ops("easy") == {"&", "|"} and ops("medium") == {"&", "|", "#", "@"} and len(ops("hard")) == 6
    easy_mod = {int(e.prompt.split("%")[1]) for e in examples("mod", "easy")}
    medium_mod = {int(e.prompt.split("%")[1]) for e in examples("mod", "medium")}
    assert max(easy_mod) == 9 and medium_mod == set(range(7, 12))
    shift = lambda e: int(e.prompt.split()[1][3:])  # noqa: E731
    assert {shift(e) for e in examples("strings", "easy")} == {1, 2, 3}
    assert {shift(e) for e in examples("strings", "medium")} == set(range(2, 8))


def test_to_dataset_columns():
    ds = get_task("mod").to_dataset("train", 5, difficulty="easy")
    assert ds.column_names == ["prompt", "answer", "task", "completion"]
    assert len(ds) == 5 and set(ds["task"]) == {"mod"}
    assert ds[0]["completion"].startswith("<think>")


def test_saved_examples_verify(tmp_path):
    import json

    from loramix.tasks import verify_file

    task = get_task("mod")
    exs = task.examples("test", 20, difficulty="easy")
    rows = [{"prompt": e.prompt, "answer": e.answer, "reasoning": e.reasoning} for e in exs]
    path = tmp_path / "mod.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert task.load(path) == exs
    assert (verify_file(task, path).checked, verify_file(task, path).failed) == (20, 0)
    rows[5]["answer"] = "maybe"  # not an integer: the integer verifier cannot match it even to itself
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = verify_file(task, path)
    assert (report.checked, report.failed) == (20, 1) and report.failures[0].where == "line 6"
    rows[5]["answer"] = 5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LoramixError, match=r"line 6: field 'answer': expected str, got int"):
        task.load(path)


@pytest.mark.parametrize("name", ["add", "sort", "bool", "mod", "strings"])
def test_reasoning_restates_the_problem_then_traces(name):
    """The trace's first line is the prompt's problem, so a part of a mixed prompt is traced from the
    same local context as the single prompt; no trace uses the mixed separator."""
    from loramix.tasks.mixed import THINK_SEP

    for e in get_task(name).examples("test", 50, difficulty="medium"):
        problem, trace = e.reasoning.split("\n", 1)
        assert e.prompt == f"{name}: {problem}\n" and trace and "\n" not in trace and THINK_SEP not in e.reasoning


def test_public_partners_mix_a_share_of_an_experts_prompts():
    from loramix.tasks.mixed import MixedExample, mixed_reference_completion, with_public_partners
    from loramix.train.experts import ExpertTrainConfig

    own = get_task("mod").examples("train", 200, difficulty="medium")
    out = with_public_partners(own, "mod", 0.3, seed=0)
    assert out == with_public_partners(own, "mod", 0.3, seed=0) and len(out) == len(own)
    mixed = [(i, e) for i, e in enumerate(out) if isinstance(e, MixedExample)]
    assert 40 <= len(mixed) <= 80  # ~30% of 200
    assert all(e is o for e, o in zip(out, own) if not isinstance(e, MixedExample))
    partners = {e.b.task for _, e in mixed}
    assert partners <= set(SYNTHETIC_TASKS) - {"mod"} and len(partners) >= 3
    assert {e.swapped for _, e in mixed} == {True, False}
    for i, e in mixed:
        assert e.a is own[i] and e.b.meta["level"] == 1 and e.b.meta["split"] == "train"  # public: easy, train
        assert e.prompt.count("\n") == 3 and e.prompt.endswith(f"keys: {e.keys[0]} {e.keys[1]}\n")
        first, second = e.order
        assert mixed_reference_completion(e).startswith(f"<think>{first.reasoning};{second.reasoning}</think>")
    assert with_public_partners(own, "mod", 0.0) == own
    from loramix.train.experts import _sft_dataset

    completions = _sft_dataset(get_task("mod"), out)["completion"]
    assert sum('"mod_answer"' in c for c in completions) == len(mixed)  # the SFT rows are the mixed references
    with pytest.raises(LoramixError, match="not a built-in synthetic domain"):
        with_public_partners([], "gsm8k", 0.3)
    with pytest.raises(LoramixError, match=r"mixed_share: must be in \[0, 1\)"):
        ExpertTrainConfig(task="mod", method="sft", mixed_share=1.0).validate()
    with pytest.raises(LoramixError, match="mixed_share: applies to SFT"):
        ExpertTrainConfig(task="mod", method="grpo", mixed_share=0.3).validate()
    with pytest.raises(LoramixError, match="mixed_share: public partners exist only"):
        ExpertTrainConfig(task="gsm8k", method="sft", mixed_share=0.3).validate()
