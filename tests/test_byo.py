"""The README's "Bring your own adapters" block runs as written: compose, train-router on your own
JSONL (prompt/completion and chat rows mixed), generate, evaluate and export, on a tiny base."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

from conftest import make_adapter

ROOT = Path(__file__).parent.parent
LORAMIX = shutil.which("loramix", path=str(Path(os.sys.executable).parent)) or "loramix"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- byo:start -->\n```bash\n(.*?)```\n<!-- byo:end -->", text, re.S)
    assert block, "README: the byo block is missing"
    return block.group(1)


def test_bring_your_own_block_runs_as_written(tmp_path):
    from loramix.base_model import tiny_random_llama

    model, tok = tiny_random_llama(hidden=64, layers=2)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    adapters = [make_adapter(model, tmp_path / name, r=4, alpha=8, seed=i) for i, name in enumerate(("math", "sorting", "logic"))]
    rows = [{"prompt": f"add: {i}+{i}=", "completion": f"<think>{2 * i}</think>{{\"answer\": \"{2 * i}\"}}",
             "domain": "add"} for i in range(6)]
    (tmp_path / "my_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "add: 1+2\\n"}\n{"prompt": "sort: 3 1 2\\n"}\n')
    env = {**os.environ, "BASE": str(tmp_path / "base"), "A": adapters[0], "B": adapters[1], "C": adapters[2],
           "PATH": f"{Path(LORAMIX).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    script = "set -euo pipefail\n" + readme_block()
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == ["add: 1+2\n", "sort: 3 1 2\n"]
    assert all(name in run.stdout for name in ("math", "sorting", "logic"))  # the routing legend
    metrics = json.loads((tmp_path / "mine" / "trained" / "metrics.json").read_text())
    assert metrics["rows_per_domain"] == {"add": 6}  # the rows' own `domain` field
    assert "add" in run.stdout and "%" in run.stdout  # evaluate's table, in percent
    shared = tmp_path / "mine" / "shared"
    assert (shared / "README.md").is_file() and len(list((shared / "experts").iterdir())) == 3
    # the exported folder alone (the originals gone) gives the trained mixture's logits
    from transformers import AutoModelForCausalLM

    from loramix.mixture import load_mixture

    ids = torch.randint(4, 60, (2, 12))
    with torch.no_grad():
        before = load_mixture(tmp_path / "mine" / "trained",
                              AutoModelForCausalLM.from_pretrained(tmp_path / "base")).eval()(input_ids=ids).logits
        moved = tmp_path / "elsewhere"
        shutil.move(str(shared), moved)
        for a in adapters:
            shutil.rmtree(a)
        after = load_mixture(moved, AutoModelForCausalLM.from_pretrained(tmp_path / "base")).eval()(input_ids=ids).logits
    assert torch.equal(before, after)
