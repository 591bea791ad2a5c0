"""`loramix tasks list` and `loramix tasks verify`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramix.cli import app
from loramix.errors import LoramixError

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
LORAMIX = Path(sys.executable).parent / "loramix"
runner = CliRunner()


def test_tasks_list():
    result = runner.invoke(app, ["tasks", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("add", "sort", "bool", "mod", "strings", "gsm8k", "arc", "medqa", "cola", "boolq"):
        assert f" {name} " in result.output
    gsm8k = next(line for line in result.output.splitlines() if " gsm8k " in line)
    assert "benchmark" in gsm8k and "number" in gsm8k and "math" in gsm8k
    assert "synthetic" in next(line for line in result.output.splitlines() if " add " in line)


@pytest.mark.parametrize("task, fixture, count", [
    ("arc", "arc.jsonl", 4), ("medqa", "medqa.json", 3), ("cola", "cola.jsonl", 4), ("boolq", "boolq.jsonl", 3),
    ("gsm8k", "gsm8k.jsonl", 2),
])
def test_tasks_verify_ok(task, fixture, count):
    result = runner.invoke(app, ["tasks", "verify", task, "--data", str(FIXTURES / fixture)])
    assert result.exit_code == 0, result.output
    assert f"checked {count}, failed 0" in result.output


def test_tasks_verify_failing_row(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"question": "q1", "answer": "#### 5"}, {"question": "q2", "answer": "x\n#### five"},
            {"question": "q3", "answer": "#### 1,000"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["tasks", "verify", "gsm8k", "--data", str(path)])
    assert result.exit_code == 1
    assert "checked 3, failed 1" in result.output
    assert "line 2" in result.output and "'five'" in result.output


def test_tasks_verify_subprocess_exit_codes(tmp_path):
    """The real entry point: a bad row is a one-line error with exit 2, a failing row exits 1."""
    bad = tmp_path / "cola.jsonl"
    bad.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b"}\n')
    res = subprocess.run([str(LORAMIX), "tasks", "verify", "cola", "--data", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    out = " ".join((res.stdout + res.stderr).split())
    assert "line 2: field 'label': missing" in out and "cola.jsonl" in out and "Traceback" not in out

    failing = tmp_path / "gsm.jsonl"
    failing.write_text('{"question": "q", "answer": "#### 7"}\n{"question": "q", "answer": "#### seven"}\n')
    res = subprocess.run([str(LORAMIX), "tasks", "verify", "gsm8k", "--data", str(failing)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "line 2" in res.stdout and "checked 2, failed 1" in res.stdout


def test_tasks_verify_unknown_task():
    result = runner.invoke(app, ["tasks", "verify", "gsm9k", "--data", str(FIXTURES / "cola.jsonl")])
    assert isinstance(result.exception, LoramixError)
    assert str(result.exception).startswith("unknown task 'gsm9k'; valid:")
