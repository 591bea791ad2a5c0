"""`loramix generate` (free prompts through any saved model, optionally coloured by expert) and
`loramix evaluate` agreeing with the pipeline: its default difficulty, the title, percentages."""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import make_adapter, saved_tiny_base
from typer.testing import CliRunner

from loramix.errors import DataError, LoramixError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["add: 12+34\n", "sort: 3 1 2\n", "add: 7+100\n"]  # different lengths: left padding in a batch
GEN = {"max_new_tokens": 10, "batch_size": 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random base, two PEFT experts (add, sort), a hard mixture and a fixed mixture that
    sends every token to expert 1."""
    from loramix.mixture import compose

    root = tmp_path_factory.mktemp("generate_models")
    model, _ = saved_tiny_base(root)
    paths = {"base": root / "base"}
    for i, name in enumerate(["add", "sort"]):
        paths[name] = Path(make_adapter(model, root / name, r=2, alpha=4, seed=20 + i))
    experts = [str(paths["add"]), str(paths["sort"])]
    compose(copy.deepcopy(model), experts, router="hard", seed=3).save_pretrained(root / "mix_hard")
    compose(copy.deepcopy(model), experts, router="fixed", router_options={"expert": 1}).save_pretrained(
        root / "mix_fixed1")
    paths["mix_hard"], paths["mix_fixed1"] = root / "mix_hard", root / "mix_fixed1"
    return paths


def _cli(args: list[str]):
    from loramix.cli import app

    return CliRunner().invoke(app, args)


def _oracle(path, base, prompts=PROMPTS):
    """generation.generate on the same model, loaded by the same loader."""
    from loramix.evaluate import load_for_eval
    from loramix.generation import generate

    model, tok, _ = load_for_eval(path, str(base))
    return [c[0] for c in generate(model, tok, prompts, **GEN)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["mix_hard", "add"])
def test_generate_prompts_equal_generation_generate(models, tmp_path, which):
    """--prompt (printed) and --file/--out (JSONL) give exactly what generation.generate gives."""
    want = _oracle(models[which], models["base"])
    gen = ["--max-new-tokens", str(GEN["max_new_tokens"]), "--batch-size", str(GEN["batch_size"])]
    res = _cli(["generate", str(models[which]), "--base", str(models["base"]), *gen,
                *[a for p in PROMPTS for a in ("--prompt", p)]])
    assert res.exit_code == 0, res.output
    for c in want:
        assert c.text in res.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" + ("\n" if i == 0 else "")
                               for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out" / "gen.jsonl"
    res = _cli(["generate", str(models[which]), "--base", str(models["base"]), *gen, "--file", str(prompts),
                "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _rows(out) == [{"prompt": p, "completion": c.text, "finished": c.finished, "tokens": c.tokens}
                          for p, c in zip(PROMPTS, want)]
    assert f"wrote {out}" in res.output and not list(out.parent.glob(".*"))  # no temporary left behind


def test_generate_default_and_merged_use_the_same_loader(models, monkeypatch):
    """'default' is the embedded base via load_for_eval (stubbed here: tests never build it)."""
    import loramix.evaluate as ev
    from loramix.generation import generate_path

    seen = []
    real = ev.load_for_eval

    def spy(path, base=None, experts_dir=None):
        seen.append(str(path))
        return real(models["base"] if str(path) == "default" else path, base, experts_dir)

    monkeypatch.setattr(ev, "load_for_eval", spy)
    result = generate_path("default", PROMPTS[:1], **GEN)
    assert seen == ["default"] and result.kind == "hf"
    assert [r.completion for r in result.rows] == [_oracle(models["base"], models["base"], PROMPTS[:1])[0].text]


def test_generate_chat_rows_use_the_chat_template(models, tmp_path):
    """With a chat template, a 'prompt' row is rendered as one user message (as evaluate renders
    prompts) and a 'messages' row as the conversation; the completions are generation.generate's
    on those texts. --no-chat-template keeps the raw prompt."""
    import shutil

    from transformers import AutoTokenizer

    from loramix.generation import generate_path

    base = tmp_path / "chat_base"
    shutil.copytree(models["base"], base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    tok.save_pretrained(base)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort: 2 1"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "add: 1+2"}) + "\n" + json.dumps({"messages": messages}) + "\n")
    rendered = ["user: add: 1+2\nassistant: ", "system: be brief\nuser: sort: 2 1\nassistant: "]
    want = _oracle(models["add"], base, rendered)
    out = tmp_path / "chat_out.jsonl"
    generate_path(models["add"], prompts_file=path, base=str(base), out=out, **GEN)
    rows = _rows(out)
    assert [r["completion"] for r in rows] == [c.text for c in want]
    assert rows[0]["prompt"] == "add: 1+2" and rows[1]["prompt"] == rendered[1] and rows[1]["messages"] == messages
    raw = generate_path(models["add"], ["add: 1+2"], base=str(base), chat_template=False, **GEN)
    assert raw.rows[0].completion == _oracle(models["add"], base, ["add: 1+2"])[0].text
    assert raw.rows[0].completion != rows[0]["completion"]  # so the template did change what the model saw


def test_generate_bad_prompt_files_name_file_and_line(models, tmp_path):
    from loramix.generation import generate_path

    cases = {
        '{"prompt": "add: 1+2\\n"}\n{"prompt": \n': ("line 2", "invalid JSON"),
        '{"prompt": "a"}\n\n["add"]\n': ("line 3", "expected a JSON object"),
        '{"text": "a"}\n': ("line 1", "'prompt' or 'messages'"),
        '{"prompt": 5}\n': ("line 1: field 'prompt'", "non-empty string"),
        '{"prompt": ""}\n': ("line 1: field 'prompt'", "non-empty string"),
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n':
            ("line 1: field 'messages'[1]", "the user's"),
        '{"messages": [{"role": "robot", "content": "hi"}]}\n': ("line 1: field 'messages'[0]", "role"),
        "\n\n": ("file", "no prompts"),
    }
    for i, (text, (where, problem)) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.jsonl"
        path.write_text(text)
        with pytest.raises(DataError) as err:
            generate_path(models["mix_hard"], prompts_file=path, base=str(models["base"]))
        assert f"{path}: {where}: " in str(err.value) and problem in str(err.value), str(err.value)
    with pytest.raises(DataError, match="not found"):
        generate_path(models["mix_hard"], prompts_file=tmp_path / "missing.jsonl")
    # a chat row on a tokenizer without a chat template: refused naming the line, after loading
    path = tmp_path / "chat.jsonl"
    path.write_text('{"prompt": "add: 1+2\\n"}\n{"messages": [{"role": "user", "content": "add: 1+2"}]}\n')
    with pytest.raises(DataError, match=r"chat.jsonl: line 2: field 'messages': .*has none"):
        generate_path(models["mix_hard"], prompts_file=path, base=str(models["base"]))
    # a prompt too long for the context is refused by its line, before generating
    path.write_text('{"prompt": "add: 1+2\\n"}\n' + json.dumps({"prompt": "add: " + "1" * 600}) + "\n")
    with pytest.raises(LoramixError, match=r"chat.jsonl: line 2: \d+ prompt tokens"):
        generate_path(models["mix_hard"], prompts_file=path, base=str(models["base"]))


def test_generate_argument_errors_before_loading(models, tmp_path):
    from loramix.generation import generate_path

    with pytest.raises(LoramixError, match="no prompts"):
        generate_path(models["mix_hard"])
    with pytest.raises(LoramixError, match="not both"):
        generate_path(models["mix_hard"], ["a"], prompts_file=tmp_path / "p.jsonl")
    for path in (models["add"], models["base"], "default"):
        with pytest.raises(LoramixError, match="--show-routing needs a loramix mixture"):
            generate_path(path, ["a"], show_routing=True)
    with pytest.raises(LoramixError, match="--layer applies with --show-routing"):
        generate_path(models["mix_hard"], ["a"], layer=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LoramixError, match="cannot write there"):
        generate_path(models["mix_hard"], ["a"], out=blocker / "out.jsonl")


# --- --show-routing ---------------------------------------------------------------------------------


def _completion_styles(row) -> list[str | None]:
    """The style of each completion token in the rendered Text (the prompt is the first span)."""
    from loramix.generation import completion_text

    text = completion_text(row)
    styles = {(s.start, s.end): str(s.style) for s in text.spans}
    out, at = [], len(row.prompt)
    for piece in row.pieces:
        n = len(piece.replace("\n", "\u21b5\n"))
        out.append(styles.get((at, at + n)))
        at += n
    return out


def test_show_routing_forced_expert_shows_only_its_colour(models, tmp_path):
    from loramix.analysis import expert_colour
    from loramix.generation import generate_path

    out = tmp_path / "routed.jsonl"
    res = _cli(["generate", str(models["mix_fixed1"]), "--base", str(models["base"]), "--show-routing",
                "--max-new-tokens", "10", "--out", str(out), *[a for p in PROMPTS for a in ("--prompt", p)]])
    assert res.exit_code == 0, res.output
    assert "experts:" in res.output and "0: add" in res.output and "1: sort" in res.output
    assert "majority over 2 sites" in res.output
    rows = _rows(out)
    assert [r["completion"] for r in rows] == [c.text for c in _oracle(models["mix_fixed1"], models["base"])]
    for r in rows:  # every token read back went to expert 1; a cut-off completion's last was never read
        assert r["experts"] == ([1] * r["tokens"] if r["finished"] else [1] * (r["tokens"] - 1) + [None])

    result = generate_path(models["mix_fixed1"], PROMPTS, base=str(models["base"]), show_routing=True, **GEN)
    one = f"black on {expert_colour(1)}"
    assert expert_colour(0) != expert_colour(1)
    for row in result.rows:
        assert "".join(row.pieces) == row.completion
        styles = _completion_styles(row)
        assert styles == [one if e == 1 else None for e in row.experts] and one in styles


def test_show_routing_matches_a_full_forward(models):
    """The experts recorded while generating with the KV cache are those a single forward over the
    finished sequence chooses; the colour rule is the majority over sites (ties: lowest id), or --layer."""
    from loramix.analysis import expert_colour
    from loramix.evaluate import load_for_eval
    from loramix.generation import generate_path

    model, tok, _ = load_for_eval(models["mix_hard"], str(models["base"]))
    seen: set[int] = set()
    for layer in (None, 1):
        result = generate_path(models["mix_hard"], PROMPTS, base=str(models["base"]), show_routing=True,
                               layer=layer, **GEN)
        assert result.expert_names == ["add", "sort"] and ("majority" in result.routing_rule) == (layer is None)
        for row in result.rows:
            prompt_ids = tok(row.prompt, add_special_tokens=False)["input_ids"]
            ids = prompt_ids + tok(row.completion, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
            per_site = [t.expert_ids[0, :, 0].tolist() for t in model.routing_trace()]  # hard: top-1
            want = []
            for pos in range(len(prompt_ids), len(ids)):
                if layer is not None:
                    want.append(per_site[layer][pos])
                    continue
                counts = Counter(site[pos] for site in per_site)
                top = max(counts.values())
                want.append(min(e for e, c in counts.items() if c == top))
            fed = len(row.experts) if row.finished else len(row.experts) - 1  # the last cut-off token is never read
            assert row.experts[:fed] == want[:fed] and row.experts[fed:] == [None] * (len(row.experts) - fed)
            assert _completion_styles(row)[:fed] == [f"black on {expert_colour(e)}" for e in want[:fed]]
            seen |= set(want)
    assert seen == {0, 1}  # the random router uses both experts, so the colours are not all alike
    with pytest.raises(LoramixError, match="--layer 5 out of range"):
        generate_path(models["mix_hard"], PROMPTS[:1], base=str(models["base"]), show_routing=True, layer=5, **GEN)


# --- evaluate agrees with the pipeline ------------------------------------------------------------


def test_evaluate_default_difficulty_is_the_pipelines():
    from loramix.analysis import analyze_mixture
    from loramix.evaluate import check_tasks, evaluate_model
    from loramix.recipe import load_recipe
    from loramix.tasks.base import DEFAULT_DIFFICULTY

    pipeline = {load_recipe(None).eval_difficulty, load_recipe(ROOT / "recipes" / "tiny.yaml").eval_difficulty}
    assert pipeline == {DEFAULT_DIFFICULTY}
    for fn in (evaluate_model, check_tasks, analyze_mixture):
        assert inspect.signature(fn).parameters["difficulty"].default == DEFAULT_DIFFICULTY, fn.__name__


def test_cli_evaluate_title_names_difficulty_and_prints_percent(models, tmp_path):
    from loramix.recipe import load_recipe

    out = tmp_path / "eval.json"
    res = _cli(["evaluate", str(models["base"]), "--tasks", "add,sort", "--n", "2", "--max-new-tokens", "4",
                "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = load_recipe(ROOT / "recipes" / "tiny.yaml").eval_difficulty
    assert json.loads(out.read_text())["config"]["difficulty"] == want
    assert f"difficulty {want}" in res.output
    res = _cli(["evaluate", str(models["base"]), "--tasks", "add", "--n", "1", "--max-new-tokens", "4",
                "--difficulty", "easy"])
    assert res.exit_code == 0 and "difficulty easy" in res.output, res.output
    rates = re.findall(r"\d+\.\d%", res.output)
    assert len(rates) >= 4 and not re.search(r"\b0\.\d{3}\b", res.output)  # accuracy, format: task and average


def test_report_table_prints_percentages():
    from rich.console import Console

    from loramix.analysis import summary_table
    from loramix.evaluate import EvalReport, report_table

    metrics = {"accuracy": 0.5, "format_rate": 0.125, "mean_length": 7.0, "n": 8,
               "part_accuracy": {"add": 0.75, "sort": 0.25}}
    report = EvalReport({"add+sort": metrics}, {"accuracy": 0.5, "format_rate": 0.125, "mean_length": 7.0},
                        {"difficulty": "medium", "split": "test"})
    console = Console(width=200, record=True)
    console.print(report_table(report, title="mix (mixture)"))
    text = console.export_text()
    assert "mix (mixture) - difficulty medium, split test" in text
    assert "50.0% (add 75.0%, sort 25.0%)" in text and "12.5%" in text and "0.500" not in text
    result = {"mixture": {"experts": ["add", "sort"]}, "config": {"difficulty": "hard"}, "eval": {"add": metrics},
              "tasks": {"add": {"n_tokens": 4, "shares": {"overall": [0.25, 0.75]},
                                "routing_accuracy": {"overall": 0.875},
                                "mass": {"overall": {"max_mass": 1.0, "ess_token": 1.0, "ess_of_mean": 1.6}}}}}
    console.print(summary_table(result))
    text = console.export_text()
    assert "difficulty hard" in text and "50.0%" in text and "87.5%" in text and "sort (75.0%)" in text
