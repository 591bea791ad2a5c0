"""`train-remix` and `train-prompt-router` read a benchmark's data per split (`--data`,
`task_kwargs`): train rows for training, the validation (else test) file for the router's held-out set."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramix.errors import LoramixError
from loramix.train.prompt_router import _router_rows
from loramix.train.remix import ReMixConfig, training_pairs

SPLITS = Path(__file__).parent / "fixtures" / "benchmarks" / "splits"
DATA = {"gsm8k": {"train": str(SPLITS / "gsm8k_train.jsonl"), "test": str(SPLITS / "gsm8k_test.jsonl")},
        "boolq": {"train": str(SPLITS / "boolq_train.jsonl"), "test": str(SPLITS / "boolq_dev.jsonl")}}


def _questions(path) -> list[str]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows]


def _asked(prompts, path) -> list[str]:
    """Which of the file's questions each prompt holds (the oracle: the raw file)."""
    return [next((q for q in _questions(path) if q in p), None) for p in prompts]


def test_remix_trains_on_the_train_file(tmp_path):
    config = ReMixConfig(out=tmp_path / "m", tasks=("gsm8k",), task_kwargs={"gsm8k": DATA["gsm8k"]})
    config.validate()
    pairs = training_pairs(config)
    assert _asked([p.prompt for p in pairs], DATA["gsm8k"]["train"]) == _questions(DATA["gsm8k"]["train"])
    assert config.identity()["task_kwargs"] == {"gsm8k": DATA["gsm8k"]}
    assert "task_kwargs" not in ReMixConfig(out=tmp_path / "m", tasks=("add",)).identity()  # old runs keep theirs
    with pytest.raises(LoramixError, match=r"task_kwargs.arc: not among the tasks \(gsm8k\)"):
        ReMixConfig(out=tmp_path / "m", tasks=("gsm8k",), task_kwargs={"arc": {"train": "x"}}).validate()
    with pytest.raises(LoramixError, match="task 'gsm8k' needs a data file for its train split"):
        training_pairs(ReMixConfig(out=tmp_path / "m", tasks=("gsm8k",)))


def test_prompt_router_reads_train_and_holds_out_the_other_split():
    train, held = _router_rows(None, ["gsm8k", "boolq"], None, 10, 0, None, DATA)
    gsm_train = [p for p, label, _ in train if label == "gsm8k"]
    gsm_held = [p for p, label, _ in held if label == "gsm8k"]
    assert _asked(gsm_train, DATA["gsm8k"]["train"]) == _questions(DATA["gsm8k"]["train"])
    assert _asked(gsm_held, DATA["gsm8k"]["test"]) == _questions(DATA["gsm8k"]["test"])[:2]
    assert {e for _, label, e in train if label == "boolq"} == {1}  # task i -> expert i
    with pytest.raises(LoramixError, match="task 'gsm8k' needs a data file for its train split"):
        _router_rows(None, ["gsm8k", "boolq"], None, 10, 0, None, {"boolq": DATA["boolq"]})


def test_data_option_on_both_commands(tmp_path, monkeypatch):
    import loramix.train.prompt_router as pr
    import loramix.train.remix as remix
    from loramix.cli import app

    seen = {}
    monkeypatch.setattr(remix, "train_remix", lambda cfg: seen.setdefault("remix", cfg) and tmp_path)

    def fake_router(base, experts, out, **kw):
        seen["router"] = kw
        raise LoramixError("stop after the arguments")

    monkeypatch.setattr(pr, "build_prompt_router", fake_router)
    data = [a for t, files in DATA.items() for s, f in files.items() for a in ("--data", f"{t}:{s}={f}")]
    runner = CliRunner()
    result = runner.invoke(app, ["train-remix", "--out", str(tmp_path / "m"), "--tasks", "gsm8k,boolq", *data])
    assert result.exit_code == 0, result.output
    assert seen["remix"].task_kwargs == DATA
    result = runner.invoke(app, ["train-prompt-router", "--experts", "a,b", "--out", str(tmp_path / "r"),
                                 "--tasks", "gsm8k,boolq", *data])
    assert seen["router"]["task_kwargs"] == DATA and seen["router"]["tasks"] == ["gsm8k", "boolq"]
    result = runner.invoke(app, ["train-remix", "--out", str(tmp_path / "m"), "--tasks", "gsm8k",
                                 "--data", "arc:train=x.jsonl"])
    assert result.exit_code != 0 and "task 'arc' is not among the tasks" in str(result.exception)
