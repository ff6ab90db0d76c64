#!/usr/bin/env bash
# Issue 10's GPU check, one script for a short GPU lease (about 8 minutes on one H200). Uses only what is on
# the machine (python3 with torch, numpy, pandas, tqdm, pytest; Kedro is not needed: the trainer and the
# speed tests import without it). Prints one table at the end; JSON rows and logs go to $OUT.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   SIZE_W=cpu SIZE_M=cpu bash benchmarks/gpu_check.sh   # a smoke run of the script itself on a CPU
#
# Steps (each under its own timeout, so a slow step still leaves the table):
#   1. the CUDA-only tests: no host sync in the training step (torch.cuda.set_sync_debug_mode("error")),
#      losses, fused attention, options through the trainer on CUDA;
#   2. paper scale (Women: 105,558 users, 122,701 items, 810,245 interactions; d=256, 4 layers, 8 heads,
#      batch 256): SASRec and MAF (sum, image/text/category 4096/768/1000-d), fp32 and bf16, 2 epochs each
#      (the second is reported) with a full-ranking validation of all users;
#   3. a 1M-item catalog (200,000 users, 2M interactions), bf16, SASRec and MAF, 1 epoch: peak memory;
#   4. MAF bf16 at paper scale with torch.compile (inductor), if time is left.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
SIZE_W=${SIZE_W:-women}
SIZE_M=${SIZE_M:-1m}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 DO_NOT_TRACK=true HF_HUB_OFFLINE=1
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

echo "== 1. CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -x -rs \
  tests/pipelines/training/test_training_speed.py tests/models/test_losses.py 2>&1 | tail -n 8 | tee "$OUT/tests.log"

echo "== 2. paper scale (women), fp32 and bf16"
timeout 300 $PY benchmarks/bench_training.py --size "$SIZE_W" --models sasrec,maf --precision fp32,bf16 --epochs 2 \
  --json "$OUT/women.json" 2>&1 | tee "$OUT/women.log" | grep -v '^{'

echo "== 3. 1M-item catalog, bf16"
timeout 150 $PY benchmarks/bench_training.py --size "$SIZE_M" --models sasrec,maf --precision bf16 --epochs 1 \
  --json "$OUT/1m.json" 2>&1 | tee "$OUT/1m.log" | grep -v '^{'

LEFT=$((480 - $(date +%s) + T0))
if [ "$LEFT" -gt 90 ]; then
  echo "== 4. torch.compile (inductor), MAF bf16, paper scale (${LEFT} s left)"
  timeout "$LEFT" $PY benchmarks/bench_training.py --size "$SIZE_W" --models maf --precision bf16 --epochs 2 \
    --compile inductor --json "$OUT/women_compiled.json" 2>&1 | tee "$OUT/compiled.log" | grep -v '^{'
fi

echo "== one table (last epoch of each run; $(($(date +%s) - T0)) s in all)"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

rows = []
for name in ("women.json", "women_compiled.json", "1m.json"):
    path = Path(sys.argv[1]) / name
    if path.exists():
        doc = json.loads(path.read_text())
        rows += [{**r, "size": doc["size"], "device": doc["device"]} for r in doc["rows"]]
print("| size | model | precision | s/epoch | windows/s | eval s (all users) | train TFLOP/s | % of peak "
      "(measured matmul) | peak mem GiB | valid NDCG@20 |")
print("|---" * 10 + "|")
for r in rows:
    prec = r["precision"] + (" compiled" if r["compile"] else "")
    print(f"| {r['size']} | {r['model']} | {prec} | {r['epoch_s']:.2f} | {r['windows_per_s']:,.0f} | "
          f"{r['eval_s']:.2f} | {r['train_tflops']:.3g} | {100 * r['train_tflops'] / r['peak_tflops']:.1f}% "
          f"of {r['peak_tflops']:.3g} | {r['peak_mem_gib']:.1f} | {r['valid_ndcg@20']:.4f} |")
EOF
