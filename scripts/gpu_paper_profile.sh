#!/usr/bin/env bash
# Issue 15, GPU part: on a machine with a CUDA GPU, measure for braindino at the paper profile
# (128 slices at 224 px) the raw model throughput in fp32 and bf16 against the GEMM peak,
# the end-to-end pipeline (decode + preprocess + forward + cache write) against the raw bf16
# forward for several decode-worker counts, and the decode workers the raw forward needs.
# Every figure is a ratio measured in the same run (scripts/backbone_throughput.py).
#
#   scripts/gpu_paper_profile.sh            # writes gpu-paper-profile/*.txt
#   OUT=/tmp/x WORKERS=0,4,8,15 VOLUMES=64 scripts/gpu_paper_profile.sh
#
# Not run on a GPU yet (BENCHMARKS.md "Precision and throughput"). Takes ~5 min on an H100/H200
# class GPU with 16 cores, most of it writing the synthetic 240x240x155 volumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-paper-profile}
WORKERS=${WORKERS:-0,2,4,8,$(($(nproc) - 1))}
VOLUMES=${VOLUMES:-48}
BATCHES=${BATCHES:-64,128,256}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; uptime; } \
    | tee "$OUT/machine.txt"
# the model alone (fp32 with TF32 off, product bf16, plain autocast, wholly cast), then the
# pipeline at bf16 for each worker count
"$PY" scripts/backbone_throughput.py --device cuda --profile paper --models braindino \
    --modes fp32,bf16,bf16-autocast,bf16-cast --batches "$BATCHES" --seconds 10 \
    --pipeline --precision bf16 --workers "$WORKERS" --preprocess workers,device \
    --volumes "$VOLUMES" \
    --shape 240,240,155 2>&1 | tee "$OUT/throughput.txt"
echo "target (issue 15): pipeline/raw >= 0.8 at bf16; see $OUT/throughput.txt"
