"""Issue 7: reproducible on CPU (same seed and config -> same router weights, routing decisions and
evaluation numbers), and every output records the loramix version, config, seed and input sha256s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loramix
from loramix.io import sha256_file

from conftest import addition_traces, make_adapter, saved_tiny_base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    model, _ = saved_tiny_base(root)
    experts = [make_adapter(model, root / f"e{i}", r=2, alpha=4, seed=50 + i) for i in range(2)]
    return root, experts, addition_traces(root / "traces.jsonl", 3, 3, task="add")


def _router(setup, out, seed=0):
    from loramix.mixture import MixtureConfig
    from loramix.train.router import RouterTrainConfig, train_router

    root, experts, traces = setup
    return train_router(RouterTrainConfig(base=str(root / "base"), experts=experts, traces=str(traces), out=str(out),
                                          mixture=MixtureConfig(router="gumbel", attention_lora_rank=2),
                                          max_steps=4, batch_size=3,
                                          save_steps=10, learning_rate=5e-2, seed=seed, progress=False))


def test_same_seed_same_router_routing_and_evaluation(setup, tmp_path):
    from loramix.evaluate import evaluate_path

    root, experts, _ = setup
    a, b = _router(setup, tmp_path / "a"), _router(setup, tmp_path / "b")
    assert (a / "mixture.safetensors").read_bytes() == (b / "mixture.safetensors").read_bytes()
    other = load_file(str(_router(setup, tmp_path / "c", seed=1) / "mixture.safetensors"))
    assert any(not torch.equal(v, load_file(str(a / "mixture.safetensors"))[k]) for k, v in other.items())

    # same routing decisions
    from loramix.loading import load_model_and_tokenizer

    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    traces = []
    for folder in (a, b):
        model, _ = load_model_and_tokenizer(root / "base")
        mix = loramix.load_mixture(folder, model).eval()
        with torch.no_grad():
            mix(ids)
        traces.append(mix.routing_trace())
    assert [t.site for t in traces[0]] == [t.site for t in traces[1]]
    for x, y in zip(*traces):
        assert torch.equal(x.expert_ids, y.expert_ids) and torch.equal(x.probs, y.probs)

    # two evaluations give identical JSON (greedy, and sampled with a seed)
    for extra in ({}, {"do_sample": True, "temperature": 1.0, "seed": 3}):
        reports = []
        for n in range(2):
            out = tmp_path / f"eval{n}.json"
            evaluate_path(a, ["add", "sort"], base=str(root / "base"), out=out, n=3, max_new_tokens=6,
                          batch_size=2, **extra)
            reports.append(out.read_text())
        assert reports[0] == reports[1]


def _digests(experts):
    return {str(Path(e) / "adapter_model.safetensors"): sha256_file(Path(e) / "adapter_model.safetensors")
            for e in experts}


def test_outputs_record_version_config_seed_and_input_digests(setup, tmp_path):
    from loramix.baselines.merges import merge_experts
    from loramix.train.multitask import MultitaskConfig, train_multitask
    from loramix.train.remix import ReMixConfig, train_remix

    root, experts, traces = setup
    traces_digest = {str(traces): sha256_file(traces)}

    m = json.loads((_router(setup, tmp_path / "router", seed=7) / "metrics.json").read_text())
    assert m["loramix_version"] == loramix.__version__ and m["seed"] == 7 and m["config"]["seed"] == 7
    assert m["inputs_sha256"] == {**traces_digest, **_digests(experts)}

    out = train_remix(ReMixConfig(out=tmp_path / "remix", base=str(root / "base"), traces=traces, n_experts=2, top_k=1,
                                  rank=2, samples=2, steps=2, batch_size=2, save_steps=10, logging_steps=1,
                                  max_length=64, seed=5))
    m = json.loads((out / "metrics.json").read_text())
    assert m["loramix_version"] == loramix.__version__ and m["seed"] == 5 and m["config"]["steps"] == 2
    assert m["inputs_sha256"] == traces_digest and m["base_weights_sha256"]

    out = merge_experts(str(root / "base"), experts, "linear", tmp_path / "merged", seed=4)
    info = json.loads((out / "merge_info.json").read_text())
    assert info["loramix_version"] == loramix.__version__ and info["seed"] == 4 and info["method"] == "linear"
    assert [d["adapter_model.safetensors"] for d in info["experts_sha256"]] == list(_digests(experts).values())

    out = train_multitask(MultitaskConfig(base=str(root / "base"), traces=str(traces), out=str(tmp_path / "mt"),
                                          rank=2, steps=1, batch_size=2, max_length=64, seed=6, progress=False))
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["loramix_version"] == loramix.__version__ and m["seed"] == 6 and m["config"]["rank"] == 2
    assert m["inputs_sha256"] == traces_digest


def test_distill_writes_a_meta_sidecar(setup, tmp_path):
    from loramix.train.distill import DistillConfig, distill

    root, experts, _ = setup
    out = distill(DistillConfig(base=str(root / "base"), experts=experts[:1], tasks=["add"],
                                out=str(tmp_path / "t.jsonl"), n_prompts=2, samples=0, max_new_tokens=4,
                                batch_size=2, seed=9), progress=False)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["loramix_version"] == loramix.__version__ and meta["seed"] == 9
    assert meta["config"]["tasks"] == ["add"] and meta["config"]["n_prompts"] == 2
    assert meta["inputs_sha256"][str(Path(experts[0]) / "adapter_model.safetensors")] == sha256_file(
        Path(experts[0]) / "adapter_model.safetensors")
    assert meta["base_weights_sha256"] and meta["rows"] == len(out.read_text().splitlines())
