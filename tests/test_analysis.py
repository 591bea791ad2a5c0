"""loramix.analysis: the routing metrics on hand-made tensors, and the analysis folder end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from loramix.analysis import (analyze_mixture, ess, load_train_log, mass_stats, own_mass, routing_accuracy,
                              routing_shares, token_experts, tokens_html, top_expert)
from loramix.errors import DataError, LoramixError
from loramix.evaluate import RoutingRecord, evaluate_model, load_for_eval

MLP = ["gate_proj", "up_proj", "down_proj"]


# --- pure metrics -------------------------------------------------------------------------------------


def test_ess_known_values():
    assert ess(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert ess(torch.tensor([0.5, 0.5])) == pytest.approx(2.0)
    assert ess(torch.full((4,), 0.25)) == pytest.approx(4.0)
    assert ess(torch.tensor([3.0, 3.0, 0.0])) == pytest.approx(2.0)  # scale-free
    assert ess(torch.tensor([0.6, 0.4])) == pytest.approx(1 / 0.52)
    batch = ess(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert torch.allclose(batch, torch.tensor([1.0, 2.0]))


def test_mass_stats_top2_normalised():
    w = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    p = torch.tensor([[0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
    m = mass_stats(w, p)
    h1 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert m["max_mass"] == pytest.approx(0.6)
    assert m["entropy"] == pytest.approx((h1 + math.log(2)) / 2)
    assert m["ess_token"] == pytest.approx((1 / 0.58 + 2.0) / 2)
    assert m["ess_of_mean"] == pytest.approx(1 / 0.52)  # pi = [0.6, 0.4, 0]
    assert m["prob_entropy"] == pytest.approx((h1 + math.log(2)) / 2)
    assert m["tokens"] == 2


def test_mass_stats_hard_soft_and_unnormalised_weights():
    # hard top-1: unit weight, so all mass on one expert, but the router probs still spread
    m = mass_stats(torch.ones(3, 1), torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
    assert m["max_mass"] == 1.0 and m["entropy"] == 0.0 and m["ess_token"] == 1.0
    assert m["ess_of_mean"] == pytest.approx(1 / (0.8 ** 2 / 1.5 ** 2 + 0.7 ** 2 / 1.5 ** 2))
    # ReMix: constant weight omega per chosen expert -> normalised to 1/k
    m = mass_stats(torch.full((4, 2), 0.125), torch.full((4, 8), 0.125))
    assert m["max_mass"] == pytest.approx(0.5) and m["ess_token"] == pytest.approx(2.0)
    assert m["ess_of_mean"] == pytest.approx(8.0)
    # soft dense: the weights are the probs, max mass is the max prob
    probs = torch.tensor([[0.71, 0.2, 0.09]])
    assert mass_stats(probs, probs)["max_mass"] == pytest.approx(0.71)
    # a mask drops padding tokens
    w = torch.tensor([[[1.0], [1.0]]])
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert mass_stats(w, p, mask=torch.tensor([[True, False]]))["ess_of_mean"] == pytest.approx(1.0)
    assert mass_stats(w, p)["ess_of_mean"] == pytest.approx(2.0)


def test_routing_shares_known_values():
    ids = torch.tensor([[0], [1], [1], [2]])
    assert routing_shares(ids, torch.ones(4, 1), 3).tolist() == pytest.approx([0.25, 0.5, 0.25])
    ids2 = torch.tensor([[0, 1], [1, 2]])
    w2 = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    assert routing_shares(ids2, w2, 4).tolist() == pytest.approx([0.25, 0.625, 0.125, 0.0])
    assert routing_shares(ids2, w2 * 3, 4).tolist() == pytest.approx([0.25, 0.625, 0.125, 0.0])
    mask = torch.tensor([False, True])
    assert routing_shares(ids2, w2, 3, mask).tolist() == pytest.approx([0.0, 0.75, 0.25])
    s = routing_shares(torch.randint(0, 5, (3, 7, 2)), torch.rand(3, 7, 2), 5)
    assert float(s.sum()) == pytest.approx(1.0)


def test_routing_accuracy_and_own_mass():
    ids = torch.tensor([[0], [1], [1], [2]])
    w = torch.ones(4, 1)
    assert routing_accuracy(ids, w, 1) == 0.5
    assert routing_accuracy(ids, w, torch.tensor([0, 1, -1, -1])) == 1.0
    assert routing_accuracy(ids, w, torch.tensor([-1, -1, -1, -1])) is None
    assert routing_accuracy(ids, w, 1, mask=torch.tensor([False, True, True, True])) == pytest.approx(2 / 3)
    # top-2: the top chosen expert is the one with the larger weight; ties go to the first listed
    ids2 = torch.tensor([[0, 1], [1, 0], [2, 1]])
    w2 = torch.tensor([[0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])
    assert top_expert(ids2, w2).tolist() == [1, 1, 2]
    assert routing_accuracy(ids2, w2, 1) == pytest.approx(2 / 3)
    assert own_mass(ids2, w2, 1) == pytest.approx((0.6 + 0.5 + 0.1) / 3)


def test_token_experts_layer_and_majority():
    ids = torch.tensor([[[0], [1], [2]], [[1], [1], [0]], [[1], [0], [0]]])  # [L=3, N=3, 1]
    rec = RoutingRecord("t", 0, 0, [5, 6, 7], 2, ["a", "b", "c"], ids, torch.ones(3, 3, 1), torch.zeros(3, 3, 3))
    assert token_experts(rec, 0).tolist() == [0, 1, 2]
    assert token_experts(rec, -1).tolist() == [1, 0, 0]
    assert token_experts(rec).tolist() == [1, 1, 0]
    with pytest.raises(LoramixError):
        token_experts(rec, 3)


def test_tokens_html_escapes_and_counts_spans():
    from loramix.base_model import build_tokenizer

    tok = build_tokenizer()
    text = "<think>a&b</think>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(ids)
    rec = RoutingRecord("t", 0, 0, ids, 3, ["s"], torch.zeros(1, n, 1, dtype=torch.long), torch.ones(1, n, 1),
                        torch.ones(1, n, 2) / 2)
    page = tokens_html({"t": [rec]}, tok, ["e<0>", "e1"])
    assert page.count("<span class='tok") == n
    assert "<think>" not in page and "&lt;think&gt;" not in page  # one token per char: '&lt;' then 't'...
    assert page.count(">&lt;</span>") == 2 and ">&amp;</span>" in page and "e&lt;0&gt;" in page
    assert "e<0>" not in page
    assert page.count("<span class='tok gen'") == n - 3


def test_load_train_log(tmp_path):
    log = [{"loss": 1.0, "step": 1}, {"step": 2, "ess_mean": 1.5, "ess/model.layers.0.mlp": 1.2},
           {"step": 4, "ess_mean": 1.9}]
    assert load_train_log(log) == [{"step": 2, "ess_mean": 1.5, "ess/model.layers.0.mlp": 1.2},
                                   {"step": 4, "ess_mean": 1.9}]
    f = tmp_path / "trainer_state.json"
    f.write_text(json.dumps({"log_history": log}))
    assert len(load_train_log(f)) == 2
    with pytest.raises(DataError, match="no entries"):
        load_train_log([{"step": 1, "loss": 2.0}])
    with pytest.raises(DataError, match="not found"):
        load_train_log(tmp_path / "missing.json")
    with pytest.raises(DataError, match="step"):
        load_train_log([{"ess_mean": 2.0}])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_train_log(tmp_path / "bad.json")


# --- end to end on a tiny mixture ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixdir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from loramix.base_model import tiny_random_llama
    from loramix.mixture import compose

    root = tmp_path_factory.mktemp("analysis_models")
    model, tok = tiny_random_llama(hidden=32, layers=2)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    folders = []
    for i, name in enumerate(["add", "sort", "bool"]):
        torch.manual_seed(200 + i)
        get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                                         target_modules=MLP)).save_pretrained(root / name)
        folders.append(root / name)
    out = {"base": root / "base"}
    for router in ("topk", "soft"):
        fresh, _ = tiny_random_llama(hidden=32, layers=2)
        compose(fresh, folders, router=router, seed=0).save_pretrained(root / f"mix_{router}")
        out[router] = root / f"mix_{router}"
    return out


def test_analyze_writes_files_and_one_span_per_token(mixdir, tmp_path):
    mix, tok, _ = load_for_eval(mixdir["topk"], str(mixdir["base"]))
    log = [{"step": s, "ess_mean": 3 - s / 10, "ess/model.layers.0.mlp": 3 - s / 5} for s in range(1, 6)]
    out = tmp_path / "an"
    kw = dict(n=4, max_new_tokens=6, batch_size=3)
    result = analyze_mixture(mix, tok, ["add", "sort"], out=out, train_log=log, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "ess_steps.png", "tokens.html",
                                                     "usage_heatmap.png"]
    assert not list(tmp_path.glob(".*tmp"))
    data = json.loads((out / "analysis.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert data["mixture"]["experts"] == ["add", "sort", "bool"] and data["expert_for_task"] == {"add": 0, "sort": 1}
    s = data["tasks"]["add"]
    assert sum(s["shares"]["overall"]) == pytest.approx(1.0, abs=1e-4)
    assert set(s["shares"]["per_layer"]) == set(data["mixture"]["sites"])
    assert 0.5 <= s["mass"]["overall"]["max_mass"] <= 1.0 and 1.0 <= s["mass"]["overall"]["ess_token"] <= 2.0
    assert 1.0 <= s["mass"]["overall"]["ess_of_mean"] <= 3.0
    assert 0.0 <= s["routing_accuracy"]["overall"] <= 1.0
    assert s["n_tokens"] == s["n_prompt_tokens"] + s["n_generated_tokens"]
    assert data["ess_steps"][0] == log[0]
    for png in ("usage_heatmap.png", "ess_steps.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the page has one span per routed token of the first three sequences of each task
    report = evaluate_model(mix, tok, ["add", "sort"], collect_routing=True, **kw)
    expected = sum(len(r.token_ids) for recs in report.routing.values() for r in recs[:3])
    page = (out / "tokens.html").read_text()
    assert page.count("<span class='tok") == expected
    assert page.count("class='legend'") == 3


def test_analyze_oracle_routing_is_perfect_and_soft_mass(mixdir, tmp_path):
    mix, tok, _ = load_for_eval(mixdir["soft"], str(mixdir["base"]))
    res = analyze_mixture(mix, tok, ["sort", "bool"], n=2, max_new_tokens=4, routing="oracle",
                          expert_for_task={"sort": 1, "bool": 2})
    for task, e in (("sort", 1), ("bool", 2)):
        s = res["tasks"][task]
        assert s["routing_accuracy"]["overall"] == 1.0 and s["routing_accuracy"]["own_mass"] == 1.0
        assert s["shares"]["overall"][e] == pytest.approx(1.0)
        assert s["mass"]["overall"]["ess_of_mean"] == pytest.approx(1.0)
    res = analyze_mixture(mix, tok, ["add"], n=2, max_new_tokens=4, layer=1)
    m = res["tasks"]["add"]["mass"]["overall"]
    assert m["max_mass"] == pytest.approx(m["max_mass"]) and 1 / 3 <= m["max_mass"] <= 1.0
    assert m["entropy"] == pytest.approx(m["prob_entropy"], abs=1e-4)  # soft: weights == probs
    assert "ess_steps.png" not in res["files"] and res["ess_steps"] is None


def test_analyze_mixed_counts_prompt_parts(mixdir):
    mix, tok, _ = load_for_eval(mixdir["topk"], str(mixdir["base"]))
    res = analyze_mixture(mix, tok, ["add", "bool"], mixed=True, n=2, max_new_tokens=4)
    s = res["tasks"]["add+bool"]
    assert s["routing_accuracy"]["tokens_counted"] == s["n_tokens"]  # prompt and completion, by segment
    with pytest.raises(LoramixError, match="unknown expert"):
        analyze_mixture(mix, tok, ["add"], n=1, expert_for_task={"add": "nope"})


def test_cli_analyze(mixdir, tmp_path):
    from typer.testing import CliRunner

    from loramix.cli import app

    log = tmp_path / "train_log.json"
    log.write_text(json.dumps([{"step": 1, "ess_mean": 2.0}, {"step": 2, "ess_mean": 1.5}]))
    out = tmp_path / "analysis"
    res = CliRunner().invoke(app, ["analyze", str(mixdir["topk"]), "--base", str(mixdir["base"]), "--tasks",
                                   "add,bool", "--expert-for", "bool=2", "--n", "2", "--max-new-tokens", "4",
                                   "--train-log", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "analysis.json").read_text())
    assert data["expert_for_task"] == {"bool": 2, "add": 0} and (out / "ess_steps.png").is_file()
    assert "routing" in res.output
