#!/usr/bin/env bash
# Issue 15, GPU part, in one prepared command for a lent GPU machine (15 minutes of device time
# per session, at most 10 minutes per command): for braindino at the paper profile (128 slices
# at 224 px) in bf16,
#   1. the raw model throughput in fp32 (TF32 off) and bf16 against the GEMM peak, and the
#      pipeline (decode + preprocess + forward + cache write) against the raw bf16 forward for
#      several decode-worker counts, with the decode workers the raw forward needs
#      (scripts/backbone_throughput.py: every figure a ratio measured in the same run); then
#      GPU vs CPU features at fp32 and bf16 (scripts/precision_fidelity.py --devices cpu,cuda);
#   2. `brainbench run --model braindino --profile paper --fraction 0.01` end to end on phantoms
#      (all nine endpoints, phantom generation included), timed, with its results database.
#
# Here, first:   scripts/gpu_wheels.sh       (the machine has torch but no index to install from)
# Device calls:  two, the paper run first (each part has its own time limit inside):
#                run(command="PART=paper OUT=$OUT scripts/gpu_paper_profile.sh", carry=[".whl"], timeout_s=590)
#                run(command="PART=throughput OUT=$OUT scripts/gpu_paper_profile.sh", carry=[".whl"], timeout_s=590)
# Smoke test on a CPU (checks this script, not the GPU): SMOKE=1 scripts/gpu_paper_profile.sh
#
# Not run on a GPU yet (BENCHMARKS.md "GPU"). Estimated on an H200 with 16 cores, not
# measured: the paper run ~4-6 min (phantoms for 7 datasets x 200 people on 16 processes,
# ~1,230 volumes decoded on 15 workers, 157,000 slices, 5 segmentation heads trained on the
# CPU); throughput ~4-5 min (GEMM and model rounds, 48 synthetic 240x240x155 volumes written,
# then 8 pipeline runs). Together they exceed one command's 10 minutes: hence two calls.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-paper-profile}
PART=${PART:-all}
SMOKE=${SMOKE:-}
mkdir -p "$OUT"
SCRATCH=${SCRATCH:-/tmp/gpu-paper}  # fixed: a second call on a warm machine resumes the run

if [ -n "${PY:-}" ]; then
    :  # an interpreter that already has brainbench (the test suite passes its own)
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
elif [ -d .whl ]; then  # a bare machine: brainbench and the libraries its image lacks
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    PY=python3
else
    echo "no .venv and no .whl here: run scripts/gpu_wheels.sh first and carry .whl" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1

if [ -n "$SMOKE" ]; then
    DEVICE=cpu PROFILE=tiny BATCHES=${BATCHES:-4} WORKERS=${WORKERS:-0,1} VOLUMES=${VOLUMES:-2}
    SHAPE=${SHAPE:-48,48,32} SECONDS_EACH=1 ROUNDS=1 TASKS=${TASKS:-brain_age} FIDELITY_PROFILE=tiny
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" || exit 2
    DEVICE=cuda PROFILE=paper BATCHES=${BATCHES:-64,256} WORKERS=${WORKERS:-0,4,8,$(($(nproc) - 1))}
    VOLUMES=${VOLUMES:-48} SHAPE=${SHAPE:-240,240,155} SECONDS_EACH=${SECONDS_EACH:-8} ROUNDS=${ROUNDS:-3} TASKS=${TASKS:-}
    FIDELITY_PROFILE=cpu  # 16 slices at 112 px: the CPU side stays short
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores $(nproc)"; uptime
  "$PY" -c "import torch, timm, brainbench; print('torch', torch.__version__, 'timm', timm.__version__, 'brainbench', brainbench.__file__)"
} 2>&1 | tee "$OUT/machine.txt"

status=0
if [ "$PART" = all ] || [ "$PART" = throughput ]; then
    timeout "${THROUGHPUT_LIMIT:-540}" "$PY" scripts/backbone_throughput.py --device "$DEVICE" --profile "$PROFILE" --models braindino \
        --modes fp32,bf16 --batches "$BATCHES" --seconds "$SECONDS_EACH" --rounds "$ROUNDS" \
        --pipeline --precision bf16 --workers "$WORKERS" --preprocess workers,device \
        --volumes "$VOLUMES" --shape "$SHAPE" 2>&1 | tee "$OUT/throughput.txt"
    status=$(( status | PIPESTATUS[0] ))
    echo "target (issue 15): pipeline/raw >= 0.8 at bf16"
    # the device is not part of a feature's identity: how far GPU features are from CPU ones
    timeout "${FIDELITY_LIMIT:-150}" "$PY" scripts/precision_fidelity.py --profile "$FIDELITY_PROFILE" \
        --models braindino --people 2 --devices "cpu,$DEVICE" 2>&1 | tee "$OUT/fidelity.txt"
    status=$(( status | PIPESTATUS[0] ))
fi
if [ "$PART" = all ] || [ "$PART" = paper ]; then
    started=$(date +%s)
    # over the limit the store keeps every finished cell: the figure is then a partial run
    timeout "${PAPER_LIMIT:-540}" "$PY" -m brainbench.cli run --model braindino --profile "$PROFILE" --fraction 0.01 \
        --device "$DEVICE" --precision auto ${TASKS:+--tasks "$TASKS"} \
        --cache "$SCRATCH/cache" --results "$SCRATCH/results" --no-progress 2>&1 | tee "$OUT/paper_run.txt"
    status=$(( status | PIPESTATUS[0] ))
    # one file back (a device call returns at most 8): the store, every cell and prediction
    cp "$SCRATCH/results/results.db" "$OUT/paper_results.db" 2>/dev/null
    echo "paper run: $(( $(date +%s) - started )) s wall, phantoms included; load $(cut -d' ' -f1-3 /proc/loadavg)" \
        | tee -a "$OUT/paper_run.txt"
fi
exit $status
