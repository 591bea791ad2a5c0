"""Reading PEFT adapter folders: scales, mixed ranks and modules, and clear refusals."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import loramix
from loramix.errors import AdapterError, LoramixError
from loramix.experts import stack_module

from conftest import make_adapter, tiny_model


def test_scales_ranks_and_modules(llama_setup):
    model, paths = llama_setup
    e0, e1, e2 = loramix.load_experts(paths, model)
    m = "model.layers.0.mlp.gate_proj"
    assert (e0.modules[m].rank, e0.modules[m].scale) == (2, 4 / 2)
    assert (e1.modules[m].rank, e1.modules[m].scale) == (4, 6 / math.sqrt(4))  # rsLoRA
    assert "model.layers.0.mlp.down_proj" not in e2.modules
    stack = stack_module([e0, e1, e2], "model.layers.1.mlp.down_proj", 128, 64)
    assert stack.ranks == [2, 4, 0] and stack.A.shape == (3, 4, 128) and stack.scale[2] == 0
    assert e0.num_parameters == 2 * 2 * ((64 + 128) * 3)


def test_alpha_pattern_is_honoured(tmp_path):
    model = tiny_model()
    path = make_adapter(model, tmp_path / "pat", r=4, alpha=8, alpha_pattern={"down_proj": 2})
    e = loramix.load_expert(path, model)
    assert e.modules["model.layers.0.mlp.down_proj"].scale == 2 / 4
    assert e.modules["model.layers.0.mlp.up_proj"].scale == 8 / 4


def test_other_architecture_is_refused(tmp_path):
    qwen = tiny_model("qwen2")
    path = make_adapter(qwen, tmp_path / "qwen", r=2, alpha=2)
    with pytest.raises(AdapterError, match=r"qwen: auto_mapping.base_model_class: is Qwen2ForCausalLM, but the base model is LlamaForCausalLM"):
        loramix.load_expert(path, tiny_model("llama"))


def test_wrong_hidden_size_names_the_key(tmp_path):
    path = make_adapter(tiny_model(hidden=32), tmp_path / "small", r=2, alpha=2)
    with pytest.raises(AdapterError, match=r"small: base_model.model.model.layers.0.mlp.down_proj.lora_A.weight: shape"):
        loramix.load_expert(path, tiny_model(hidden=64))


def test_module_missing_from_base_is_refused(tmp_path):
    path = make_adapter(tiny_model(layers=3), tmp_path / "deep", r=2, alpha=2)
    with pytest.raises(AdapterError, match=r"layers.2.mlp.*not in the base model"):
        loramix.load_expert(path, tiny_model(layers=2))


def test_non_lora_adapter_is_refused(tmp_path):
    from peft import IA3Config, get_peft_model

    model = tiny_model()
    get_peft_model(copy.deepcopy(model), IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"])
                   ).save_pretrained(str(tmp_path / "ia3"))
    with pytest.raises(AdapterError, match=r"ia3: peft_type: is 'IA3'; only LORA"):
        loramix.load_expert(tmp_path / "ia3", model)


def test_missing_truncated_and_nonfinite_files(tmp_path, llama_setup):
    model, paths = llama_setup
    import shutil

    broken = shutil.copytree(paths[0], tmp_path / "broken")
    weights = broken / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match=r"broken: adapter_model.safetensors: corrupt or truncated"):
        loramix.load_expert(broken, model)
    weights.unlink()
    with pytest.raises(AdapterError, match=r"broken: adapter_model.safetensors: missing"):
        loramix.load_expert(broken, model)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"broken: adapter_config.json: not valid JSON"):
        loramix.load_expert(broken, model)
    with pytest.raises(AdapterError, match=r"nowhere: folder: not found"):
        loramix.load_expert(tmp_path / "nowhere", model)

    nan = shutil.copytree(paths[0], tmp_path / "nan")
    sd = load_file(str(nan / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    sd[key][0, 0] = float("inf")
    save_file(sd, str(nan / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=rf"nan: {key}: holds NaN or Inf"):
        loramix.load_expert(nan, model)


def test_bad_config_fields(tmp_path, llama_setup):
    model, paths = llama_setup
    import shutil

    bad = shutil.copytree(paths[0], tmp_path / "bad")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["lora_alpha"] = -1
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"bad: lora_alpha: must be a positive number"):
        loramix.load_expert(bad, model)


def test_duplicate_experts_are_refused(llama_setup, tmp_path):
    model, paths = llama_setup
    import shutil

    twin = shutil.copytree(paths[0], tmp_path / "twin")
    with pytest.raises(AdapterError, match=r"twin: adapter_model.safetensors: duplicate expert: same weights as"):
        loramix.load_experts([paths[0], twin], model)
    with pytest.raises(LoramixError, match="names must be unique"):
        loramix.load_experts(paths[:2], model, names=["a", "a"])
    with pytest.raises(AdapterError) as err:  # random B: a plain duplicate, no zero-delta hint
        loramix.load_experts([paths[0], twin], model)
    assert "zero deltas" not in str(err.value)


def test_duplicate_untrained_experts_say_they_never_moved(llama_setup, tmp_path):
    """Two adapters still at PEFT's initialisation (B = 0) are byte-identical; the error says why."""
    from peft import LoraConfig, get_peft_model

    model, _ = llama_setup
    for name in ("u1", "u2"):
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=True)
        torch.manual_seed(0)
        get_peft_model(copy.deepcopy(model), cfg).save_pretrained(tmp_path / name)
    with pytest.raises(AdapterError, match=r"duplicate expert: .*both are zero deltas"):
        loramix.load_experts([tmp_path / "u1", tmp_path / "u2"], model)
