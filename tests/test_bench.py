"""Smoke test of `loramix bench` at the tiny size: output shape and files, never speed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramix.bench import (METHODS_PER_E, METHODS_SINGLE, SIZES, TRAIN_ONLY, WORKLOADS, BenchRow, compute_targets,
                           parse_list, pick_size)
from loramix.cli import app
from loramix.errors import LoramixError


def test_bench_tiny_cli_writes_rows_targets_and_png(tmp_path):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    res = CliRunner().invoke(app, ["bench", "--tiny", "--device", "cpu", "--json", str(out), "--png", str(png)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"rows", "targets", "meta"}
    n_e = len(SIZES["tiny"].experts)
    per_workload = len(METHODS_SINGLE) + len(METHODS_PER_E) * n_e
    assert len(data["rows"]) == per_workload * len(WORKLOADS) - len(TRAIN_ONLY) * n_e * (len(WORKLOADS) - 1)
    assert {r["workload"] for r in data["rows"] if r["method"] in TRAIN_ONLY} == {"train"}
    for row in data["rows"]:
        assert {"method", "experts", "workload", "seconds_median", "ratio_vs_peft_lora"} <= set(row)
        assert row["seconds_median"] > 0 and row["ratio_vs_peft_lora"] > 0
    assert {r["method"] for r in data["rows"]} == set(METHODS_SINGLE + METHODS_PER_E)
    assert {r["workload"] for r in data["rows"]} == set(WORKLOADS)
    assert all(r["ratio_vs_peft_lora"] == pytest.approx(1.0) for r in data["rows"] if r["method"] == "peft_lora")
    assert [r["note"] for r in data["rows"] if r["method"] == "xlora" and r["workload"] == "decode"] == ["no KV cache"]
    assert data["targets"] and all({"name", "workload", "value", "met"} <= set(t) for t in data["targets"])
    assert {"size", "device", "torch", "peak_memory", "adapter_mib"} <= set(data["meta"])
    assert data["meta"]["command"] == f"loramix bench --tiny --device cpu --json {out}"
    assert png.is_file() and png.stat().st_size > 0
    assert "| method | E |" in res.output and "| target |" in res.output

    # the README's section is generated from the JSON, without timing anything again
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nstale table\n<!-- bench:end -->\nrest\n")
    res = CliRunner().invoke(app, ["bench", "--from-json", str(out), "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->") and text.endswith("<!-- bench:end -->\nrest\n")
    assert "stale table" not in text and f"--from-json {out}" in text and "| hard | 2 |" in text
    assert text.count("| peft_lora | - |") == 1
    assert f"measured by `loramix bench --tiny --device cpu --json {out}`" in text

    # a README with a section named after the JSON's stem gets this run there; the plain one stays
    readme.write_text("<!-- bench:start -->\nfull\n<!-- bench:end -->\n<!-- bench:bench:start -->\nstale run\n"
                      "<!-- bench:bench:end -->\n")
    res = CliRunner().invoke(app, ["bench", "--from-json", str(out), "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    assert text.startswith("<!-- bench:start -->\nfull\n<!-- bench:end -->\n") and "stale run" not in text
    assert text.index("| hard | 2 |") > text.index("<!-- bench:bench:start -->")
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"method": "x"}]}')
    res = CliRunner().invoke(app, ["bench", "--from-json", str(bad)])
    assert isinstance(res.exception, LoramixError) and str(bad) in str(res.exception)


def test_bench_option_errors():
    assert parse_list("2, 8,32", int, "--experts") == (2, 8, 32)
    assert parse_list(None, int, "--experts") is None
    with pytest.raises(LoramixError, match="--experts"):
        parse_list("2,x", int, "--experts")
    with pytest.raises(LoramixError):
        pick_size(quick=True, tiny=True)
    res = CliRunner().invoke(app, ["bench", "--tiny", "--methods", "nope"])
    assert isinstance(res.exception, LoramixError) and "unknown method" in str(res.exception)


def test_bench_narrowed_to_one_workload_and_batch(tmp_path):
    out = tmp_path / "decode.json"
    res = CliRunner().invoke(app, ["bench", "--tiny", "--device", "cpu", "--workloads", "decode", "--methods",
                                   "hard", "--experts", "1,2", "--batch", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {r["workload"] for r in data["rows"]} == {"decode"}
    assert sorted((r["method"], r["experts"]) for r in data["rows"]) == [("hard", 1), ("hard", 2), ("peft_lora", None)]
    assert data["meta"]["size"]["batch"] == 1
    res = CliRunner().invoke(app, ["bench", "--tiny", "--workloads", "decode", "--batch", "0"])
    assert isinstance(res.exception, LoramixError) and "batch" in str(res.exception)


def test_targets_cover_timed_workloads_and_batch_one_decode_is_tighter():
    rows = [BenchRow("base", None, "decode", 0.9), BenchRow("peft_lora", None, "decode", 1.0),
            BenchRow("hard", 2, "decode", 1.0), BenchRow("hard", 8, "decode", 1.06), BenchRow("hard", 32, "decode", 1.04)]
    at_1 = {t.name: t for t in compute_targets(rows, (2, 8, 32), batch=1)}
    assert {t.workload for t in at_1.values()} == {"decode"}  # no n/a rows for untimed train/prefill
    assert at_1["hard E=8 vs PEFT LoRA"].threshold == 1.05 and at_1["hard E=8 vs PEFT LoRA"].met is False
    at_8 = {t.name: t for t in compute_targets(rows, (2, 8, 32), batch=8)}
    assert at_8["hard E=8 vs PEFT LoRA"].threshold == 1.08 and at_8["hard E=8 vs PEFT LoRA"].met is True
    assert at_8["hard E=32 vs E=2 (flat in E)"].value == pytest.approx(1.04)
