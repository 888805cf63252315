#!/usr/bin/env bash
# One prepared GPU session, sized for a 15-minute device lease. Measured on an H200 (2026-11-27, with
# TIMING_SECONDS=140 STEP_SECONDS=60 QM9_SECONDS=320 TRAIN_MINUTES=1.8): 343 s of work plus about 30 s of machine start.
#   1. loss timing (paper Tables 10-11 setting: N = 30 .. 300,000, plus a padded QM9-sized batch);
#   2. the loss's share of a training step of the paper-size GNN at batch 512 (paper Table 10);
#   3. a short, compute-matched GDM-aug training on half of QM9 at paper size (9 layers, 256 features), MSE vs
#      energy (exp), then sampling. Without RDKit on the GPU machine the trainer reports stability only and
#      writes samples.npz per loss: evaluate them afterwards with `energyloss eval-molecules PATH`.
# Usage, from the repository root (QM9_CACHE: the cache root given to `energyloss data qm9 --cache-dir`, default
# ~/.cache/energyloss; it holds qm9/qm9-v1.pt and qm9/qm9-v1.json):
#   QM9_CACHE=path OUT=outdir bash benchmarks/gpu_session.sh
# Smoke-test the plumbing on a CPU: PYTHON=.venv/bin/python DEVICE=cpu SIZES="30 300" TRAIN_MINUTES=0.05 N_SAMPLES=8 PRESET=smoke SAMPLING_STEPS=20 ...
# Everything lands in $OUT/results.tgz (checkpoints excluded).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
RES="$OUT/res"
mkdir -p "$RES"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} | tee "$RES/device.txt"

echo "== 1. loss timing"
# shellcheck disable=SC2086
timeout "${TIMING_SECONDS:-140}" "$PY" -m energyloss.cli run timing --device "$DEVICE" --repeats 20 \
  --sizes ${SIZES:-30 300 3000 30000 300000} --max-cell-seconds "${MAX_CELL_SECONDS:-20}" --out "$RES/timing" --no-progress 2>&1 | tail -30

echo "== 2. loss share of a training step"
timeout "${STEP_SECONDS:-60}" "$PY" -m energyloss.experiments.molecules.step_timing --device "$DEVICE" \
  --batch-size "${STEP_BATCH:-512}" --cache-dir "$QM9_CACHE" --json "$RES/step_timing.json" 2>&1 | tail -20

echo "== 3. QM9 GDM-aug, MSE vs energy (exp), compute-matched"
timeout "${QM9_SECONDS:-320}" "$PY" -m energyloss.cli run qm9 --preset "${PRESET:-paper}" --model gdm-aug \
  --losses mse,energy:exp --device "$DEVICE" --data qm9 --dataset-frac 0.5 --train-minutes "${TRAIN_MINUTES:-1.8}" \
  --ema-decay 0.999 --eval-every 6 --n-eval-samples "${N_SAMPLES:-500}" --n-final-samples "${N_SAMPLES:-1000}" \
  --sampling-steps "${SAMPLING_STEPS:-500}" --no-novelty --cache-dir "$QM9_CACHE" --no-progress --out "$RES/qm9" 2>&1 | tail -40

tar czf "$OUT/results.tgz" --exclude='*.pt' -C "$OUT" res
ls -la "$OUT"
