"""The registry, user tasks (a small class or a JSONL file plus a verifier name) and the TRL
reward-function adapter."""

import json

import pytest

from loramix.errors import DataError, LoramixError
from loramix.tasks import (Example, Task, get_task, list_tasks, make_reward_fn, register_jsonl_task,
                           register_task, task_info, unregister_task)


def test_builtin_tasks_registered_in_order():
    assert list_tasks()[:10] == ["add", "sort", "bool", "mod", "strings", "gsm8k", "arc", "medqa", "cola", "boolq"]
    info = task_info("gsm8k")
    assert (info.kind, info.answer_type, info.verifier) == ("benchmark", "number", "math")
    assert task_info("add").kind == "synthetic"


def test_unknown_task_lists_valid_names():
    with pytest.raises(LoramixError) as err:
        get_task("gsm9k")
    msg = str(err.value)
    assert msg.startswith("unknown task 'gsm9k'; valid: ") and "add" in msg and "boolq" in msg and "gsm8k" in msg


def test_register_small_class():
    @register_task("upper")
    class Upper(Task):
        answer_type, verifier, description = "string", "exact", "upper-case a word"

        def examples(self, split="train", n=None, *, seed=0, difficulty="hard"):
            words = ["abc", "xyz", "loramix"][: n or 3]
            return [Example(f"upper: {w}\n", w.upper(), None, self.name) for w in words]

    try:
        task = get_task("upper")
        assert task.name == "upper" and "upper" in list_tasks()
        info = task_info("upper")
        assert (info.kind, info.answer_type, info.verifier) == ("user", "string", "exact")
        ex = task.examples(n=2)[1]
        assert ex.answer == "XYZ"
        assert task.reward(task.reference_completion(ex), ex) == pytest.approx(1.2)
        assert task.reward('<think></think>{"answer": "xyz"}', ex) == pytest.approx(-0.9)
    finally:
        unregister_task("upper")
    assert "upper" not in list_tasks()


def test_register_jsonl_task(tmp_path):
    path = tmp_path / "capitals.jsonl"
    rows = [{"prompt": "capital of France?", "answer": "Paris", "reasoning": "France -> Paris"},
            {"prompt": "capital of Peru?", "answer": "Lima"},
            {"prompt": "2+2?", "answer": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    register_jsonl_task("capitals", path, verifier="text")
    try:
        task = get_task("capitals")
        info = task_info("capitals")
        assert (info.kind, info.verifier) == ("user", "text")
        exs = task.examples()
        assert [e.answer for e in exs] == ["Paris", "Lima", "4"]
        assert exs[0].reasoning == "France -> Paris" and exs[1].reasoning is None
        assert task.reference_completion(exs[0]) == '<think>France -> Paris</think>\n{"answer": "Paris"}'
        assert task.is_correct('{"answer": "paris"}', exs[0])  # the `text` verifier ignores case
        assert not task.is_correct('{"answer": "Lyon"}', exs[0])
        assert task.examples(n=1) == exs[:1]
    finally:
        unregister_task("capitals")


def test_jsonl_task_template_and_fields(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "one plus one", "gold": "2"}) + "\n" + json.dumps({"gold": "3"}) + "\n")
    register_jsonl_task("qa", path, verifier="math", template="Q: {q}\n", answer_field="gold", answer_type="number")
    try:
        assert task_info("qa").answer_type == "number"
        with pytest.raises(DataError, match=r"qa.jsonl: line 2: field 'q': missing"):
            get_task("qa").examples()
    finally:
        unregister_task("qa")


def test_jsonl_task_unknown_verifier(tmp_path):
    with pytest.raises(LoramixError, match="unknown verifier 'fuzzy'"):
        register_jsonl_task("x", tmp_path / "x.jsonl", verifier="fuzzy")
    assert "x" not in list_tasks()


def test_reward_fn_trl_signature():
    task = get_task("add")
    exs = task.examples("train", 3, difficulty="easy")
    fn = task.reward_fn()
    assert fn.__name__ == "add_reward"
    completions = [task.reference_completion(exs[0]), '<think></think>{"answer": "0"}', "garbage"]
    rewards = fn(prompts=[e.prompt for e in exs], completions=completions, answer=[e.answer for e in exs],
                 task=["add"] * 3, completion_ids=[[1]] * 3, trainer_state=None)
    assert rewards == pytest.approx([1.2, -0.9, -1.1])
    # conversational format: completions are lists of messages
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert fn([[{"role": "user", "content": e.prompt}] for e in exs], chat, answer=[e.answer for e in exs]) \
        == pytest.approx([1.2, -0.9, -1.1])


def test_reward_fn_dispatches_on_task_column():
    add, sort = get_task("add"), get_task("sort")
    a, s = add.examples("train", 1)[0], sort.examples("train", 1)[0]
    fn = make_reward_fn()
    rewards = fn([a.prompt, s.prompt], [add.reference_completion(a), sort.reference_completion(a)],
                 answer=[a.answer, s.answer], task=["add", "sort"])
    assert rewards == pytest.approx([1.2, -0.9])
    with pytest.raises(LoramixError, match="'task' column"):
        fn([a.prompt], ["x"], answer=[a.answer])
    with pytest.raises(LoramixError, match="'answer' column"):
        fn([a.prompt], ["x"], task=["add"])


def test_reward_fn_works_with_grpo_dataset():
    ds = get_task("bool").to_dataset("train", 4, difficulty="easy")
    fn = make_reward_fn()
    cols = {k: ds[k] for k in ("answer", "task")}
    assert fn(ds["prompt"], ds["completion"], **cols) == pytest.approx([1.2] * 4)
