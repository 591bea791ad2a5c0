"""Issue 15: the training commands under ``accelerate launch`` on 2 CPU processes (gloo), with no
loramix-specific distributed code.

Each run is a real launch: ``python -m accelerate.commands.launch --multi_gpu --num_processes 2`` of
this file, which (as ``__main__``, the *driver*) runs ``loramix.cli.main`` with the command's flags.
On a machine without GPUs, accelerate's ``--multi_gpu`` is its torchrun launcher, and the trainers
pick gloo on the CPU (the test hides any GPU and sets ``ACCELERATE_USE_CPU``). ``--cpu
--num_processes 2`` is *not* used: accelerate 1.16 runs that as one process unless mpirun is given
(``accelerate launch --cpu`` uses its simple launcher), so it would test nothing.

The driver adds only observation, never behaviour: after training, each rank saves its own
trainer's trainable tensors to ``<dump>/rank{N}.safetensors`` and its log history to
``<dump>/rank{N}.json``, and it records every ``loramix.io.atomic_path`` write of that rank (the one
way loramix publishes a file or folder). Optionally rank 0 pauses once checkpoint-N is complete, so
the launcher can be killed there.

Checks: both ranks hold identical weights; only rank 0 publishes anything, and nothing but the
output (no ``.partial`` folder, no temporary) is left; 2 ranks x batch b match 1 rank x batch 2b
(train-router, and ReMix's top-k baseline); a launch killed after the first checkpoint (SIGTERM to
the launcher, or SIGKILL to every process) resumes to the weights of an uninterrupted run;
train-expert (GRPO through TRL) writes one expert; distill shards the prompts and writes the traces
file one process writes; the auxiliary router losses weigh the same on 2 ranks as on 1.

Only the train-router check runs by default (about 25 s); the others are ``slow`` (``pytest -m slow
tests/test_multiprocess.py``; ``benchmarks/multiprocess_check.py`` prints their numbers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve()
NPROC = 2
DIGITS = "_mp_digits"  # a test task whose GRPO reward varies on an untrained model


def register_digits_task() -> None:
    """``DIGITS``: reward = the share of digit characters, so a few GRPO steps of a tiny random
    model get non-zero advantages (``add`` gives every completion the same reward there)."""
    import random

    from loramix.tasks import Example, Task, register_task

    class DigitsTask(Task):
        name, kind, description = DIGITS, "user", "test task: reward = share of digits"

        def examples(self, split="train", n=None, *, seed=0, difficulty="hard"):
            rng = random.Random(f"{split}|{seed}")
            return [Example(f"digits: {a}\n", str(a % 10), f"{a}%10={a % 10}", self.name)
                    for a in (rng.randint(0, 999) for _ in range(16 if n is None else n))]

        def reward(self, completion, ex):
            return sum(c.isdigit() for c in completion) / max(1, len(completion))

        def is_correct(self, completion, ex):
            return False

    register_task(DIGITS, DigitsTask)


# --- the driver (runs on every rank under accelerate launch) ------------------------------------------


def _driver(argv: list[str]) -> None:
    """``--dump DIR [--pause-at N --marker FILE] -- <loramix command and flags>``"""
    import atexit
    import contextlib

    sep = argv.index("--")
    opts, command = argv[:sep], argv[sep + 1:]
    dump = Path(opts[opts.index("--dump") + 1])
    pause_at = int(opts[opts.index("--pause-at") + 1]) if "--pause-at" in opts else None
    marker = opts[opts.index("--marker") + 1] if "--marker" in opts else None
    rank = int(os.environ.get("RANK", "0"))
    dump.mkdir(parents=True, exist_ok=True)
    (dump / f"pid{rank}").write_text(str(os.getpid()))  # for a test that kills every process of a launch
    register_digits_task()

    import loramix.io
    import loramix.mixture
    import loramix.train.common
    import loramix.train.distill
    import loramix.train.experts
    import loramix.train.remix
    import loramix.train.router

    real_atomic = loramix.io.atomic_path
    writes: list[str] = []

    @contextlib.contextmanager
    def atomic_path(path):
        writes.append(str(Path(path).resolve()))
        with real_atomic(path) as tmp:
            yield tmp

    for name, mod in list(sys.modules.items()):
        if name.startswith("loramix") and getattr(mod, "atomic_path", None) is real_atomic:
            mod.atomic_path = atomic_path
    atexit.register(lambda: (dump / f"writes{rank}.json").write_text(json.dumps(writes)))

    trained = [0]

    def dumping(real):
        def run_trainer(trainer, *args, **kwargs):
            from safetensors.torch import save_file

            ledger = real(trainer, *args, **kwargs)
            model = trainer.accelerator.unwrap_model(trainer.model)
            tensors = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            suffix = f"_{trained[0]}" if trained[0] else ""
            save_file(tensors, str(dump / f"rank{rank}{suffix}.safetensors"))
            (dump / f"rank{rank}{suffix}.json").write_text(json.dumps(trainer.state.log_history))
            trained[0] += 1
            return ledger
        return run_trainer

    for mod in (loramix.train.router, loramix.train.remix, loramix.train.experts):
        mod.run_trainer = dumping(mod.run_trainer)

    if pause_at is not None and rank == 0:
        import re

        from transformers import TrainerState

        real_save = TrainerState.save_to_json

        def save_to_json(self, json_path):
            real_save(self, json_path)
            m = re.search(r"checkpoint-(\d+)", str(json_path))
            if m is not None and int(m.group(1)) == pause_at:
                Path(marker).write_text(str(os.getpid()))
                time.sleep(300)

        TrainerState.save_to_json = save_to_json

    from loramix.cli import main

    sys.argv = ["loramix", *command]
    main()


if __name__ == "__main__":
    _driver(sys.argv[1:])
    sys.exit(0)


# --- launching ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """CPU only (any GPU hidden), one thread per rank, offline, quiet."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true",
            "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}


def launch_cmd(dump: Path, command: list[str], nproc: int = NPROC, pause_at: int | None = None,
               marker: Path | None = None) -> list[str]:
    """``accelerate launch`` of the driver on ``nproc`` CPU processes (torchrun, gloo)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    launcher += ["--multi_gpu", "--num_processes", str(nproc)] if nproc > 1 else ["--num_processes", "1"]
    extra = ["--pause-at", str(pause_at), "--marker", str(marker)] if pause_at is not None else []
    return [*launcher, str(HERE), "--dump", str(dump), *extra, "--", *command]


def launch(dump: Path, command: list[str], nproc: int = NPROC, timeout: float = 300) -> float:
    """Run the command on ``nproc`` processes; returns the wall time. Fails with the output's tail."""
    t0 = time.perf_counter()
    res = subprocess.run(launch_cmd(dump, command, nproc), env=child_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"accelerate launch exited {res.returncode}:\n{res.stdout[-4000:]}")
    return time.perf_counter() - t0


def launch_and_kill(dump: Path, command: list[str], pause_at: int, sig=signal.SIGTERM, every: bool = False,
                    timeout: float = 180) -> None:
    """Start the launch, wait until rank 0 has completed checkpoint-``pause_at``, send ``sig`` to the
    launcher (torchrun passes SIGTERM on to the ranks), or to every process of the launch (``every``:
    the launcher and each rank, by the pids the ranks wrote; torchrun starts each rank in a session
    of its own, so the launcher's process group does not hold them), and wait until all are gone."""
    marker = dump / "paused"
    proc = subprocess.Popen(launch_cmd(dump, command, pause_at=pause_at, marker=marker), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the launch exited ({proc.returncode}) before its pause:\n{proc.stdout.read()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the launch did not reach its pause in time")
            time.sleep(0.1)
        ranks = [int((dump / f"pid{r}").read_text()) for r in range(NPROC)]
        for pid in [proc.pid, *ranks] if every else [proc.pid]:
            os.kill(pid, sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(map(_alive, ranks)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, ranks)), "a rank outlived the kill"
    finally:
        for pid in [proc.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphaned rank may wait to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --- comparing ------------------------------------------------------------------------------------


def record(check: str, **numbers) -> None:
    """The numbers behind a check, for ``benchmarks/multiprocess_check.py`` (one JSON line appended to
    ``$LORAMIX_MP_REPORT`` when it is set; nothing otherwise)."""
    path = os.environ.get("LORAMIX_MP_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"check": check, **numbers}) + "\n")


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def rank_dumps(dump: Path, nproc: int = NPROC, suffix: str = "") -> list[dict]:
    return [load_file(str(dump / f"rank{r}{suffix}.safetensors")) for r in range(nproc)]


def writes_of(dump: Path, rank: int) -> list[str]:
    return json.loads((dump / f"writes{rank}.json").read_text())


def losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h and "train_runtime" not in h}


def curve_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    return max(abs(a[s] - b[s]) for s in a)


def only_rank0_published(dump: Path, root: Path, expected: set[str]) -> None:
    """Rank 1 published nothing; rank 0 published the output; ``root`` holds exactly ``expected``."""
    assert writes_of(dump, 1) == [], writes_of(dump, 1)
    assert any(Path(w).parent == root.resolve() for w in writes_of(dump, 0))
    assert {p.name for p in root.iterdir()} == expected, sorted(p.name for p in root.iterdir())


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny base, three experts, and 16 addition traces of one length each (a token-mean over one
    rank's rows, averaged over ranks, is then the token-mean over the global batch)."""
    from conftest import addition_traces, make_adapter, saved_tiny_base

    root = tmp_path_factory.mktemp("mp")
    model, _ = saved_tiny_base(root, hidden=64)
    experts = [make_adapter(model, root / f"e{i}", r=4, alpha=8, seed=20 + i) for i in range(3)]
    return root, experts, addition_traces(root / "traces.jsonl", 4, 4)


def router_args(setup, out: Path, batch_size: int, *extra: str) -> list[str]:
    """10 steps of 8 rows (5 epochs of the 16 traces), a loss logged every 5, a checkpoint every 2."""
    root, experts, traces = setup
    return ["train-router", "--base", str(root / "base"), "--experts", ",".join(experts), "--traces", str(traces),
            "--out", str(out), "--router", "hard", "--attention-rank", "2", "--steps", "10",
            "--batch-size", str(batch_size), "--save-steps", "2", "--lr", "5e-2", "--quiet", *extra]


@pytest.fixture(scope="module")
def router_two(setup, tmp_path_factory):
    """One 2-process train-router run (batch 4 per rank), its output folder and its dumps."""
    base = tmp_path_factory.mktemp("router2")
    runs, dump = base / "runs", base / "dump"
    runs.mkdir()
    seconds = launch(dump, router_args(setup, runs / "mix", batch_size=4))
    return runs, dump, seconds


# --- train-router (runs by default) ---------------------------------------------------------------


def test_train_router_two_processes_match_one_process_at_the_same_global_batch(setup, router_two, tmp_path):
    runs, dump, seconds = router_two
    out = runs / "mix"
    r0, r1 = rank_dumps(dump)
    ranks = max_abs_diff(r0, r1)
    assert ranks == 0.0  # DDP: every rank holds the same weights
    saved = load_file(str(out / "mixture.safetensors"))
    assert max_abs_diff({k: saved[k] for k in r0}, r0) == 0.0
    only_rank0_published(dump, runs, {"mix"})  # no mix.partial, no .mix.*.tmp
    assert not list(out.glob("checkpoint-*"))

    from typer.testing import CliRunner

    from loramix.cli import app

    one = tmp_path / "one"  # the same command on 1 process (this one), twice the per-device batch
    res = CliRunner().invoke(app, router_args(setup, one, batch_size=8))
    assert res.exit_code == 0, (res.output, res.exception)
    single = load_file(str(one / "mixture.safetensors"))
    weights = max_abs_diff(single, saved)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, out))
    curve1 = {p["step"]: p["loss"] for p in m1["loss_curve"]}
    curve2 = {p["step"]: p["loss"] for p in m2["loss_curve"]}
    curves = curve_diff(curve1, curve2)
    record("train-router 2x4 vs 1x8", ranks=ranks, one_vs_two=weights, loss_curve=curves, steps=sorted(curve2),
           launch_seconds=round(seconds, 1))
    # Float tolerance: the ranks reduce their gradients in another order than one process does, and
    # Adam divides by sqrt(v) ~ |g| (so a relative 1e-7 becomes ~1e-7 * lr per step, times 10 steps).
    assert weights < 1e-4
    assert curves < 1e-4  # the same rows in each global batch, in the same order
    assert m2["config"]["batch_size"] == 4 and m1["config"]["batch_size"] == 8


# --- the slow ones ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["sigterm-launcher", "sigkill-all"])
def test_train_router_resumes_after_the_launch_is_killed(setup, router_two, tmp_path, kill):
    """Killed once checkpoint-2 is complete: SIGTERM to the launcher (a scheduler's or Ctrl-C's stop;
    torchrun stops the ranks), or SIGKILL to the launcher and each rank at once (a lost node). The
    rerun resumes from checkpoint-2 and ends bit-identical to the uninterrupted 2-process run."""
    runs, dump = tmp_path / "runs", tmp_path / "dump"
    runs.mkdir()
    args = router_args(setup, runs / "mix", batch_size=4)
    launch_and_kill(dump, args, pause_at=2, every=kill == "sigkill-all",
                    sig=signal.SIGKILL if kill == "sigkill-all" else signal.SIGTERM)
    assert {p.name for p in runs.iterdir()} == {"mix.partial"}  # no output under its final name
    assert (runs / "mix.partial" / "checkpoint-2" / "trainer_state.json").is_file()
    seconds = launch(tmp_path / "dump2", args)
    resumed = json.loads((runs / "mix" / "metrics.json").read_text())
    assert resumed["resumed"] is True
    full = load_file(str(router_two[0] / "mix" / "mixture.safetensors"))
    diff = max_abs_diff(load_file(str(runs / "mix" / "mixture.safetensors")), full)
    # The loss logged at step 5 is the mean since the last log, which after a resume at step 2 covers
    # steps 3-5 only (HF's log); the log at step 10 (steps 6-10) is wholly after the resume.
    uninterrupted = json.loads((router_two[0] / "mix" / "metrics.json").read_text())["loss_curve"]
    a, b = ({p["step"]: p["loss"] for p in c} for c in (resumed["loss_curve"], uninterrupted))
    record(f"train-router resume after {kill}", resumed_vs_uninterrupted=diff, loss_step10=abs(a[10] - b[10]),
           loss_step5_partial_window=abs(a[5] - b[5]), rerun_seconds=round(seconds, 1))
    assert diff == 0.0 and a[10] == b[10]
    assert {p.name for p in runs.iterdir()} == {"mix"}


@pytest.mark.slow
def test_train_router_auxiliary_loss_two_processes_match_one_process(setup, tmp_path):
    """Runs on 2 processes (it crashed there before: DDP's search for unused parameters rebuilt the
    output without its aux_loss key) and matches 1 process (HF scales the loss by the number of
    processes; MixtureTrainer takes that factor back off the auxiliary term)."""
    extra = ("--router", "soft", "--z-loss", "0.1")
    launch(tmp_path / "dump2", router_args(setup, tmp_path / "two", 4, *extra))
    launch(tmp_path / "dump1", router_args(setup, tmp_path / "one", 8, *extra), nproc=1)
    two, one = (load_file(str(tmp_path / d / "mixture.safetensors")) for d in ("two", "one"))
    record("train-router --z-loss 0.1, 2x4 vs 1x8", one_vs_two=max_abs_diff(one, two))
    assert max_abs_diff(one, two) < 1e-4


def remix_args(setup, out: Path, router: str, batch_size: int) -> list[str]:
    root, _, traces = setup
    return ["train-remix", "--base", str(root / "base"), "--traces", str(traces), "--out", str(out),
            "--router", router, "--experts-n", "3", "--k", "2", "--rank", "2", "--samples", "2", "--steps", "4",
            "--batch-size", str(batch_size), "--save-steps", "2", "--logging-steps", "1", "--max-length", "64",
            "--lr", "1e-2", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("router", ["remix", "topk"])
def test_train_remix_two_processes(setup, tmp_path, router):
    """Identical ranks and one writer for both routers. The top-k baseline is deterministic, so 2 x b
    matches 1 x 2b; ReMix samples its routing per rank, so there only the ranks are compared."""
    runs, dump = tmp_path / "runs", tmp_path / "dump"
    runs.mkdir()
    seconds = launch(dump, remix_args(setup, runs / "mix", router, batch_size=2))
    r0, r1 = rank_dumps(dump)
    ranks = max_abs_diff(r0, r1)
    assert ranks == 0.0
    only_rank0_published(dump, runs, {"mix"})
    saved = load_file(str(runs / "mix" / "mixture.safetensors"))
    assert max_abs_diff({k: saved[k] for k in r0}, r0) == 0.0
    numbers = dict(ranks=ranks, launch_seconds=round(seconds, 1))
    if router == "topk":
        launch(tmp_path / "dump1", remix_args(setup, tmp_path / "one", router, batch_size=4), nproc=1)
        numbers["one_vs_two"] = max_abs_diff(load_file(str(tmp_path / "one" / "mixture.safetensors")), saved)
        one = json.loads((tmp_path / "dump1" / "rank0.json").read_text())
        two = json.loads((dump / "rank0.json").read_text())
        numbers["loss_curve"] = curve_diff(losses(one), losses(two))
        numbers["steps"] = sorted(losses(two))
    record(f"train-remix --router {router}" + (" 2x2 vs 1x4" if router == "topk" else " 2x2"), **numbers)
    if router == "topk":
        assert numbers["one_vs_two"] < 1e-4 and numbers["loss_curve"] < 1e-4


@pytest.mark.slow
def test_train_expert_grpo_two_processes_writes_one_expert(setup, tmp_path):
    """GRPO through TRL on 2 ranks: identical LoRA weights, one expert folder, written by rank 0 alone."""
    root, _, _ = setup
    runs, dump = tmp_path / "runs", tmp_path / "dump"
    runs.mkdir()
    out = runs / "expert"
    seconds = launch(dump, ["train-expert", "--task", DIGITS, "--base", str(root / "base"), "--out", str(out),
                            "--steps", "3", "--batch-size", "4", "--num-generations", "2", "--n-train", "8",
                            "--n-eval", "2", "--max-completion-length", "6", "--rank", "2", "--alpha", "4",
                            "--save-steps", "2", "--lr", "1e-2", "--quiet"])
    r0, r1 = rank_dumps(dump)
    ranks = max_abs_diff(r0, r1)
    record("train-expert (GRPO) 2x4", ranks=ranks, launch_seconds=round(seconds, 1),
           max_lora_B=max(float(v.abs().max()) for k, v in r0.items() if "lora_B" in k))
    assert ranks == 0.0
    assert any(v.abs().max() > 0 for k, v in r0.items() if "lora_B" in k)  # GRPO moved the weights
    assert {p.name for p in runs.iterdir()} == {"expert"}
    assert str(out.resolve()) not in writes_of(dump, 1)  # the expert folder: rank 0 alone
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "grpo" and metrics["steps"] == 3
    assert any(p["reward_std"] > 0 for p in metrics["reward_curve"])
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert len(adapter) == len(r0)
    for key, value in r0.items():  # PEFT drops the adapter name from its saved keys
        assert torch.equal(adapter[key.replace(".default", "")], value), key
    assert writes_of(dump, 1) == []  # nothing at all by rank 1, the work folder's phase adapter included


@pytest.mark.slow
@pytest.mark.parametrize("cap", [None, 3])
def test_distill_two_processes_write_the_traces_of_one_process(tmp_path, cap):
    """9 prompts in batches of 2: rounds of 2 batches (one per rank), the last round one batch. With a
    cap of 3 traces, the ranks stop together where one process stops."""
    from conftest import memorised_base
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path / "in"
    memorised_base(root / "base", ("add",), n=4)
    get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"),
                   LoraConfig(r=2, target_modules=["gate_proj", "up_proj", "down_proj"])).save_pretrained(str(root / "e"))

    def args(out):
        return ["distill", "--base", str(root / "base"), "--experts", str(root / "e"), "--tasks", "add",
                "--out", str(out), "--n-prompts", "9", "--batch-size", "2", "--samples", "2",
                "--temperature", "0.3", "--difficulty", "easy", "--max-new-tokens", "80", "--quiet",
                *(["--max-per-task", str(cap)] if cap else [])]

    runs = tmp_path / "runs"
    runs.mkdir()
    seconds1 = launch(tmp_path / "dump1", args(tmp_path / "one.jsonl"), nproc=1)
    seconds2 = launch(tmp_path / "dump2", args(runs / "two.jsonl"))
    one, two = (tmp_path / "one.jsonl").read_text(), (runs / "two.jsonl").read_text()
    record(f"distill 2 ranks vs 1{f', cap {cap}' if cap else ''}", rows=len(two.splitlines()), identical=two == one,
           one_process_seconds=round(seconds1, 1), two_process_seconds=round(seconds2, 1))
    assert two == one and one  # merged in batch order, no duplicates: the file one process writes
    ids = [json.loads(line)["id"] for line in two.splitlines()]
    assert len(ids) == len(set(ids))
    assert {p.name for p in runs.iterdir()} == {"two.jsonl", "two.jsonl.done.json", "two.jsonl.meta.json"}
    assert writes_of(tmp_path / "dump2", 1) == []
    done = json.loads((runs / "two.jsonl.done.json").read_text())
    assert done == json.loads((tmp_path / "one.jsonl.done.json").read_text())
    if cap is None:
        assert sorted(done) == sorted(f"add:{i}" for i in range(9))
    else:
        assert len(two.splitlines()) == cap and len(done) < 9
