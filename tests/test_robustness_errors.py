"""Issue 7: bad input gets a clear one-line error naming the file and the field, exit code 2, no
traceback (unless --debug), and nothing written. Most cases run ``loramix.cli.main`` in-process (the
real entry point, with its error handling); a few run the installed ``loramix`` script in a subprocess."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import make_adapter, tiny_model

LORAMIX = str(Path(sys.executable).with_name("loramix"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from loramix.base_model import tiny_random_llama

    root = tmp_path_factory.mktemp("errors")
    model, tok = tiny_random_llama(hidden=32, layers=2)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    e = {f"e{i}": make_adapter(model, root / f"e{i}", r=2, alpha=4, seed=40 + i) for i in range(2)}
    wide, _ = tiny_random_llama(hidden=64, layers=2)
    e["wrong_hidden"] = make_adapter(wide, root / "wrong_hidden", r=2, alpha=4, seed=3)
    qwen = tiny_model("qwen2", hidden=32)
    e["other_arch"] = make_adapter(qwen, root / "other_arch", r=2, alpha=4, seed=4)
    ia3 = root / "ia3"  # a non-LoRA PEFT adapter
    from peft import IA3Config, get_peft_model

    get_peft_model(copy.deepcopy(model), IA3Config(target_modules=["up_proj", "down_proj"],
                                                   feedforward_modules=["down_proj"])).save_pretrained(str(ia3))
    e["ia3"] = str(ia3)
    for name, mutate in (("truncated", "truncate"), ("missing", "delete"), ("nan", "nan"), ("inf", "inf")):
        folder = root / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text((root / "e0" / "adapter_config.json").read_text())
        weights = root / "e0" / "adapter_model.safetensors"
        if mutate == "truncate":
            (folder / "adapter_model.safetensors").write_bytes(weights.read_bytes()[:200])
        elif mutate in ("nan", "inf"):
            sd = load_file(str(weights))
            key = sorted(sd)[0]
            sd[key][0, 0] = float("nan") if mutate == "nan" else float("inf")
            save_file(sd, str(folder / "adapter_model.safetensors"))
        e[name] = str(folder)
    rows = [{"prompt": f"add: {a}+1=", "completion": f"<think>{a + 1}</think>"} for a in range(4)]
    traces = root / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, e, traces


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Run ``loramix.cli.main`` in-process; (exit code, stdout + stderr)."""
    from loramix.cli import main

    old = sys.argv
    sys.argv = ["loramix", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def assert_user_error(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    # exactly one error line (library warnings and progress bars on stderr are not ours)
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], (needle, output)


def router_args(root, traces, experts, out, **extra) -> list[str]:
    args = ["train-router", "--base", str(root / "base"), "--experts", ",".join(experts), "--traces", str(traces),
            "--out", str(out), "--steps", "1", "--batch-size", "2", "--attention-rank", "0", "--quiet"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


BAD_EXPERTS = [
    ("wrong_hidden", ["wrong_hidden", "lora_A.weight", "does not fit"]),
    ("other_arch", ["other_arch", "auto_mapping.base_model_class", "Qwen2ForCausalLM"]),
    ("ia3", ["ia3", "peft_type", "IA3"]),
    ("truncated", ["truncated", "adapter_model.safetensors", "truncated"]),
    ("missing", ["missing", "adapter_model.safetensors", "missing"]),
    ("nan", ["nan", "lora_A.weight", "NaN or Inf"]),
    ("inf", ["inf", "lora_A.weight", "NaN or Inf"]),
]


@pytest.mark.parametrize("bad,needles", BAD_EXPERTS, ids=[b for b, _ in BAD_EXPERTS])
def test_train_router_refuses_bad_expert(env, tmp_path, capsys, bad, needles):
    root, e, traces = env
    out = tmp_path / "mix"
    code, output = cli(router_args(root, traces, [e["e0"], e[bad]], out), capsys)
    assert_user_error(code, output, *needles)
    assert not list(tmp_path.iterdir())  # nothing written: no mixture, no .partial


@pytest.mark.parametrize("bad", ["wrong_hidden", "ia3", "truncated", "nan"])
def test_evaluate_refuses_bad_adapter(env, tmp_path, capsys, bad):
    root, e, _ = env
    out = tmp_path / "report.json"
    code, output = cli(["evaluate", e[bad], "--base", str(root / "base"), "--tasks", "add", "--n", "1",
                        "--max-new-tokens", "2", "--out", str(out)], capsys)
    assert_user_error(code, output, bad)
    assert not out.exists()


def test_duplicate_experts_are_refused(env, tmp_path, capsys):
    root, e, traces = env
    code, output = cli(router_args(root, traces, [e["e0"], e["e1"], e["e0"]], tmp_path / "mix"), capsys)
    assert_user_error(code, output, "e0", "adapter_model.safetensors", "duplicate")
    code, output = cli(["distill", "--base", str(root / "base"), "--experts", f"{e['e1']},{e['e1']}",
                        "--tasks", "add,sort", "--out", str(tmp_path / "t.jsonl"), "--quiet"], capsys)
    assert_user_error(code, output, "duplicate")
    assert not list(tmp_path.iterdir())


def test_bad_traces_name_the_line(env, tmp_path, capsys):
    root, e, _ = env
    for text, needles in (('{"prompt": "a", "completion": "b"}\n{oops\n', ["line 2", "invalid JSON"]),
                          ('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n', ["line 3", "'completion'"]),
                          ('[1, 2]\n', ["line 1", "JSON object"])):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        code, output = cli(router_args(root, bad, [e["e0"], e["e1"]], tmp_path / "mix"), capsys)
        assert_user_error(code, output, "bad.jsonl", *needles)
        assert not (tmp_path / "mix").exists() and not (tmp_path / "mix.partial").exists()
    code, output = cli(router_args(root, tmp_path / "absent.jsonl", [e["e0"]], tmp_path / "mix"), capsys)
    assert_user_error(code, output, "absent.jsonl", "not found")


def test_tasks_verify_names_the_line(tmp_path, capsys):
    f = tmp_path / "data.jsonl"
    f.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": \n')
    code, output = cli(["tasks", "verify", "add", "--data", str(f)], capsys)
    assert_user_error(code, output, "data.jsonl", "line 2")
    f.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    code, output = cli(["tasks", "verify", "add", "--data", str(f)], capsys)
    assert_user_error(code, output, "data.jsonl", "line 2", "answer")


def test_unknown_task_and_router_list_the_valid_names(env, tmp_path, capsys):
    root, e, traces = env
    code, output = cli(["evaluate", "default", "--tasks", "nope", "--n", "1"], capsys)
    assert_user_error(code, output, "unknown task 'nope'", "add", "sort")
    code, output = cli(router_args(root, traces, [e["e0"], e["e1"]], tmp_path / "mix", router="nope"), capsys)
    assert_user_error(code, output, "unknown router 'nope'", "hard", "soft", "remix")
    code, output = cli(["tasks", "verify", "nope", "--data", str(traces)], capsys)
    assert_user_error(code, output, "unknown task 'nope'", "add")
    code, output = cli(router_args(root, traces, [e["e0"], e["e1"]], tmp_path / "mix", router="soft", ste="chosen"),
                       capsys)
    assert_user_error(code, output, "router 'soft' has no option 'ste'", "init_std")
    assert not (tmp_path / "mix").exists()


def test_a_finished_run_is_kept_and_another_config_refused(env, tmp_path, capsys):
    """One resume policy for every training command (train/common.RunFolder)."""
    root, e, traces = env
    args = router_args(root, traces, [e["e0"], e["e1"]], tmp_path / "mix")
    assert cli(args, capsys)[0] == 0
    weights = (tmp_path / "mix" / "mixture.safetensors").read_bytes()
    assert cli(args, capsys)[0] == 0  # the same run again: nothing to do
    assert (tmp_path / "mix" / "mixture.safetensors").read_bytes() == weights
    code, output = cli(router_args(root, traces, [e["e0"], e["e1"]], tmp_path / "mix", learning_rate=0.5), capsys)
    assert_user_error(code, output, "mix: already holds a finished run with another config", "learning_rate", "--force")
    assert not (tmp_path / "mix.partial").exists()
    assert cli([*router_args(root, traces, [e["e0"], e["e1"]], tmp_path / "mix", learning_rate=0.5), "--force"],
               capsys)[0] == 0
    assert json.loads((tmp_path / "mix" / "metrics.json").read_text())["config"]["learning_rate"] == 0.5


def test_unwritable_output_is_a_user_error(env, tmp_path, capsys):
    root, e, _ = env
    blocker = tmp_path / "file"
    blocker.write_text("x")  # --out below a regular file cannot be created
    code, output = cli(["evaluate", e["e0"], "--base", str(root / "base"), "--tasks", "add", "--n", "1",
                        "--max-new-tokens", "2", "--out", str(blocker / "r.json")], capsys)
    assert_user_error(code, output, "r.json", "cannot write")


@pytest.fixture(scope="module")
def mixture_dir(env, tmp_path_factory):
    from loramix.mixture import MixtureConfig
    from loramix.train.router import RouterTrainConfig, train_router

    root, e, traces = env
    work = tmp_path_factory.mktemp("mixdir")
    experts = []
    for name in ("e0", "e1"):  # private copies: one gets edited below
        (work / name).mkdir()
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            (work / name / f).write_bytes((Path(e[name]) / f).read_bytes())
        experts.append(str(work / name))
    out = train_router(RouterTrainConfig(base=str(root / "base"), experts=experts, traces=str(traces),
                                         out=str(work / "mix"), max_steps=2, batch_size=2,
                                         mixture=MixtureConfig(attention_lora_rank=0),
                                         progress=False, save_steps=10))
    return out, experts


def test_evaluate_refuses_a_mixture_whose_experts_changed(env, mixture_dir, tmp_path, capsys):
    root, _, _ = env
    mix, experts = mixture_dir
    weights = Path(experts[1]) / "adapter_model.safetensors"
    original = weights.read_bytes()
    sd = load_file(str(weights))
    key = sorted(sd)[0]
    sd[key] = sd[key] * 1.001
    save_file(sd, str(weights))
    try:
        out = tmp_path / "report.json"
        code, output = cli(["evaluate", str(mix), "--base", str(root / "base"), "--tasks", "add", "--n", "1",
                            "--max-new-tokens", "2", "--out", str(out)], capsys)
        assert_user_error(code, output, str(weights), "sha256", "experts[1]")
        assert not out.exists()
    finally:
        weights.write_bytes(original)


def test_prompt_longer_than_the_context_is_refused(env, tmp_path, capsys):
    from transformers import AutoConfig

    root, e, _ = env
    ctx = AutoConfig.from_pretrained(root / "base").max_position_embeddings
    out = tmp_path / "report.json"
    code, output = cli(["evaluate", e["e0"], "--base", str(root / "base"), "--tasks", "add", "--n", "2",
                        "--max-new-tokens", str(ctx), "--out", str(out)], capsys)
    assert_user_error(code, output, "task 'add'", "prompt 0", f"max_new_tokens {ctx}", f"context of {ctx}")
    assert not out.exists()


def test_generate_checks_the_context_through_wrappers(env):
    """generate() refuses (LoramixError naming the prompt and lengths) for a bare model, a PeftModel
    and a MixtureModel; it never truncates silently."""
    from peft import PeftModel

    import loramix
    from loramix.errors import LoramixError
    from loramix.generation import context_length, generate
    from loramix.loading import load_model_and_tokenizer

    root, e, _ = env
    model, tok = load_model_and_tokenizer(root / "base")
    ctx = model.config.max_position_embeddings
    prompts = ["add: 1+1=", "add: " + "9" * (ctx - 20) + "="]
    n = len(tok(prompts[1], add_special_tokens=False)["input_ids"])
    assert n < ctx
    pm = PeftModel.from_pretrained(copy.deepcopy(model), e["e0"]).eval()
    mix = loramix.compose(copy.deepcopy(model), [e["e0"], e["e1"]]).eval()
    for m in (model, pm, mix):
        assert context_length(m) == ctx
        with pytest.raises(LoramixError, match=rf"prompt 1: {n} prompt tokens \+ max_new_tokens {ctx - n + 1} = "
                                               rf"{ctx + 1} exceeds the model's context of {ctx}"):
            generate(m, tok, prompts, max_new_tokens=ctx - n + 1)
    outs = generate(model, tok, prompts, max_new_tokens=ctx - n)  # exactly fits
    assert len(outs) == 2
    with pytest.raises(LoramixError, match="task 'x': prompt 1"):
        generate(model, tok, prompts, max_new_tokens=ctx - n + 1, label="task 'x'")


def test_training_tokenisation_refuses_too_long(env):
    from loramix.errors import LoramixError
    from loramix.train.data import tokenize_completion_only
    from loramix.loading import load_model_and_tokenizer

    root, _, _ = env
    _, tok = load_model_and_tokenizer(root / "base")
    with pytest.raises(LoramixError, match="exceeds max_length=8"):
        tokenize_completion_only(tok, "add: 12345678+1=", "<think>a long completion</think>", 8)


# --- the installed script, in a subprocess ------------------------------------------------------


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([LORAMIX, *args], capture_output=True, text=True, timeout=120, env=env)


def test_installed_cli_one_line_error_and_debug_traceback(env, tmp_path):
    root, e, traces = env
    args = router_args(root, traces, [e["e0"], e["wrong_hidden"]], tmp_path / "mix")
    res = run_script(args)
    assert_user_error(res.returncode, res.stdout + res.stderr, "wrong_hidden", "does not fit")
    assert not list(tmp_path.iterdir())
    res = run_script(["--debug", *args])
    assert res.returncode != 0 and "Traceback" in res.stderr and "AdapterError" in res.stderr
    assert not list(tmp_path.iterdir())


def test_installed_cli_tasks_verify_bad_line(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    res = run_script(["tasks", "verify", "add", "--data", str(f)])
    assert_user_error(res.returncode, res.stdout + res.stderr, "data.jsonl", "line 2")


@pytest.mark.parametrize("args, needle", [
    (["train-router", "--experts", "a,b", "--out", "X"], "Missing option '--traces'"),  # a missing option
    (["train-router", "--bogus", "1"], "No such option: --bogus"),  # an unknown option
    (["train-router", "--steps", "ten"], "Invalid value for '--steps'"),  # a bad value
    (["evalut"], "No such command 'evalut'. Did you mean 'evaluate'?"),  # a misspelt command
])
def test_usage_mistakes_print_the_usage_line_and_one_error_line(args, needle):
    res = run_script(args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 2 and lines[0].startswith("Usage: loramix"), res.stderr
    assert lines[1].startswith("error: ") and needle in lines[1], res.stderr


# --- bad input is refused before any model is loaded or built (issue 15) -------------------------


def run_script_in_home(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """The installed script with ``LORAMIX_HOME=home``. That the home stays empty is what shows the base
    was never loaded (building it writes there), not the wall time: no timed asserts in unit tests."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "LORAMIX_HOME": str(home)}
    return subprocess.run([LORAMIX, *args], capture_output=True, text=True, timeout=120, env=env)


def test_evaluate_default_with_an_unknown_task_fails_at_once_and_writes_nothing(tmp_path):
    """`evaluate default` used to load (so pretrain, minutes) the default base before reading the
    task names, and wrote it into the home cache."""
    home = tmp_path / "home"
    home.mkdir()
    res = run_script_in_home(["evaluate", "default", "--tasks", "nope", "--n", "1"], home)
    assert_user_error(res.returncode, res.stdout + res.stderr, "unknown task 'nope'", "add", "sort")
    assert not list(home.rglob("*"))


def test_train_remix_and_distill_with_an_unknown_task_fail_before_the_base(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    res = run_script_in_home(["train-remix", "--task", "nope", "--out", str(tmp_path / "remix"),
                                       "--steps", "1", "--quiet"], home)
    assert_user_error(res.returncode, res.stdout + res.stderr, "unknown task 'nope'", "add")
    res = run_script_in_home(["distill", "--experts", str(tmp_path / "e0"), "--tasks", "nope",
                                       "--out", str(tmp_path / "traces.jsonl"), "--quiet"], home)
    assert_user_error(res.returncode, res.stdout + res.stderr, "unknown task 'nope'", "add")
    assert [p.name for p in tmp_path.iterdir()] == ["home"] and not list(home.rglob("*"))


def test_bad_input_is_refused_before_the_model_loads(env, tmp_path, capsys, monkeypatch):
    """evaluate, analyze, train-remix and distill check task names, options and data files first:
    loading a model here fails the test."""
    import loramix.analysis
    import loramix.evaluate
    import loramix.loading
    import loramix.train.distill
    import loramix.train.remix

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for module in (loramix.loading, loramix.evaluate, loramix.analysis, loramix.train.remix, loramix.train.distill):
        for name in ("load_model_and_tokenizer", "resolve_base", "load_base_model", "load_base", "load_for_eval"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_model)
    root, e, traces = env
    base = ["--base", str(root / "base")]
    mix = tmp_path / "mix"  # only its config: never opened when the input is bad
    mix.mkdir()
    (mix / "mixture_config.json").write_text("{}")
    cases = [
        (["evaluate", e["e0"], *base, "--tasks", "add,nope"], ["unknown task 'nope'"]),
        (["evaluate", "default", "--tasks", "add", "--split", "exam"], ["unknown split 'exam'"]),
        (["evaluate", "default", "--tasks", "add", "--difficulty", "extreme"], ["unknown difficulty 'extreme'"]),
        (["evaluate", "default", "--tasks", "add", "--routing", "bogus"], ["unknown routing mode 'bogus'"]),
        (["evaluate", "default", "--tasks", "add", "--n", "0"], ["n must be at least 1"]),
        (["evaluate", "default", "--tasks", "add", "--out", str(tmp_path / "file" / "r.json")],
         ["r.json", "cannot write"]),
        (["evaluate", "default", "--tasks", "gsm8k"], ["gsm8k", "needs a data file"]),
        (["analyze", str(mix), *base, "--tasks", "nope", "--out", str(tmp_path / "a")], ["unknown task 'nope'"]),
        (["analyze", str(mix), *base, "--tasks", "add", "--out", str(tmp_path / "a"),
          "--train-log", str(tmp_path / "absent.json")], ["absent.json", "not found"]),
        (["analyze", str(tmp_path), *base, "--tasks", "add", "--out", str(tmp_path / "a")],
         ["not a loramix mixture folder"]),
        (["train-remix", *base, "--task", "add,nope", "--out", str(tmp_path / "remix"), "--quiet"],
         ["unknown task 'nope'"]),
        (["train-remix", *base, "--task", "nope", "--out", str(tmp_path / "remix"), "--quiet"],
         ["unknown task 'nope'"]),
        (["train-remix", *base, "--traces", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "remix"),
          "--quiet"], ["absent.jsonl", "not found"]),
        (["train-remix", *base, "--task", "add", "--difficulty", "extreme", "--out", str(tmp_path / "remix"),
          "--quiet"], ["unknown difficulty 'extreme'"]),
        (["distill", *base, "--experts", e["e0"], "--tasks", "nope", "--out", str(tmp_path / "t.jsonl"), "--quiet"],
         ["unknown task 'nope'"]),
        (["distill", *base, "--experts", str(tmp_path / "absent"), "--tasks", "add", "--out", str(tmp_path / "t.jsonl"),
          "--quiet"], ["absent", "not a PEFT adapter folder"]),
        (["distill", *base, "--experts", e["e0"], "--tasks", "add", "--difficulty", "extreme",
          "--out", str(tmp_path / "t.jsonl"), "--quiet"], ["unknown difficulty 'extreme'"]),
    ]
    (tmp_path / "file").write_text("x")
    for args, needles in cases:
        code, output = cli(args, capsys)
        assert_user_error(code, output, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mix"]  # nothing written
