"""Mixtures that move: relative expert paths, --experts-dir (by name and by sha256), export to one
self-contained folder, distinct missing/changed errors, and `loramix compose` of user adapters."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import loramix
from conftest import make_adapter, saved_tiny_base
from loramix.errors import LoramixError
from loramix.experts import ExpertChangedError, ExpertNotFoundError
from loramix.mixture import recorded_path


def ids(batch=2, seq=7, vocab=97, seed=3):
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _saved_mixture(model, paths, mix_dir) -> torch.Tensor:
    """A topk mixture with non-trivial router and attention LoRA saved at ``mix_dir``; its logits."""
    mix = loramix.compose(model, paths, router="topk", top_k=2, attention_lora_rank=2, seed=0).eval()
    for p in mix.parameters():
        if p.requires_grad:
            p.normal_(0, 0.3)
    mix.save_pretrained(mix_dir)
    return mix(input_ids=ids()).logits


def _copy_experts(paths, where: Path) -> list[Path]:
    return [Path(shutil.copytree(p, where / f"x{i}")) for i, p in enumerate(paths)]


@torch.no_grad()
def test_moving_the_common_root_keeps_the_mixture_whole(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    root = tmp_path / "tiny"
    local = _copy_experts(paths, root / "experts")
    want = _saved_mixture(model, local, root / "mixtures" / "hard")
    saved = json.loads((root / "mixtures" / "hard" / "mixture_config.json").read_text())
    assert [e["path"] for e in saved["experts"]] == ["../../experts/x0", "../../experts/x1", "../../experts/x2"]
    assert all(set(e["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"} for e in saved["experts"])
    shutil.move(str(root), str(tmp_path / "tiny_moved"))  # the recorded absolute paths are gone too
    again = loramix.load_mixture(tmp_path / "tiny_moved" / "mixtures" / "hard", base).eval()
    assert torch.equal(again(input_ids=ids()).logits, want)
    assert again.experts[1].path == tmp_path / "tiny_moved" / "experts" / "x1"


def test_paths_without_a_common_project_root_stay_absolute(tmp_path):
    assert recorded_path("/usr", tmp_path / "mix") == "/usr"
    assert recorded_path(Path.home() / "a", Path.home() / "b" / "mix") == str((Path.home() / "a").resolve())
    assert recorded_path(tmp_path / "e" / "x", tmp_path / "m") == "../e/x"


@torch.no_grad()
def test_old_mixture_with_absolute_paths_still_loads(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    want = _saved_mixture(model, paths, tmp_path / "mix")
    cfg_path = tmp_path / "mix" / "mixture_config.json"
    cfg = json.loads(cfg_path.read_text())
    for e in cfg["experts"]:  # as format 2 wrote them before relative paths
        e["path"] = str(Path(e.pop("absolute_path", None) or (tmp_path / "mix" / e["path"])).resolve())
    cfg_path.write_text(json.dumps(cfg))
    assert torch.equal(loramix.load_mixture(tmp_path / "mix", base).eval()(input_ids=ids()).logits, want)


@torch.no_grad()
def test_export_is_self_contained(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    local = _copy_experts(paths, tmp_path / "src" / "adapters")
    want = _saved_mixture(model, local, tmp_path / "src" / "mix")
    out = loramix.export_mixture(tmp_path / "src" / "mix", tmp_path / "exported")
    shutil.rmtree(tmp_path / "src")  # the original mixture and experts are gone
    shutil.move(str(out), str(tmp_path / "elsewhere"))
    again = loramix.load_mixture(tmp_path / "elsewhere", base).eval()
    assert torch.equal(again(input_ids=ids()).logits, want)
    cfg = json.loads((tmp_path / "elsewhere" / "mixture_config.json").read_text())
    assert [e["path"] for e in cfg["experts"]] == ["experts/x0", "experts/x1", "experts/x2"]
    assert not any("absolute_path" in e for e in cfg["experts"])
    card = (tmp_path / "elsewhere" / "README.md").read_text()
    for e in cfg["experts"]:
        assert f"| {e['name']} | {e['path']} |" in card and e["sha256"]["adapter_model.safetensors"] in card
    assert "| 2 | x2 | experts/x2 | 8 | 8 | gate_proj, up_proj |" in card  # rank, alpha, targets
    assert "- kind: topk" in card and "- top_k: 2" in card and "rank 2" in card
    assert not list(tmp_path.glob(".elsewhere*")) and not list(tmp_path.glob(".exported*"))  # no temp left


def test_export_refuses_changed_expert_and_existing_out(fresh, tmp_path):
    model, paths = fresh
    local = _copy_experts(paths, tmp_path / "adapters")
    loramix.compose(model, local, router="hard").save_pretrained(tmp_path / "mix")
    (tmp_path / "taken").mkdir()
    with pytest.raises(LoramixError, match="taken: --out: already exists"):
        loramix.export_mixture(tmp_path / "mix", tmp_path / "taken")
    _perturb(local[0])
    with pytest.raises(ExpertChangedError):
        loramix.export_mixture(tmp_path / "mix", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@torch.no_grad()
def test_experts_dir_finds_moved_experts_by_name_then_by_hash(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    local = _copy_experts(paths, tmp_path / "old")
    want = _saved_mixture(model, local, tmp_path / "mix")
    shutil.move(str(tmp_path / "old"), str(tmp_path / "new"))
    with pytest.raises(ExpertNotFoundError, match=r"expert x0 not found at .*old/x0.*pass --experts-dir"):
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base))
    by_name = loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base), experts_dir=tmp_path / "new").eval()
    assert torch.equal(by_name(input_ids=ids()).logits, want)
    (tmp_path / "new" / "x1").rename(tmp_path / "new" / "renamed")  # no name match left: found by sha256
    (tmp_path / "new" / "x0").rename(tmp_path / "new" / "x2_swapped")  # a misleading name does not fool it
    by_hash = loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base), experts_dir=tmp_path / "new").eval()
    assert [e.path.name for e in by_hash.experts] == ["x2_swapped", "renamed", "x2"]
    assert torch.equal(by_hash(input_ids=ids()).logits, want)


def _perturb(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = folder / "adapter_model.safetensors"
    sd = load_file(str(f))
    key = next(iter(sd))
    sd[key] = sd[key] * 1.01
    save_file(sd, str(f))


def test_missing_and_changed_experts_are_different_errors(fresh, tmp_path):
    model, paths = fresh
    base = copy.deepcopy(model)
    local = _copy_experts(paths, tmp_path / "adapters")
    loramix.compose(model, local, router="hard").save_pretrained(tmp_path / "mix")
    weights = (local[1] / "adapter_model.safetensors").read_bytes()
    _perturb(local[1])
    with pytest.raises(ExpertChangedError, match=r"x1/adapter_model.safetensors: sha256 differs.*experts\[1\]") as err:
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base))
    assert not isinstance(err.value, ExpertNotFoundError)
    (local[1] / "adapter_model.safetensors").unlink()
    with pytest.raises(ExpertNotFoundError, match=r"expert x1 not found at .*x1/adapter_model.safetensors.*--experts-dir") as err:
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base), accept_changed_experts=True)
    assert "sha256 differs" not in str(err.value)
    shutil.rmtree(local[2])
    (local[1] / "adapter_model.safetensors").write_bytes(weights)  # x1 is back; x2 is gone
    with pytest.raises(ExpertNotFoundError, match=r"expert x2 not found at .*x2 .*experts\[2\].*--experts-dir"):
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base), accept_changed_experts=True)
    with pytest.raises(LoramixError, match="--experts-dir: not a folder"):
        loramix.load_mixture(tmp_path / "mix", copy.deepcopy(base), experts_dir=tmp_path / "nowhere")


@pytest.fixture
def tiny_folders(tmp_path):
    """A saved tiny base (with tokenizer) and two PEFT adapters trained on nothing but made random."""
    model, _ = saved_tiny_base(tmp_path)
    adapters = [make_adapter(model, tmp_path / "mine" / "math", r=4, alpha=8, seed=1),
                make_adapter(model, tmp_path / "mine" / "code", r=2, alpha=2, seed=2, targets=["up_proj", "down_proj"])]
    return tmp_path / "base", adapters


@torch.no_grad()
def test_compose_cli_matches_peft_for_each_forced_expert(tiny_folders, tmp_path):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from loramix.cli import app

    base, adapters = tiny_folders
    res = CliRunner().invoke(app, ["compose", "--base", str(base), "--experts", ",".join(adapters), "--router", "hard",
                                   "--seed", "3", "--out", str(tmp_path / "mix")])
    assert res.exit_code == 0, (res.output, res.exception)
    mix = loramix.load_mixture(tmp_path / "mix", AutoModelForCausalLM.from_pretrained(base)).eval()
    assert mix.expert_names == ["math", "code"] and mix.mixture_config.attention_lora_rank == 0
    x = ids(vocab=40)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=x).logits
    for i, adapter in enumerate(adapters):
        with mix.force_expert(i):
            ours = mix(input_ids=x).logits
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()(input_ids=x).logits
        assert (ours - ref).abs().max().item() < 1e-5, i
        assert (ours - plain).abs().max().item() > 1e-3  # the expert really acts
    # the router is the seeded fresh one compose(seed=3) makes
    again = loramix.compose(AutoModelForCausalLM.from_pretrained(base), adapters, router="hard", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again.routers.state_dict().values(), mix.routers.state_dict().values()))


def test_compose_cli_refuses_a_folder_that_is_not_an_adapter(tiny_folders, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    base, adapters = tiny_folders
    res = CliRunner().invoke(app, ["compose", "--base", str(base), "--experts", f"{adapters[0]},{base}",
                                   "--out", str(tmp_path / "mix")])
    assert isinstance(res.exception, LoramixError) and "not a PEFT adapter folder" in str(res.exception)
    assert not (tmp_path / "mix").exists()


def test_load_for_eval_and_evaluate_cli_take_experts_dir(tiny_folders, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app
    from loramix.evaluate import load_for_eval

    base, adapters = tiny_folders
    loramix.compose_folders(base, adapters, tmp_path / "mix", seed=0)
    shutil.move(str(tmp_path / "mine"), str(tmp_path / "moved"))
    with pytest.raises(ExpertNotFoundError):
        load_for_eval(tmp_path / "mix")
    model, _tok, kind = load_for_eval(tmp_path / "mix", experts_dir=tmp_path / "moved")  # base: the recorded one
    assert kind == "mixture" and [e.path for e in model.experts] == [tmp_path / "moved" / "math",
                                                                      tmp_path / "moved" / "code"]
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "mix"), "--tasks", "add", "--n", "1",
                                   "--max-new-tokens", "2", "--experts-dir", str(tmp_path / "moved")])
    assert res.exit_code == 0, (res.output, res.exception)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "mix"), "--out", str(tmp_path / "exp"),
                                   "--experts-dir", str(tmp_path / "moved")])
    assert res.exit_code == 0, (res.output, res.exception)
    shutil.rmtree(tmp_path / "moved")
    model, _tok, _kind = load_for_eval(tmp_path / "exp")
    assert [e.path for e in model.experts] == [tmp_path / "exp" / "experts" / "math", tmp_path / "exp" / "experts" / "code"]


def test_analyze_finds_moved_experts_with_experts_dir(tiny_folders, tmp_path):
    """`loramix analyze` takes --experts-dir like evaluate and generate: a mixture whose experts moved
    is analysed from their new folder, and without it the error says what to pass."""
    from typer.testing import CliRunner

    from loramix.cli import app

    base, adapters = tiny_folders
    runner = CliRunner()
    res = runner.invoke(app, ["compose", "--base", str(base), "--experts", ",".join(adapters), "--router", "hard",
                              "--out", str(tmp_path / "mix")])
    assert res.exit_code == 0, (res.output, res.exception)
    shutil.move(str(tmp_path / "mine"), str(tmp_path / "moved"))
    args = ["analyze", str(tmp_path / "mix"), "--tasks", "add", "--n", "2", "--max-new-tokens", "4",
            "--expert-for", "add=0", "--out", str(tmp_path / "analysis")]
    res = runner.invoke(app, args)
    assert isinstance(res.exception, ExpertNotFoundError) and "--experts-dir" in str(res.exception)
    assert not (tmp_path / "analysis").exists()
    res = runner.invoke(app, [*args, "--experts-dir", str(tmp_path / "moved")])
    assert res.exit_code == 0, (res.output, res.exception)
    analysis = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert list(analysis["tasks"]) == ["add"] and analysis["expert_for_task"] == {"add": 0}
    assert analysis["mixture"]["experts"] == ["math", "code"]
