"""benchmarks/gpu_check.sh, the prepared GPU check of issue 16, kept working on the CPU: its --tiny run
goes through every step, a failing step does not stop the rest, and the bench options it relies on
(--shape, --dtype, --rank, --seq-len, --new-tokens, --other-experts) do what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from loramix.bench import SHAPES, build_base, resolve_size
from loramix.errors import LoramixError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_script(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "LORAMIX_PY": sys.executable, **env}
    full_env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run_script(out, "--tiny")
    return out, proc


def test_tiny_run_passes_every_step(tiny_run):
    out, proc = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + (out / "log.txt").read_text()[-3000:]
    assert [s["name"] for s in summary["steps"]] == ["env", "tests", "bench_tiny_train_prefill", "bench_tiny_decode_b1"]
    assert all(s["status"] == 0 for s in summary["steps"]), summary
    assert summary["failed"] == [] and summary["skipped"] == []
    # at most 8 files: what the device tool brings back from $OUT
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.png", "bench_runs.tar.gz", "env.json",
                                                    "log.txt", "summary.json", "tests.xml"]
    log = (out / "log.txt").read_text()
    assert log.count("START ") == 4 and log.count("END ") == 4


def test_tiny_run_writes_env_tests_and_bench(tiny_run):
    out, _ = tiny_run
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False
    assert {"transformers", "peft", "device_name", "nvidia_smi"} <= set(env)
    # the device tests ran on the CPU in both dtypes, none skipped: 3 kernel paths + 2 archs of parity, x 2
    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    assert (int(suite.get("tests")), int(suite.get("failures")), int(suite.get("errors")),
            int(suite.get("skipped"))) == (10, 0, 0, 0)
    names = {c.get("name") for c in suite.iter("testcase")}
    assert any("bfloat16" in n for n in names) and any("float32" in n for n in names)
    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert set(runs) == {"tiny_train_prefill", "tiny_decode_b1"}
    size = runs["tiny_train_prefill"]["result"]["meta"]["size"]
    assert (size["dtype"], size["rank"], size["seq"], size["experts"], size["other_experts"]) == \
        ("bfloat16", 8, 16, [2, 4], [2])
    rows = runs["tiny_train_prefill"]["result"]["rows"]
    assert {(r["method"], r["experts"]) for r in rows if r["workload"] == "train"} == {
        ("base", None), ("peft_lora", None), ("hard", 2), ("hard", 4), ("hard_sparse", 2), ("hard_sparse", 4),
        ("soft", 2), ("soft", 4), ("remix", 2), ("xlora", 2), ("arrow", 2)}
    decode = runs["tiny_decode_b1"]["result"]
    assert decode["meta"]["size"]["batch"] == 1 and decode["meta"]["size"]["new_tokens"] == 2
    assert {r["workload"] for r in decode["rows"]} == {"decode"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path where CUDA is missing")
def test_failing_steps_are_recorded_and_the_rest_still_runs(tmp_path):
    """Without --tiny and without CUDA: the device tests skip cleanly, each bench fails on
    ``--device cuda``, the script goes on to the next step and exits 1. GPU_CHECK_ONLY keeps the run short
    (and deterministic: a time budget small enough to skip steps depends on the machine's speed)."""
    first, last = "bench_qwen2.5-1.5b_r16_train_prefill", "bench_llama-3.2-3b_r128_decode_b32"
    proc = run_script(tmp_path, GPU_CHECK_ONLY=f"env,tests,{first},{last}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert status["env"] == 0 and status["tests"] == 0  # cuda tests skipped: pytest still exits 0
    assert summary["failed"] == [first, last] and status[first] not in (0, "skipped")
    assert len(status) == 14 and len(summary["skipped"]) == 10  # every step is listed, run or not
    assert summary["unknown_only"] == []
    log = (tmp_path / "log.txt").read_text()
    assert "no CUDA device is available" in log and log.count("not in GPU_CHECK_ONLY") == 10


def test_steps_the_budget_has_no_time_for_are_skipped_not_failed(tmp_path):
    proc = run_script(tmp_path, GPU_CHECK_BUDGET_S="0")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proc.returncode == 0 and summary["failed"] == []
    assert len(summary["skipped"]) == 14 and summary["budget_seconds"] == 0
    assert (tmp_path / "log.txt").read_text().count("of the 0s budget left") == 14


def test_a_misspelt_only_step_fails_the_run_instead_of_running_nothing(tmp_path):
    proc = run_script(tmp_path, "--tiny", GPU_CHECK_ONLY="bench_tiny_decode_b")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proc.returncode == 1 and summary["unknown_only"] == ["bench_tiny_decode_b"]
    assert summary["failed"] == [] and len(summary["skipped"]) == 4


@pytest.mark.parametrize("shape,arch,billions", [("qwen2.5-0.5b", "Qwen2ForCausalLM", 0.49),
                                                 ("qwen2.5-1.5b", "Qwen2ForCausalLM", 1.54),
                                                 ("llama-3.2-1b", "LlamaForCausalLM", 1.24),
                                                 ("llama-3.2-3b", "LlamaForCausalLM", 3.21)])
def test_shape_builds_the_released_configuration(shape, arch, billions):
    """--shape builds the released model's architecture (on the meta device here: no memory); its
    parameter count is the published one (tied embeddings)."""
    size = resolve_size("tiny", None, None, None, shape=shape, dtype="bf16")
    model = build_base(size, torch.device("meta"))
    assert type(model).__name__ == arch and size.shape == shape
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    assert model.config.hidden_size == SHAPES[shape].hidden and next(model.parameters()).dtype == torch.bfloat16
    assert size.batch == 2 and size.seq == 16  # the workload sizes stay the named size's


@pytest.mark.parametrize("kwargs,option", [({"shape": "gpt-2"}, "--shape"), ({"dtype": "int8"}, "--dtype"),
                                           ({"rank": 0}, "--rank"), ({"seq": 0}, "--seq-len"),
                                           ({"new_tokens": 0}, "--new-tokens"), ({"other_experts": (0,)}, "--other-experts")])
def test_bad_bench_options_are_refused_by_name(kwargs, option):
    with pytest.raises(LoramixError, match=option):
        resolve_size("tiny", None, None, None, **kwargs)
