"""Stage 2b: router training lowers the loss, leaves every expert bit-identical, and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import loramix
from loramix.errors import DataError
from loramix.train.data import read_traces
from loramix.mixture import MixtureConfig
from loramix.train.router import RouterTrainConfig, train_router

from conftest import addition_traces, make_adapter, saved_tiny_base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    model, _ = saved_tiny_base(root, hidden=64)
    experts = [make_adapter(model, root / f"e{i}", r=4, alpha=8, seed=20 + i) for i in range(3)]
    return root, experts, addition_traces(root / "traces.jsonl", 4, 4)


def cfg(setup, out, router="hard", **kw):
    root, experts, traces = setup
    base = dict(base=str(root / "base"), experts=experts, traces=str(traces), out=str(out), batch_size=8,
                max_steps=12, save_steps=4, logging_steps=2, learning_rate=5e-2,
                mixture=MixtureConfig(router=router, attention_lora_rank=2),
                progress=False, warmup_ratio=0.0, lr_scheduler_type="constant")
    base.update(kw)
    return RouterTrainConfig(**base)


def test_router_training_lowers_loss_and_keeps_experts_bit_identical(setup, tmp_path):
    out = train_router(cfg(setup, tmp_path / "mix"))
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert losses[-1] < losses[0]
    assert metrics["trainable_parameters"] == metrics["parameters"]["total"] > 0
    root, experts, _ = setup
    from transformers import AutoModelForCausalLM

    mix = loramix.load_mixture(out, AutoModelForCausalLM.from_pretrained(root / "base"))
    for i, folder in enumerate(experts):
        sd = load_file(f"{folder}/adapter_model.safetensors")
        key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
        routed = mix.model.model.layers[1].mlp.up_proj
        assert torch.equal(routed.expert_A[i, :4], sd[key])
    assert not (tmp_path / "mix.partial").exists()


def test_resume_matches_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    import loramix.train.router as mod  # the callback is looked up there

    full = train_router(cfg(setup, tmp_path / "full", router="gumbel"))
    original = mod.RouterStepCallback
    monkeypatch.setattr(mod, "RouterStepCallback", _StepAndInterrupt)
    with pytest.raises(KeyboardInterrupt):
        train_router(cfg(setup, tmp_path / "cut", router="gumbel"))
    assert not (tmp_path / "cut").exists()
    assert (tmp_path / "cut.partial" / "checkpoint-4").is_dir()
    monkeypatch.setattr(mod, "RouterStepCallback", original)
    cut = train_router(cfg(setup, tmp_path / "cut", router="gumbel"))
    assert json.loads((cut / "metrics.json").read_text())["resumed"] is True
    a, b = load_file(str(full / "mixture.safetensors")), load_file(str(cut / "mixture.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _StepAndInterrupt(TrainerCallback):
    """The router-step callback, plus an interruption after step 6."""

    def on_step_begin(self, args, state, control, model=None, **kw):
        getattr(model, "module", model).set_router_step(state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 6:
            raise KeyboardInterrupt


def test_bad_trace_rows_name_the_line(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"t.jsonl: line 2: field 'completion' missing"):
        read_traces(f)
    f.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"t.jsonl: line 2: invalid JSON"):
        read_traces(f)


def test_router_learning_rate_gets_its_own_param_group(setup, tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from loramix.train.trainer import MixtureTrainer

    root, experts, _ = setup
    mix = loramix.compose(AutoModelForCausalLM.from_pretrained(root / "base"), experts, attention_lora_rank=2)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to=[], use_cpu=True)
    opt = MixtureTrainer(model=mix, args=args, router_learning_rate=0.05).create_optimizer()
    lrs = sorted((g["lr"], sum(p.numel() for p in g["params"])) for g in opt.param_groups)
    assert lrs == [(1e-3, mix.parameter_report()["attention_lora"]), (0.05, mix.parameter_report()["router"])]


def test_cli_per_layer_router_and_router_options(setup, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    root, experts, traces = setup
    out = tmp_path / "cli_mix"
    res = CliRunner().invoke(app, [
        "train-router", "--base", str(root / "base"), "--experts", ",".join(experts), "--traces", str(traces),
        "--out", str(out), "--steps", "2", "--batch-size", "8", "--attention-rank", "0", "--per-layer-router",
        "--router-lr", "0.02", "--load-balance", "0.01", "--ste", "chosen", "--quiet"])
    assert res.exit_code == 0, res.output
    conf = json.loads((out / "mixture_config.json").read_text())
    assert conf["shared_router"] is False
    assert conf["router_options"]["ste"] == "chosen"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["router_learning_rate"] == 0.02
    assert metrics["config"]["mixture"]["load_balance_coef"] == 0.01
    from transformers import AutoModelForCausalLM

    mix = loramix.load_mixture(out, AutoModelForCausalLM.from_pretrained(root / "base"))
    assert len(mix.routers) == len(mix.sites) == 2
