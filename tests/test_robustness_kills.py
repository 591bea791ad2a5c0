"""Issue 7: interruptions lose nothing. Each long command (train-expert, distill, train-router,
train-remix) runs as a real process through ``loramix.cli.main`` and is killed from outside with
SIGTERM and with SIGKILL (``os.kill``). No final output appears under its name; rerunning the same
command resumes and gives outputs bit-identical to an uninterrupted run with the same seed.

To kill at a known point without racing, the child process pauses (sleeps) at one spot, after writing
a marker file, and is killed there:

* ``after``: just after checkpoint-N is complete (its trainer_state.json written);
* ``torn``: in the middle of writing checkpoint-N (its folder exists, trainer_state.json does not),
  so the resume must skip the torn checkpoint and use the previous complete one;
* distill: after the first batch of prompts is recorded as done.

Both signals of one command run concurrently (two child processes) to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loramix.tasks import register_task, unregister_task

from conftest import addition_traces, digits_task, saved_tiny_base

TESTS = Path(__file__).parent
TASK = "_rb_digits"


DigitsTask = digits_task(TASK)
def wrap_generate(real):
    """Real generation, with each completion wrapped so that distill's format filter passes it
    (a tiny random model never writes <think> blocks or EOS). The wrapper is deterministic, so it
    changes nothing about resume semantics."""
    from dataclasses import replace

    def generate(*args, **kwargs):
        outs = real(*args, **kwargs)
        return [[replace(c, finished=True, text=f'<think>r {c.tokens}</think>\n{{"answer": "{c.tokens}"}}\n{c.text}')
                 for c in cs] for cs in outs]

    return generate


def child_setup(mode: str, step: int, marker: str, threads: int) -> None:
    """Runs in the child before ``main()``: register the task, and pause (for the kill) at one spot."""
    torch.set_num_threads(threads)
    register_task(TASK, DigitsTask)
    import loramix.train.distill as distill_mod

    distill_mod.generate = wrap_generate(distill_mod.generate)

    def pause() -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)

    if mode == "distill":
        original_done = distill_mod._write_done

        def write_done(path, done):
            original_done(path, done)
            pause()

        distill_mod._write_done = write_done
        return
    from transformers import TrainerState

    original = TrainerState.save_to_json

    def save_to_json(self, json_path):
        m = re.search(r"checkpoint-(\d+)", str(json_path))
        hit = m is not None and int(m.group(1)) == step
        if hit and mode == "torn":
            pause()
        original(self, json_path)
        if hit and mode == "after":
            pause()

    TrainerState.save_to_json = save_to_json


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import test_robustness_kills as t
    t.child_setup({mode!r}, {step!r}, {marker!r}, {threads!r})
    from loramix.cli import main
    sys.argv = ["loramix", *{args!r}]
    main()
""")


def kill_runs(tmp_path: Path, plans: list[tuple[signal.Signals, str, list[str]]], step: int = 2) -> None:
    """Start one child per (signal, mode, args), wait until each reached its pause, kill it with
    its signal, and check it died of that signal."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    procs = []
    for n, (sig, mode, args) in enumerate(plans):
        marker = tmp_path / f"marker{n}"
        script = CHILD.format(tests=str(TESTS), mode=mode, step=step, marker=str(marker),
                              threads=torch.get_num_threads(), args=args)
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        procs.append((proc, marker, sig))
    deadline = time.monotonic() + 90
    try:
        for proc, marker, sig in procs:
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"child exited ({proc.returncode}) before its pause:\n{proc.stdout.read()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("child did not reach its pause in time")
                time.sleep(0.05)
            os.kill(proc.pid, sig)
        for proc, _marker, sig in procs:
            proc.wait(timeout=30)
            assert proc.returncode == -sig, proc.stdout.read()[-3000:]
    finally:
        for proc, _m, _s in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def run_cli(args: list[str]) -> None:
    from typer.testing import CliRunner

    from loramix.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import sys as _sys

    _sys.path.insert(0, str(TESTS))
    from conftest import make_adapter

    register_task(TASK, DigitsTask)
    root = tmp_path_factory.mktemp("kills")
    model, _ = saved_tiny_base(root)
    experts = [make_adapter(model, root / f"e{i}", r=2, alpha=4, seed=30 + i) for i in range(2)]
    yield root, experts, addition_traces(root / "traces.jsonl", 4, 3)
    unregister_task(TASK)


def _both_signals(tmp_path, args_for, step=2):
    """SIGKILL right after checkpoint-`step` completes; SIGTERM while checkpoint-`step` is half written."""
    kill_runs(tmp_path, [(signal.SIGKILL, "after", args_for("kill")), (signal.SIGTERM, "torn", args_for("term"))],
              step=step)


def test_train_expert_killed_with_sigkill_and_sigterm_resumes_bit_identical(setup, tmp_path):
    root, _, _ = setup

    def args(name):
        return ["train-expert", "--task", TASK, "--base", str(root / "base"), "--out", str(tmp_path / name),
                "--steps", "4", "--batch-size", "4", "--num-generations", "2", "--n-train", "8", "--n-eval", "2",
                "--max-completion-length", "6", "--rank", "2", "--alpha", "4", "--save-steps", "2",
                "--lr", "1e-2", "--threads", str(torch.get_num_threads()), "--quiet"]

    _both_signals(tmp_path, args, step=4)
    for name in ("kill", "term"):
        assert not (tmp_path / name).exists()  # nothing half-written under the final name
    ckpts = tmp_path / "term.partial" / "grpo_checkpoints"
    assert (ckpts / "checkpoint-4").is_dir() and not (ckpts / "checkpoint-4" / "trainer_state.json").exists()
    run_cli(args("ref"))
    for name, resumed in (("kill", "checkpoint-4"), ("term", "checkpoint-2")):
        run_cli(args(name))
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        assert m["phases"][0]["resumed_from"] == resumed
        assert_same_tensors(tmp_path / "ref" / "adapter_model.safetensors",
                            tmp_path / name / "adapter_model.safetensors")
        ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
        assert m["reward_curve"] == ref["reward_curve"]


def test_train_router_killed_with_sigkill_and_sigterm_resumes_bit_identical(setup, tmp_path):
    root, experts, traces = setup

    def args(name):
        return ["train-router", "--base", str(root / "base"), "--experts", ",".join(experts), "--traces",
                str(traces), "--out", str(tmp_path / name), "--router", "gumbel", "--steps", "6",
                "--batch-size", "2", "--save-steps", "2", "--attention-rank", "2", "--lr", "5e-2", "--quiet"]

    _both_signals(tmp_path, args, step=4)
    for name in ("kill", "term"):
        assert not (tmp_path / name).exists()
    torn = tmp_path / "term.partial" / "checkpoint-4"
    assert torn.is_dir() and not (torn / "trainer_state.json").exists()
    run_cli(args("ref"))
    for name in ("kill", "term"):
        run_cli(args(name))
        assert json.loads((tmp_path / name / "metrics.json").read_text())["resumed"] is True
        assert_same_tensors(tmp_path / "ref" / "mixture.safetensors", tmp_path / name / "mixture.safetensors")
        assert not (tmp_path / f"{name}.partial").exists()


def test_train_remix_killed_with_sigkill_and_sigterm_resumes_bit_identical(setup, tmp_path):
    root, _, traces = setup

    def args(name):
        return ["train-remix", "--base", str(root / "base"), "--traces", str(traces), "--out", str(tmp_path / name),
                "--experts-n", "3", "--k", "2", "--rank", "2", "--samples", "2", "--steps", "6", "--batch-size", "2",
                "--save-steps", "2", "--logging-steps", "1", "--max-length", "64", "--lr", "1e-2"]

    _both_signals(tmp_path, args, step=4)
    for name in ("kill", "term"):
        assert not (tmp_path / name).exists()
    torn = tmp_path / "term.partial" / "checkpoint-4"
    assert torn.is_dir() and not (torn / "trainer_state.json").exists()
    run_cli(args("ref"))
    for name in ("kill", "term"):
        run_cli(args(name))
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        assert m["resumed"] is True and m["steps"] == 6
        assert_same_tensors(tmp_path / "ref" / "mixture.safetensors", tmp_path / name / "mixture.safetensors")


def test_distill_killed_with_sigkill_and_sigterm_resumes_identical(setup, tmp_path, monkeypatch):
    import loramix.train.distill as distill_mod

    root, experts, _ = setup
    monkeypatch.setattr(distill_mod, "generate", wrap_generate(distill_mod.generate))

    def args(name):
        return ["distill", "--base", str(root / "base"), "--experts", experts[0], "--tasks", TASK,
                "--out", str(tmp_path / f"{name}.jsonl"), "--n-prompts", "4", "--batch-size", "2",
                "--samples", "2", "--temperature", "1.0", "--max-new-tokens", "4", "--quiet"]

    kill_runs(tmp_path, [(signal.SIGKILL, "distill", args("kill")), (signal.SIGTERM, "distill", args("term"))])
    for name in ("kill", "term"):
        out = tmp_path / f"{name}.jsonl"
        lines = out.read_text().splitlines()
        assert lines and all(json.loads(line)["prompt"] for line in lines)  # every line parses
        assert not (tmp_path / f"{name}.jsonl.meta.json").exists()  # the run is not marked complete
    run_cli(args("ref"))
    ref = (tmp_path / "ref.jsonl").read_text()
    assert len(ref.splitlines()) > len(lines)
    for name in ("kill", "term"):
        run_cli(args(name))
        assert (tmp_path / f"{name}.jsonl").read_text() == ref
        meta = json.loads((tmp_path / f"{name}.jsonl.meta.json").read_text())
        assert meta["rows"] == len(ref.splitlines()) and meta["seed"] == 0
