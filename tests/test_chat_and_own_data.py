"""Chat templates everywhere (one rendering, ``loramix.chat``) and the user's own training data
(prompt/completion or chat ``messages`` rows, optional ``domain``) for train-router and train-remix."""

from __future__ import annotations

import json

import pytest

from loramix.chat import render_prompt
from loramix.errors import DataError
from loramix.generation import Completion
from loramix.train.data import completion_dataset, read_traces, trace_pairs

from conftest import CHAT_TEMPLATE as TEMPLATE
from conftest import chat_tokenizer, make_adapter


@pytest.fixture(scope="module")
def chat_base(tmp_path_factory):
    """A tiny random Llama saved with a tokenizer that has a chat template, and two experts on it."""
    from loramix.base_model import tiny_random_llama

    root = tmp_path_factory.mktemp("chat")
    model, _ = tiny_random_llama(hidden=32, layers=2)
    model.config.max_position_embeddings = 512
    model.save_pretrained(root / "base")
    chat_tokenizer().save_pretrained(root / "base")
    experts = [make_adapter(model, root / f"e{i}", r=2, alpha=4, seed=30 + i) for i in range(2)]
    return root, experts


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHAT_ROWS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"add {a} 1"},
                           {"role": "assistant", "content": f"{a + 1}"}], "domain": "add"} for a in range(8)]


# --- the one rendering ----------------------------------------------------------------------------


def test_render_prompt_uses_the_template_only_when_there_is_one_and_it_is_on():
    from loramix.base_model import build_tokenizer

    tok = chat_tokenizer()
    assert render_prompt(tok, "2+2=") == "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, "2+2=", chat_template=False) == "2+2="
    assert render_prompt(build_tokenizer(), "2+2=") == "2+2="  # the tiny base: plain, as before


def test_saved_tokenizer_keeps_its_template(chat_base):
    from transformers import AutoTokenizer

    root, _ = chat_base
    assert AutoTokenizer.from_pretrained(root / "base").chat_template == TEMPLATE


# --- evaluation -----------------------------------------------------------------------------------


def _capture_generate(monkeypatch, module, seen: list):
    def fake(model, tokenizer, prompts, **kw):
        seen.extend(prompts)
        return [[Completion("x", True, 1)] * kw.get("num_return_sequences", 1) for _ in prompts]

    monkeypatch.setattr(module, "generate", fake)


@pytest.mark.parametrize("on", [True, False])
def test_evaluation_generates_from_rendered_prompts(monkeypatch, on):
    import loramix.evaluate as ev
    from loramix.base_model import tiny_random_llama
    from loramix.tasks import get_task

    model, _ = tiny_random_llama(hidden=32)
    tok = chat_tokenizer()
    seen: list[str] = []
    _capture_generate(monkeypatch, ev, seen)
    report = ev.evaluate_model(model, tok, ["add"], n=3, difficulty="easy", max_new_tokens=4, chat_template=on)
    raw = [e.prompt for e in get_task("add").examples("test", 3, seed=0, difficulty="easy")]
    assert sorted(seen) == sorted(render_prompt(tok, p) if on else p for p in raw)
    assert all(s.startswith("<|im_start|>user\n") == on for s in seen)
    assert report.config["chat_template"] is on


# --- distill --------------------------------------------------------------------------------------


def test_distill_generates_from_rendered_prompts_and_stores_raw_ones(chat_base, tmp_path, monkeypatch):
    import loramix.train.distill as dist
    from loramix.tasks import get_task

    root, experts = chat_base
    task = get_task("add")
    exs = task.examples("train", 3, seed=0, difficulty="easy")
    tok = chat_tokenizer()
    answer_of = {render_prompt(tok, e.prompt): task.reference_completion(e) for e in exs}
    seen: list[str] = []

    def fake(model, tokenizer, prompts, num_return_sequences=1, **kw):
        seen.extend(prompts)
        return [[Completion(answer_of.get(p, "x"), True, 5)] * num_return_sequences for p in prompts]

    monkeypatch.setattr(dist, "generate", fake)
    out = dist.distill(dist.DistillConfig(base=str(root / "base"), experts=experts[:1], tasks=["add"],
                                          out=str(tmp_path / "traces.jsonl"), n_prompts=3, samples=0,
                                          difficulty="easy"), progress=False)
    assert set(seen) == set(answer_of)  # generated from the rendered prompts
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(e.prompt for e in exs)  # stored raw, rendered at train time


# --- own data: rows, errors -----------------------------------------------------------------------


def test_messages_rows_mask_everything_but_the_assistant_reply(tmp_path):
    tok = chat_tokenizer()
    rows = read_traces(write_rows(tmp_path / "chat.jsonl", CHAT_ROWS[:2]))
    assert rows[0]["task"] == "add"  # domain is the user-facing name of task
    pairs = trace_pairs(tok, rows, path=tmp_path / "chat.jsonl")
    assert pairs[0].prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nadd 0 1<|im_end|>\n"
                               "<|im_start|>assistant\n")
    assert pairs[0].completion == "1<|im_end|>\n" and not pairs[0].add_eos
    data = completion_dataset(tok, pairs, 512)
    ids, labels = data[0]["input_ids"], data[0]["labels"]
    assert tok.decode(ids) == pairs[0].prompt + pairs[0].completion
    kept = [t for t in labels if t != -100]
    assert tok.decode(kept) == "1<|im_end|>\n"  # the reply and the template's end of turn, nothing else
    assert labels[:len(ids) - len(kept)] == [-100] * (len(ids) - len(kept))


def test_prompt_completion_rows_are_rendered_unless_turned_off(tmp_path):
    tok = chat_tokenizer()
    rows = read_traces(write_rows(tmp_path / "t.jsonl", [{"prompt": "add 1 1", "completion": "2"}]))
    assert trace_pairs(tok, rows)[0].prompt == render_prompt(tok, "add 1 1")
    assert trace_pairs(tok, rows, chat_template=False)[0].prompt == "add 1 1"
    assert trace_pairs(tok, rows)[0].add_eos


@pytest.mark.parametrize("row, where", [
    ({"messages": "hi"}, r"line 2: field 'messages'"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"line 2: field 'messages'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     r"line 2: field 'messages'\[1\]\.role"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
     r"line 2: field 'messages'\[0\]\.content"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
     r"line 2: field 'messages'\[1\]: the last message must be the assistant's"),
    ({"prompt": "p", "completion": "c", "messages": CHAT_ROWS[0]["messages"]}, r"line 2: field 'prompt'"),
    ({"prompt": "p", "completion": "c", "domain": 3}, r"line 2: field 'domain'"),
    ({"prompt": "p", "completion": "c", "domain": "add", "task": "sort"}, r"line 2: field 'domain'"),
    ({"prompt": "p"}, r"line 2: field 'completion' missing"),
    ("[1, 2]", r"line 2: expected a JSON object"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, row, where):
    f = write_rows(tmp_path / "bad.jsonl", [CHAT_ROWS[0], row])
    with pytest.raises(DataError, match=rf"bad\.jsonl: {where}"):
        read_traces(f)


def test_messages_rows_need_a_chat_template(tmp_path):
    from loramix.base_model import build_tokenizer

    f = write_rows(tmp_path / "chat.jsonl", [{"prompt": "p", "completion": "c"}, CHAT_ROWS[0]])
    with pytest.raises(DataError, match=r"chat\.jsonl: line 2: field 'messages': .*no(ne| chat template)"):
        trace_pairs(build_tokenizer(), read_traces(f), path=f)


def test_a_template_that_does_not_extend_the_prompt_is_refused(tmp_path):
    tok = chat_tokenizer("{{ messages | length }}{% for m in messages %}{{ m['content'] }};{% endfor %}")
    f = write_rows(tmp_path / "chat.jsonl", CHAT_ROWS[:1])
    with pytest.raises(DataError, match=r"chat\.jsonl: line 1: field 'messages': .*prefix"):
        trace_pairs(tok, read_traces(f), path=f)


# --- router and ReMix training --------------------------------------------------------------------


def test_messages_rows_train_a_router(chat_base, tmp_path):
    from loramix.mixture import MixtureConfig
    from loramix.train.router import RouterTrainConfig, train_router

    root, experts = chat_base
    traces = write_rows(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = train_router(RouterTrainConfig(
        base=str(root / "base"), experts=experts, traces=str(traces), out=str(tmp_path / "mix"), batch_size=4,
        max_steps=2, save_steps=10, logging_steps=1, mixture=MixtureConfig(router="hard", attention_lora_rank=0),
        progress=False, warmup_ratio=0.0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss_curve"]) == 2 and metrics["rows_per_domain"] == {"add": 8}


def _captured_pairs(monkeypatch, module) -> list:
    """Replace ``module.completion_dataset`` by one that records its pairs and stops the run."""
    seen: list = []

    class Stop(Exception):
        pass

    def fake(tokenizer, pairs, max_length):
        seen.extend(pairs)
        raise Stop

    monkeypatch.setattr(module, "completion_dataset", fake)
    return seen, Stop


@pytest.mark.parametrize("flag", ["--chat-template", "--no-chat-template"])
def test_train_router_cli_renders_prompts_unless_no_chat_template(chat_base, tmp_path, monkeypatch, flag):
    from typer.testing import CliRunner

    import loramix.train.router as mod
    from loramix.cli import app

    root, experts = chat_base
    traces = write_rows(tmp_path / "t.jsonl", [{"prompt": "add 1 1", "completion": "2", "domain": "add"}])
    seen, stop = _captured_pairs(monkeypatch, mod)
    result = CliRunner().invoke(app, ["train-router", "--base", str(root / "base"), "--experts", ",".join(experts),
                                      "--traces", str(traces), "--out", str(tmp_path / "m"), "--quiet", flag])
    assert isinstance(result.exception, stop), result.output
    tok = chat_tokenizer()
    want = render_prompt(tok, "add 1 1") if flag == "--chat-template" else "add 1 1"
    assert [p.prompt for p in seen] == [want]


@pytest.mark.parametrize("on", [True, False])
def test_remix_renders_task_and_trace_prompts(chat_base, tmp_path, monkeypatch, on):
    import loramix.train.remix as mod

    root, _ = chat_base
    traces = write_rows(tmp_path / "t.jsonl", [{"prompt": "add 1 1", "completion": "2"}, CHAT_ROWS[0]])
    seen, stop = _captured_pairs(monkeypatch, mod)
    with pytest.raises(stop):
        mod.train_remix(mod.ReMixConfig(out=tmp_path / "r", base=str(root / "base"), tasks=("add",), n_examples=2,
                                        traces=traces, chat_template=on, progress=False, steps=2))
    tok = chat_tokenizer()
    prompts = [p.prompt for p in seen]
    assert len(prompts) == 4
    assert all(p.startswith("<|im_start|>user\n") == on for p in prompts[:3])  # tasks, then the text row
    assert prompts[2] == (render_prompt(tok, "add 1 1") if on else "add 1 1")
    assert prompts[3].startswith("<|im_start|>system\n")  # a messages row is always the template's


# --- expert training ------------------------------------------------------------------------------


def test_expert_datasets_are_conversational_with_a_template():
    from loramix.tasks import get_task
    from loramix.train.experts import _grpo_dataset, _sft_dataset

    task = get_task("add")
    exs = task.examples("train", 2, seed=0, difficulty="easy")
    chat, plain = _grpo_dataset(task, exs, chat=True), _grpo_dataset(task, exs)
    assert chat["prompt"][0] == [{"role": "user", "content": exs[0].prompt}] and plain["prompt"][0] == exs[0].prompt
    sft = _sft_dataset(task, exs, chat=True)
    assert sft["completion"][0] == [{"role": "assistant", "content": task.reference_completion(exs[0])}]
    assert _sft_dataset(task, exs)["prompt"][0] == exs[0].prompt


# --- multi-task LoRA, X-LoRA and the prompt router ------------------------------------------------


def test_messages_rows_train_a_multitask_lora(chat_base, tmp_path):
    from loramix.train.multitask import MultitaskConfig, train_multitask

    root, _ = chat_base
    traces = write_rows(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = train_multitask(MultitaskConfig(base=str(root / "base"), traces=str(traces), out=str(tmp_path / "mt"),
                                          rank=2, steps=2, batch_size=4, save_steps=10, logging_steps=1,
                                          progress=False))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss_curve"]) == 2 and metrics["rows_per_task"] == {"add": 8}
    assert metrics["config"]["chat_template"] is True


@pytest.mark.parametrize("command", ["train-multitask", "build-xlora"])
@pytest.mark.parametrize("flag", ["--chat-template", "--no-chat-template"])
def test_multitask_and_xlora_cli_render_prompts_unless_no_chat_template(chat_base, tmp_path, monkeypatch, command,
                                                                         flag):
    from typer.testing import CliRunner

    import loramix.train.multitask as multitask
    import loramix.train.xlora as xlora
    from loramix.cli import app

    root, experts = chat_base
    traces = write_rows(tmp_path / "t.jsonl", [{"prompt": "add 1 1", "completion": "2", "domain": "add"},
                                               CHAT_ROWS[0]])
    seen, stop = _captured_pairs(monkeypatch, multitask if command == "train-multitask" else xlora)
    args = ["--experts", ",".join(experts), "--steps", "2"] if command == "build-xlora" else []
    result = CliRunner().invoke(app, [command, "--base", str(root / "base"), "--traces", str(traces),
                                      "--out", str(tmp_path / "o"), "--quiet", flag, *args])
    assert isinstance(result.exception, stop), result.output
    tok = chat_tokenizer()
    want = render_prompt(tok, "add 1 1") if flag == "--chat-template" else "add 1 1"
    assert [p.prompt for p in seen] == [want, trace_pairs(tok, [CHAT_ROWS[0]])[0].prompt]
    assert seen[1].completion == "1<|im_end|>\n" and not seen[1].add_eos  # the reply cut from the conversation


@pytest.mark.parametrize("on", [True, False])
def test_prompt_router_trains_on_messages_rows_as_evaluation_renders_prompts(chat_base, tmp_path, monkeypatch, on):
    import loramix.train.prompt_router as mod

    root, experts = chat_base
    chat = [{"messages": [{"role": "user", "content": f"add {a} 1"}, {"role": "assistant", "content": f"{a + 1}"}],
             "domain": "add", "expert_index": 0} for a in range(5)]
    chat.append({**chat[0], "messages": [*chat[0]["messages"][:-1], {"role": "assistant", "content": "9"}]})
    text = [{"prompt": f"rev ab{a}", "completion": f"{a}ba", "domain": "rev", "expert_index": 1} for a in range(5)]
    traces = write_rows(tmp_path / "t.jsonl", chat + text)
    featurised: list[str] = []
    real = mod.prompt_features

    def spy(model, tok, prompts, batch_size=32):
        featurised.extend(prompts)
        return real(model, tok, prompts, batch_size)

    monkeypatch.setattr(mod, "prompt_features", spy)
    out = mod.build_prompt_router(str(root / "base"), experts, tmp_path / "pr", traces=traces, steps=5,
                                  chat_template=on)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_heldout"] == 10  # the repeated chat prompt counts once
    assert metrics["label_to_expert"] == {"add": 0, "rev": 1} and metrics["chat_template"] is on
    tok = chat_tokenizer()
    # a chat row's prompt is always the template's; a text prompt is what evaluation generates from
    want = {trace_pairs(tok, [r])[0].prompt for r in chat} | {render_prompt(tok, r["prompt"], on) for r in text}
    assert sorted(featurised) == sorted(want)


def test_domain_rows_give_a_routing_accuracy_against_a_forced_router(chat_base, tmp_path):
    """Rows whose domain names an expert get a routing accuracy: 1.0 for the domain a fixed router
    sends everything to, 0.0 for the other; train-router records it in metrics.json."""
    import shutil

    from loramix.mixture import MixtureConfig, compose
    from loramix.routers import FixedOptions
    from loramix.train.data import completion_dataset, read_traces, trace_pairs
    from loramix.train.router import RouterTrainConfig, domain_routing_accuracy, train_router
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, experts = chat_base
    named = [shutil.copytree(e, tmp_path / name) for e, name in zip(experts, ("add", "sort"))]
    rows = [{"prompt": f"add {i} {i}", "completion": str(2 * i), "domain": "add"} for i in range(3)]
    rows += [{"prompt": f"sort {i} 1", "completion": f"1 {i}", "domain": "sort"} for i in range(2)]
    rows += [{"prompt": "x", "completion": "y", "domain": "other"}]  # names no expert: left out
    traces = write_rows(tmp_path / "d.jsonl", rows)
    tok = AutoTokenizer.from_pretrained(root / "base")
    read = read_traces(traces)
    data = completion_dataset(tok, trace_pairs(tok, read), 256)
    mix = compose(AutoModelForCausalLM.from_pretrained(root / "base"), [str(p) for p in named],
                  MixtureConfig(router="fixed", router_options=FixedOptions(expert=1)))
    acc = domain_routing_accuracy(mix, data, read)
    assert acc["routing_accuracy_per_domain"] == {"add": 0.0, "sort": 1.0} and acc["routing_accuracy_rows"] == 5
    assert acc["routing_accuracy"] == pytest.approx(sum(len(d["input_ids"]) for d in data.select(range(3, 5)))
                                                    / sum(len(d["input_ids"]) for d in data.select(range(5))), abs=1e-4)
    out = train_router(RouterTrainConfig(
        base=str(root / "base"), experts=[str(p) for p in named], traces=str(traces), out=str(tmp_path / "mix"),
        batch_size=4, max_steps=1, save_steps=10, logging_steps=1,
        mixture=MixtureConfig(router="hard", attention_lora_rank=0), progress=False, warmup_ratio=0.0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["routing_accuracy_per_domain"]) == {"add", "sort"} and 0 <= metrics["routing_accuracy"] <= 1
