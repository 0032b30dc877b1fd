#!/usr/bin/env bash
# One prepared pass of issue 13's GPU measurements, for a lent GPU machine (about 8 minutes on an H200; run it
# once through the device tool, copy what it prints into benchmarks/README.md). Each step is bounded by
# `timeout` so one slow step cannot eat the session's device time. Results land in $OUT (or ./gpu-out).
#   bash benchmarks/gpu_session.sh
set -u
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
run() { local t=$1; shift; echo "== $* (limit ${t}s)"; timeout "$t" "$@" 2>&1 | tee -a "$OUT/gpu_session.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_session.log"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  | tee -a "$OUT/gpu_session.log"
# 1. grouped vs one-by-one training, reduced paper preset (target >= 8x cell throughput)
run 200 python benchmarks/bench_grouped.py --device cuda --steps 300 --seq-models 8
# 2. sampling a group's models together vs one by one on the GPU
run 90 python benchmarks/bench_group_sampling.py --device cuda --n 2000
# 3. exact k-NN: torch on the GPU vs FAISS on the CPU (indices checked)
run 90 python benchmarks/bench_knn_torch.py
# 4. the dry run's estimate for the full paper preset on this GPU (target < 2 h), and one measured slice
run 120 python -m diffaudit sweep --preset paper --dry-run --device cuda --workers 1
run 120 python benchmarks/bench_sweep_gpu.py --device cuda --steps 1000 --datasets hidden-manifold \
  --out "$OUT/slice"
