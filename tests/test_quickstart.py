"""The README's Python example runs as written and prints one expert per prompt token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import make_adapter

ROOT = Path(__file__).parent.parent


def test_readme_example_is_the_example_file_and_runs(tmp_path):
    example = (ROOT / "examples" / "quickstart.py").read_text()
    code = example.split("\n", 1)[1]  # the file's first line is a comment the README puts in prose
    assert code.strip() in (ROOT / "README.md").read_text()
    from loramix.base_model import tiny_random_llama

    model, tok = tiny_random_llama(hidden=64, layers=2)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    adapters = [make_adapter(model, tmp_path / name, r=4, alpha=8, seed=i)
                for i, name in enumerate(("math", "sorting", "logic"))]
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "base"), *adapters],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0] == f"trainable parameters: {64 * 3}"
    prompt = "add: 482+739\n"
    assert len(lines[1:]) == len(prompt)
    assert all(line.split(" -> ")[1] in ("math", "sorting", "logic") for line in lines[1:])
