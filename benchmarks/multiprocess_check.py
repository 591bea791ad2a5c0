"""The multi-process checks of ``tests/test_multiprocess.py`` (every one, the slow ones too), as
numbers: max |weight difference| between the two ranks, between 1 and 2 processes at the same
global batch, and between a resumed and an uninterrupted run; loss-curve differences; wall times.

Each check is a real ``accelerate launch`` on 2 CPU processes (gloo). About 2.5 minutes on 2 idle cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multiprocess_check.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    parser.add_argument("-k", default=None, help="Only the tests pytest -k selects.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loramix-mp-") as tmp:
        report, junit = Path(tmp) / "report.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "LORAMIX_MP_REPORT": str(report), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_multiprocess.py"), "-m", "slow or not slow",
               "-p", "no:cacheprovider", f"--junitxml={junit}", "-W", "ignore"]
        if args.k:
            cmd += ["-k", args.k]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        total = time.perf_counter() - t0
        records = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
        tests = [{"test": c.get("name"), "seconds": round(float(c.get("time", 0)), 1),
                  "outcome": ("failed" if c.find("failure") is not None or c.find("error") is not None
                              else "xfailed/skipped" if c.find("skipped") is not None else "passed")}
                 for c in ET.parse(junit).getroot().iter("testcase")] if junit.is_file() else []
    print("| check | numbers |\n|---|---|")
    for r in records:
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k != "check")
        print(f"| {r['check']} | {numbers} |")
    print("\n| test | outcome | wall s |\n|---|---|---:|")
    for t in tests:
        print(f"| {t['test']} | {t['outcome']} | {t['seconds']} |")
    print(f"\ntotal {total:.0f} s, pytest exit {res.returncode}")
    if res.returncode != 0:
        print(res.stdout[-6000:])
    if args.json:
        args.json.write_text(json.dumps({"checks": records, "tests": tests, "seconds": round(total, 1)}, indent=2) + "\n")
    return res.returncode


def _fmt(v) -> str:
    if isinstance(v, float) and v and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
