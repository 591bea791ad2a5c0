#!/usr/bin/env bash
# The prepared GPU check of issue 16: one run on a lent GPU machine (bare, a few minutes), or at a tiny
# size on the CPU (--tiny, kept working by tests/test_gpu_check.py in `make test`).
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [--tiny]
#
# OUTDIR defaults to $OUT (the device tool's folder), else ./gpu_check_out. Every step runs even when an
# earlier one failed; each step's exit status goes to OUTDIR/summary.json and the script exits 1 at the
# end if any step failed. What it writes (7 files: the device tool brings back at most 8):
#   log.txt            every step's command, start and end (timestamped) and its output
#   summary.json       per step: name, status (exit code; "skipped" when the time budget ran out), seconds
#   env.json           nvidia-smi, python/torch/transformers/peft versions, CUDA, device name, capability
#   tests.xml          JUnit XML of the kernel and parity tests on the device, fp32 and bf16:
#                      grouped GEMM / per-expert loop / decode gather against a float64 reference
#                      (tests/test_kernels.py) and forced expert against PEFT (tests/test_mixture.py)
#   bench.json         {"runs": {run name: {"step": its step, "result": that run's `loramix bench --json`}}}
#   bench.png          the plot of the first bench run (Qwen2.5-1.5B shapes, r=16, train and prefill)
#   bench_runs.tar.gz  every run's own JSON and PNG (`loramix bench --from-json` prints its tables)
#
# GPU runs (random weights, bf16, all on one GPU; peak GPU memory per method is in each row):
#   shapes  qwen2.5-1.5b (hidden 1536, intermediate 8960, 28 layers), llama-3.2-3b (3072, 8192, 28)
#   train (full and sparse STE) + prefill at batch 8 x 1024; decode 16 new tokens at batch 1 and 32
#   hard, hard_sparse, soft at E in {2, 8, 32}; remix (top-2), xlora, arrow at E = 8 (the issue's
#   X-LoRA/hard target is at E = 8; E = 32 for all three would double the run); base and PEFT LoRA once
#   r = 16 for every workload; r = 128 for train + prefill, then decode if time is left
#
# Time budget (8 minutes on one GPU). NOT MEASURED: no GPU was available when this was written, so these
# are estimates from FLOP counts (about 400 TFLOP/s reached in bf16 at these sizes) and HF generate's
# per-token overhead (about 25 ms a step at 28 layers); the first GPU run's summary.json has the truth.
#   env 5 s; tests 45 s (pytest start-up, tiny models, both dtypes)
#   qwen2.5-1.5b r16: train+prefill 40 s, decode b1 32 s, decode b32 35 s
#   llama-3.2-3b r16: train+prefill 65 s, decode b1 35 s, decode b32 40 s
#   r128 train+prefill: qwen 50 s, llama 90 s (expert folders of 0.2-0.5 GB each, written and hashed)
#   total about 440 s; r128 decode (4 more steps) only if time is left.
# The script enforces the budget itself: GPU_CHECK_BUDGET_S (default 450 s; 60 s with --tiny) bounds
# the whole run; each step gets at most its own cap and the time left, and a step that would start with
# under 30 s (GPU_CHECK_MIN_START_S) left is skipped (recorded as "skipped", not as a failure). Steps are in priority order.
# GPU_CHECK_ONLY=name,name,... runs only the steps named (the others are recorded as skipped): a rerun on a
# second lease of what the first one missed, e.g. GPU_CHECK_ONLY=bench_llama-3.2-3b_r128_decode_b1.
# With the device tool:  run(command="bash benchmarks/gpu_check.sh $OUT", timeout_s=540)
set -euo pipefail

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
OUTDIR="" TINY=0
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [[ -z "$OUTDIR" ]] || { echo "gpu_check.sh: one OUTDIR only (got $OUTDIR and $arg)" >&2; exit 2; }
       OUTDIR="$arg" ;;
  esac
done
OUTDIR="${OUTDIR:-${OUT:-./gpu_check_out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$(dirname "$0")/.."  # the repository root

# The project's venv where there is one; on a bare GPU machine the image's python3 (torch, transformers,
# peft, typer, rich, pytest, hypothesis and matplotlib are there) with loramix from src/.
PY="${LORAMIX_PY:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import loramix" 2>/dev/null; then export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ $TINY == 1 ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

LOG="$OUTDIR/log.txt" STEPS="$OUTDIR/.steps.tsv" RUNS="$OUTDIR/bench_runs"
: >"$LOG"; : >"$STEPS"; rm -rf "$RUNS"; mkdir -p "$RUNS"
BUDGET_S="${GPU_CHECK_BUDGET_S:-$([[ $TINY == 1 ]] && echo 60 || echo 450)}"
MIN_START_S="${GPU_CHECK_MIN_START_S:-$([[ $TINY == 1 ]] && echo 5 || echo 30)}"
T0=$SECONDS

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }

# step NAME CAP_S CMD...: run CMD with its output in the log, for at most min(CAP_S, time left); record
# its exit status (124: stopped at the time limit) and go on whatever it returned.
step() {
  local name="$1" cap="$2"; shift 2
  local left=$((BUDGET_S - (SECONDS - T0))) why=""
  if [[ -n "${GPU_CHECK_ONLY:-}" && ",$GPU_CHECK_ONLY," != *",$name,"* ]]; then
    why="not in GPU_CHECK_ONLY"
  elif ((left < MIN_START_S)); then
    why="${left}s of the ${BUDGET_S}s budget left"
  fi
  if [[ -n "$why" ]]; then
    log "SKIP $name: $why"
    printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
    return 0
  fi
  local limit=$((cap < left ? cap : left)) start=$SECONDS rc=0
  log "START $name (limit ${limit}s): $*"
  if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' "$name" "$@"; fi  # a function of this script
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
  log "END $name: exit $rc after $((SECONDS - start))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$STEPS"
}

env_json() {
  local smi="$OUTDIR/.nvidia-smi.txt"
  if command -v nvidia-smi >/dev/null; then nvidia-smi >"$smi" 2>&1 || true; else echo "nvidia-smi: not found" >"$smi"; fi
  cat "$smi"
  "$PY" - "$OUTDIR/env.json" "$smi" <<'EOF'
import json, platform, sys
import torch, transformers, peft
import loramix
cuda = torch.cuda.is_available()
env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "transformers": transformers.__version__, "peft": peft.__version__,
       "loramix": loramix.__version__, "cuda_available": cuda,
       "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
       "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
       "grouped_mm": hasattr(torch, "_grouped_mm"), "nvidia_smi": open(sys.argv[2]).read()}
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
print(json.dumps({k: v for k, v in env.items() if k != "nvidia_smi"}, indent=2))
EOF
}

# bench NAME ARGS...: one `loramix bench` run into $RUNS/NAME.{json,png}
bench() {
  local name="$1"; shift
  "$PY" -m loramix.cli bench --json "$RUNS/$name.json" --png "$RUNS/$name.png" "$@"
}

export PY OUTDIR RUNS LOG
export -f log env_json bench

if [[ $TINY == 1 ]]; then
  DEVICE=cpu DTYPES=float32,bfloat16
else
  DEVICE=cuda DTYPES=float32,bfloat16
fi

log "gpu_check: OUTDIR=$OUTDIR tiny=$TINY python=$PY budget=${BUDGET_S}s"
step env 60 env_json
step tests 120 env LORAMIX_TEST_DEVICE="$DEVICE" LORAMIX_TEST_DTYPE="$DTYPES" "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_kernels.py tests/test_mixture.py -k test_device -rs --junitxml="$OUTDIR/tests.xml"

if [[ $TINY == 1 ]]; then
  # every method and workload, bf16, at the tiny size; decode at batch 1 and 2 as a stand-in for 1 and 32
  step bench_tiny_train_prefill 60 bench tiny_train_prefill --tiny --device cpu --dtype bf16 --rank 8 \
    --experts 2,4 --other-experts 2 --workloads train,prefill --seq-len 16
  step bench_tiny_decode_b1 60 bench tiny_decode_b1 --tiny --device cpu --dtype bf16 --rank 8 --experts 2,4 \
    --other-experts 2 --workloads decode --batch 1 --new-tokens 2
else
  common=(--device cuda --dtype bf16 --experts 2,8,32 --other-experts 8)
  tp=(--workloads train,prefill --batch 8 --seq-len 1024 --repeats 2)
  dec=(--workloads decode --new-tokens 16 --repeats 2)
  step bench_qwen2.5-1.5b_r16_train_prefill 150 bench qwen2.5-1.5b_r16_train_prefill --shape qwen2.5-1.5b --rank 16 "${common[@]}" "${tp[@]}"
  step bench_qwen2.5-1.5b_r16_decode_b1 100 bench qwen2.5-1.5b_r16_decode_b1 --shape qwen2.5-1.5b --rank 16 "${common[@]}" "${dec[@]}" --batch 1
  step bench_qwen2.5-1.5b_r16_decode_b32 100 bench qwen2.5-1.5b_r16_decode_b32 --shape qwen2.5-1.5b --rank 16 "${common[@]}" "${dec[@]}" --batch 32
  step bench_llama-3.2-3b_r16_train_prefill 150 bench llama-3.2-3b_r16_train_prefill --shape llama-3.2-3b --rank 16 "${common[@]}" "${tp[@]}"
  step bench_llama-3.2-3b_r16_decode_b1 100 bench llama-3.2-3b_r16_decode_b1 --shape llama-3.2-3b --rank 16 "${common[@]}" "${dec[@]}" --batch 1
  step bench_llama-3.2-3b_r16_decode_b32 100 bench llama-3.2-3b_r16_decode_b32 --shape llama-3.2-3b --rank 16 "${common[@]}" "${dec[@]}" --batch 32
  step bench_qwen2.5-1.5b_r128_train_prefill 150 bench qwen2.5-1.5b_r128_train_prefill --shape qwen2.5-1.5b --rank 128 "${common[@]}" "${tp[@]}"
  step bench_llama-3.2-3b_r128_train_prefill 180 bench llama-3.2-3b_r128_train_prefill --shape llama-3.2-3b --rank 128 "${common[@]}" "${tp[@]}"
  step bench_qwen2.5-1.5b_r128_decode_b1 100 bench qwen2.5-1.5b_r128_decode_b1 --shape qwen2.5-1.5b --rank 128 "${common[@]}" "${dec[@]}" --batch 1
  step bench_qwen2.5-1.5b_r128_decode_b32 100 bench qwen2.5-1.5b_r128_decode_b32 --shape qwen2.5-1.5b --rank 128 "${common[@]}" "${dec[@]}" --batch 32
  step bench_llama-3.2-3b_r128_decode_b1 100 bench llama-3.2-3b_r128_decode_b1 --shape llama-3.2-3b --rank 128 "${common[@]}" "${dec[@]}" --batch 1
  step bench_llama-3.2-3b_r128_decode_b32 100 bench llama-3.2-3b_r128_decode_b32 --shape llama-3.2-3b --rank 128 "${common[@]}" "${dec[@]}" --batch 32
fi

# bench.json (every run that finished), bench.png (the first run's plot) and the tarball; then the
# summary. Not steps of their own: they run last whatever the budget says, and take a second.
collect() {
  "$PY" - "$RUNS" "$OUTDIR" "$STEPS" <<'EOF'
import json, shutil, sys
from pathlib import Path
runs_dir, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
args = {}
for line in steps.read_text().splitlines():
    name = line.split("\t")[0]
    args[name.removeprefix("bench_")] = name
runs = {p.stem: {"step": args.get(p.stem), "result": json.loads(p.read_text())} for p in sorted(runs_dir.glob("*.json"))}
(out / "bench.json").write_text(json.dumps({"runs": runs}, indent=2) + "\n")
pngs = sorted(runs_dir.glob("*.png"), key=lambda p: ("train_prefill" not in p.stem, "r16" not in p.stem, p.stem))
if pngs:
    shutil.copyfile(pngs[0], out / "bench.png")
print(f"bench.json: {len(runs)} run(s); bench.png: {pngs[0].name if pngs else 'none'}")
EOF
  tar -czf "$OUTDIR/bench_runs.tar.gz" -C "$OUTDIR" bench_runs
}
collect >>"$LOG" 2>&1 || log "collect failed: exit $?"
rm -rf "$RUNS" "$OUTDIR/.nvidia-smi.txt"

"$PY" - "$STEPS" "$OUTDIR/summary.json" "$TINY" "$BUDGET_S" "$((SECONDS - T0))" <<'EOF'
import json, os, sys
steps_file, out, tiny, budget, total = sys.argv[1:]
steps = []
for line in open(steps_file).read().splitlines():
    name, status, seconds = line.split("\t")
    steps.append({"name": name, "status": status if status == "skipped" else int(status), "seconds": int(seconds)})
summary = {"mode": "tiny (cpu)" if tiny == "1" else "gpu", "budget_seconds": int(budget), "total_seconds": int(total),
           "steps": steps, "failed": [s["name"] for s in steps if s["status"] not in (0, "skipped")],
           "skipped": [s["name"] for s in steps if s["status"] == "skipped"]}
only = [n for n in os.environ.get("GPU_CHECK_ONLY", "").split(",") if n]
summary["unknown_only"] = [n for n in only if n not in {s["name"] for s in steps}]  # a typo runs nothing
open(out, "w").write(json.dumps(summary, indent=2) + "\n")
EOF
rm -f "$STEPS"
log "done in $((SECONDS - T0))s; summary in $OUTDIR/summary.json"
"$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps(s, indent=2)); sys.exit(1 if s['failed'] or s['unknown_only'] else 0)" "$OUTDIR/summary.json"
