"""Stage-1 expert training (`loramix.train`): GRPO / SFT / SFT+GRPO on a tiny random Llama, the output
folder, metrics.json, idempotent reruns, and resume after a real SIGKILL (bit-identical to an
uninterrupted run with the same seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loramix.errors import LoramixError
from loramix.tasks import Example, register_task, unregister_task

from conftest import digits_task
from loramix.train import ExpertTrainConfig, greedy_accuracy, greedy_completions, partial_dir, train_expert

TEST_TASK = "_digits"
MLP = ["gate_proj", "up_proj", "down_proj"]


DigitsTask = digits_task(TEST_TASK)
def _register():
    register_task(TEST_TASK, DigitsTask)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from loramix.base_model import tiny_random_llama

    _register()
    model, tok = tiny_random_llama(hidden=32, layers=2)
    path = tmp_path_factory.mktemp("train_base") / "base"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    yield path
    unregister_task(TEST_TASK)


def small(base_dir, out, **kw) -> ExpertTrainConfig:
    args = dict(task=TEST_TASK, base=str(base_dir), out=out, steps=4, batch_size=8, num_generations=4,
                n_train=16, n_eval=4, max_completion_length=12, save_steps=2, learning_rate=1e-2,
                rank=4, alpha=8, threads=1, progress=False, eval_batch_size=4)
    args.update(kw)
    return ExpertTrainConfig(**args)


def tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


METRIC_KEYS = {"task", "method", "seed", "accuracy_before", "accuracy_after", "reward_before", "reward_after",
               "reward_curve", "loss_curve", "train_seconds", "config", "base", "base_sha256", "loramix_version",
               "eval", "phases", "max_completion_length", "versions"}


def test_grpo_writes_a_peft_adapter_and_metrics(base_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import loramix
    from loramix.io import sha256_file

    out = tmp_path / "grpo"
    assert train_expert(small(base_dir, out)) == out
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "metrics.json"]
    assert not partial_dir(out).exists()

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and sorted(cfg["target_modules"]) == sorted(MLP)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    weights = tensors(out)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # it trained

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    expert = loramix.load_expert(out, model)
    assert {m.rsplit(".", 1)[-1] for m in expert.modules} == set(MLP)
    PeftModel.from_pretrained(model, str(out))

    m = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert m["method"] == "grpo" and m["seed"] == 0 and m["loramix_version"] == loramix.__version__
    assert [r["step"] for r in m["reward_curve"]] == [1, 2, 3, 4]
    assert all("reward" in r for r in m["reward_curve"])
    assert m["base_sha256"] == sha256_file(base_dir / "model.safetensors")
    assert 0 <= m["accuracy_before"] <= 1 and 0 <= m["accuracy_after"] <= 1
    assert m["eval"]["split"] == "validation" and m["eval"]["decoding"] == "greedy"
    assert m["config"]["rank"] == 4 and m["config"]["steps"] == 4 and m["train_seconds"] > 0

    # rerun on a complete folder: a no-op that says so
    stamp = (out / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    train_expert(small(base_dir, out))
    assert "already trained" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    # same folder, another config: refused, then --force retrains
    with pytest.raises(LoramixError, match="steps"):
        train_expert(small(base_dir, out, steps=3))
    train_expert(small(base_dir, out, steps=3, force=True))
    assert json.loads((out / "metrics.json").read_text())["config"]["steps"] == 3


def test_grpo_raises_the_reward_of_a_weak_model(base_dir, tmp_path):
    """The RL signal reaches the adapter: on an untrained model whose greedy completions hold no
    digits (reward 0 on this task), 40 GRPO steps raise the greedy reward and the sampled reward.
    (The same on the embedded base: README, "GRPO from the base".)"""
    out = train_expert(small(base_dir, tmp_path / "rl", steps=40, batch_size=16, num_generations=8, n_train=64,
                             n_eval=16, eval_batch_size=16, learning_rate=0.05, temperature=0.7, seed=2,
                             save_steps=100))
    m = json.loads((out / "metrics.json").read_text())
    assert m["reward_before"] < 0.05 and m["reward_after"] >= m["reward_before"] + 0.5
    curve = [r["reward"] for r in m["reward_curve"]]
    assert sum(curve[-10:]) > sum(curve[:10])


def test_sft_and_sft_warmup_then_grpo(base_dir, tmp_path):
    sft = train_expert(small(base_dir, tmp_path / "sft", method="sft", steps=3))
    m = json.loads((sft / "metrics.json").read_text())
    assert m["method"] == "sft" and m["reward_curve"] == []
    assert [r["step"] for r in m["loss_curve"]] == [1, 2, 3] and all(r["loss"] > 0 for r in m["loss_curve"])
    assert sorted(json.loads((sft / "adapter_config.json").read_text())["target_modules"]) == sorted(MLP)

    both = train_expert(small(base_dir, tmp_path / "both", sft_warmup_steps=2, steps=2))
    m = json.loads((both / "metrics.json").read_text())
    assert m["method"] == "sft+grpo" and m["config"]["sft_warmup_steps"] == 2
    assert [p["method"] for p in m["phases"]] == ["sft", "grpo"] and m["steps"] == 4
    assert len(m["loss_curve"]) == 2 and len(m["reward_curve"]) == 2
    assert tensors(both).keys() == tensors(sft).keys()  # the same LoraConfig


def test_grpo_from_an_sft_expert_equals_warmup_then_grpo(base_dir, tmp_path):
    """GRPO started from a finished SFT expert (`init_adapter`, what the pipeline does to train each
    SFT expert once) is the same run as SFT warm-up + GRPO in one command, reported as sft+grpo, with
    the SFT expert's time counted; the SFT expert itself is left untouched."""
    from loramix.io import sha256_file

    sft = train_expert(small(base_dir, tmp_path / "sft", method="sft", steps=2))
    sft_sha = sha256_file(sft / "adapter_model.safetensors")
    warm = train_expert(small(base_dir, tmp_path / "warm", sft_warmup_steps=2, steps=2))
    init = train_expert(small(base_dir, tmp_path / "init", init_adapter=sft, steps=2))
    a, b = tensors(warm), tensors(init)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sha256_file(sft / "adapter_model.safetensors") == sft_sha
    m, ms = json.loads((init / "metrics.json").read_text()), json.loads((sft / "metrics.json").read_text())
    assert m["method"] == "sft+grpo" and m["steps"] == 4 and [p["method"] for p in m["phases"]] == ["grpo"]
    assert m["init_adapter"]["adapter_sha256"] == sft_sha and m["init_adapter"]["method"] == "sft"
    assert m["train_seconds"] == pytest.approx(m["phases"][0]["train_seconds"] + ms["train_seconds"], abs=0.02)

    with pytest.raises(LoramixError, match="init_adapter.*not both"):
        train_expert(small(base_dir, tmp_path / "x", init_adapter=sft, sft_warmup_steps=1))
    with pytest.raises(LoramixError, match="init_adapter.*r is 4.*rank=8"):
        train_expert(small(base_dir, tmp_path / "x", init_adapter=sft, rank=8))
    with pytest.raises(LoramixError, match="not a PEFT adapter folder"):
        train_expert(small(base_dir, tmp_path / "x", init_adapter=tmp_path))
    assert not (tmp_path / "x").exists()


def test_sft_loss_is_on_completion_tokens_only(base_dir, tmp_path):
    """The SFT dataset is prompt/completion, so TRL masks the prompt out of the labels."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    ds = Dataset.from_dict({"prompt": ["digits: 12\n"], "completion": ["ab"]})
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to="none", use_cpu=True,
                     bf16=False, max_length=64)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0].tolist()
    kept = [t for t in labels if t != -100]
    assert tok.decode(kept) == "ab" + tok.eos_token


def test_resume_after_sigkill_is_bit_identical(base_dir, tmp_path):
    ref = train_expert(small(base_dir, tmp_path / "ref"))

    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from transformers import TrainerCallback
        import test_train_experts as t
        from loramix.train import train_expert
        t._register()

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

        train_expert(t.small({str(base_dir)!r}, {str(out)!r}), callbacks=[Kill()])
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()  # nothing half-written under the final name
    ckpts = partial_dir(out) / "grpo_checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]

    train_expert(small(base_dir, out))
    m = json.loads((out / "metrics.json").read_text())
    assert m["phases"][0]["resumed_from"] == "checkpoint-2"
    assert [r["step"] for r in m["reward_curve"]] == [1, 2, 3, 4]  # log history restored from the checkpoint
    a, b = tensors(ref), tensors(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert m["reward_curve"] == json.loads((ref / "metrics.json").read_text())["reward_curve"]


def test_user_errors_name_the_field(base_dir, tmp_path):
    with pytest.raises(LoramixError, match="batch_size"):
        train_expert(small(base_dir, tmp_path / "x", batch_size=6))
    with pytest.raises(LoramixError, match="sft_warmup_steps"):
        train_expert(small(base_dir, tmp_path / "x", method="sft", sft_warmup_steps=2))
    with pytest.raises(LoramixError, match="method"):
        train_expert(small(base_dir, tmp_path / "x", method="ppo"))
    with pytest.raises(LoramixError, match="unknown task"):
        train_expert(small(base_dir, tmp_path / "x", task="nope"))
    with pytest.raises(LoramixError, match="--base"):
        train_expert(small(tmp_path / "missing", tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LoramixError, match="not a trained expert"):
        train_expert(small(base_dir, tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_greedy_accuracy_batched_matches_single(base_dir):
    from loramix.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base_dir)
    task = DigitsTask()
    exs = task.examples("validation", 5)
    exs = exs[:2] + [Example("digits: 123456789\n", "9", None, TEST_TASK)] + exs[2:]  # a longer prompt
    batched = greedy_completions(model, tok, [e.prompt for e in exs], max_new_tokens=8, batch_size=6)
    single = [greedy_completions(model, tok, [e.prompt], max_new_tokens=8)[0] for e in exs]
    assert batched == single

    class Never(DigitsTask):
        def is_correct(self, completion, ex):
            return False

    class FirstTwo(DigitsTask):  # accuracy must count exactly the examples the verifier accepts
        def is_correct(self, completion, ex):
            return ex in exs[:2]

    assert greedy_accuracy(model, tok, task, exs, max_new_tokens=4, batch_size=4) == 1.0
    assert greedy_accuracy(model, tok, Never(), exs, max_new_tokens=4, batch_size=4) == 0.0
    assert greedy_accuracy(model, tok, FirstTwo(), exs, max_new_tokens=4, batch_size=4) == pytest.approx(2 / 6)


def test_cli_train_expert(base_dir, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    out = tmp_path / "cli"
    args = ["train-expert", "--task", TEST_TASK, "--base", str(base_dir), "--out", str(out), "--method", "sft",
            "--steps", "2", "--batch-size", "4", "--n-train", "8", "--n-eval", "2", "--max-completion-length", "8",
            "--rank", "2", "--alpha", "4", "--threads", "1", "--quiet"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "sft" and m["config"]["rank"] == 2
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "already trained" in res.output
    res = runner.invoke(app, args[:-1] + ["--method", "grpo", "--batch-size", "6", "--num-generations", "4"])
    assert isinstance(res.exception, LoramixError) and "batch_size" in str(res.exception)
    # --mixed-share reaches the config: GRPO without an SFT warm-up has no use for it
    res = runner.invoke(app, args[:-1] + ["--method", "grpo", "--num-generations", "4", "--mixed-share", "0.3"])
    assert isinstance(res.exception, LoramixError) and "mixed_share" in str(res.exception)


def test_cli_defaults_match_the_config():
    """The CLI repeats the config defaults (so `--help` shows them); keep them in sync."""
    import inspect

    from loramix.cli import train_expert_cmd

    names = {"lr": "learning_rate", "sft_lr": "sft_learning_rate"}
    defaults = {f.name: f.default for f in fields(ExpertTrainConfig)}
    for p in inspect.signature(train_expert_cmd).parameters.values():
        key = names.get(p.name, p.name)
        if key in defaults and p.default.default is not ...:
            assert p.default.default == defaults[key], p.name
