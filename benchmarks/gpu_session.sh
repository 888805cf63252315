#!/usr/bin/env bash
# One prepared GPU session, sized for a 15-minute device lease (about 12 minutes of work). PARTS picks what runs:
#
#   timing  loss timing, paper Tables 10-11 setting (N = 30 .. 300,000, plus a padded QM9-sized batch)    ~2.5 min
#   step    the loss's share of a training step of the paper-size GNN at batch 512 (Table 10)            ~1 min
#   qm9     paper-size GDM-aug (9 x 256) on half of QM9, MSE vs energy(exp), SEEDS (default 0 1), bf16
#           denoiser: seed 0 trains the first loss for QM9_MINUTES and every later run gets its steps, so all
#           runs are compute-matched; each run is then sampled with EDM's ancestral sampler and scored  ~8.5 min
#   jodo    paper-size JODO (256 wide, 8 blocks) for JODO_STEPS steps with its aligned MSE and the energy
#           loss (inverse, exp), same steps, then JODO_SAMPLES samples                                  ~4 min
#
# Default PARTS="qm9" (timing and step were measured on an H200 on 2026-11-27, docs/results/loss-timing.md). A
# lease fits qm9, or jodo + timing + step, not all. Without RDKit on the device the trainers report stability
# only and write samples.npz: score them here with `energyloss eval-molecules PATH` (JODO: `--table3`).
#
# Usage, from the repository root (QM9_CACHE: the cache root of `energyloss data qm9 --cache-dir`, default
# ~/.cache/energyloss; it holds qm9/qm9-v1.pt, and for jodo qm9/qm9-train-bonds-v1.*):
#   QM9_CACHE=path OUT=outdir PARTS="qm9" bash benchmarks/gpu_session.sh
# Smoke-test the plumbing on a CPU (a minute):
#   PYTHON=.venv/bin/python DEVICE=cpu PARTS="qm9 jodo" PRESET=smoke QM9_MINUTES=0.05 N_SAMPLES=8 \
#     SAMPLING_STEPS=20 JODO_PRESET=smoke JODO_STEPS=4 JODO_SAMPLES=4 JODO_SAMPLING_STEPS=3 OUT=/tmp/gpu-smoke \
#     bash benchmarks/gpu_session.sh
# Everything lands in $OUT/results.tgz (checkpoints excluded).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
PARTS=${PARTS:-qm9}
QM9_CACHE=${QM9_CACHE:-$HOME/.cache/energyloss}
export ENERGYLOSS_CACHE="$QM9_CACHE"
RES="$OUT/res"
mkdir -p "$RES"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  date -Is; git rev-parse --short HEAD 2>/dev/null; echo "PARTS=$PARTS"
} | tee "$RES/device.txt"
has() { [[ " $PARTS " == *" $1 "* ]]; }
el() { "$PY" -m energyloss.cli "$@"; }

if has timing; then
    echo "== loss timing"
    # shellcheck disable=SC2086
    timeout "${TIMING_SECONDS:-140}" "$PY" -m energyloss.cli run timing --device "$DEVICE" --repeats 20 \
      --sizes ${SIZES:-30 300 3000 30000 300000} --max-cell-seconds "${MAX_CELL_SECONDS:-20}" --out "$RES/timing" \
      --no-progress 2>&1 | tail -30
fi

if has step; then
    echo "== loss share of a training step"
    timeout "${STEP_SECONDS:-60}" "$PY" -m energyloss.experiments.molecules.step_timing --device "$DEVICE" \
      --batch-size "${STEP_BATCH:-512}" --cache-dir "$QM9_CACHE" --json "$RES/step_timing.json" 2>&1 | tail -20
fi

if has qm9; then
    steps=""
    for seed in ${SEEDS:-0 1}; do
        echo "== QM9 GDM-aug seed $seed, MSE vs energy (exp), compute-matched $(date -Is)"
        budget=(--train-minutes "${QM9_MINUTES:-1.2}")
        [[ -n $steps ]] && budget=(--max-steps "$steps")
        timeout "${QM9_SECONDS:-300}" "$PY" -m energyloss.cli run qm9 --preset "${PRESET:-paper}" --model gdm-aug \
          --losses mse,energy:exp --device "$DEVICE" --data qm9 --dataset-frac 0.5 "${budget[@]}" --seed "$seed" \
          --precision "${PRECISION:-bf16}" --ema-decay 0.999 --eval-every 1000 --n-eval-samples "${N_SAMPLES:-500}" \
          --n-final-samples "${N_SAMPLES:-500}" --sampling-steps "${SAMPLING_STEPS:-500}" --no-novelty \
          --cache-dir "$QM9_CACHE" --no-progress --out "$RES/qm9/seed-$seed" 2>&1 | tail -12
        # the steps every later run trains: those seed 0's first loss reached in its time budget
        [[ -z $steps ]] && steps=$("$PY" -c "import json,sys; r=json.load(open(sys.argv[1]))['records']; print(r[-1]['step'])" \
          "$RES/qm9/seed-$seed/metrics.json" 2>/dev/null)
        echo "steps per run: ${steps:-unknown}"
    done
fi

if has jodo; then
    for loss in kabsch_mse energy:inverse energy:exp; do
        echo "== JODO $loss, ${JODO_STEPS:-1500} steps $(date -Is)"
        timeout "${JODO_SECONDS:-100}" "$PY" -m energyloss.cli run jodo --preset "${JODO_PRESET:-paper}" --loss "$loss" \
          --steps "${JODO_STEPS:-1500}" --warmup 0 --device "$DEVICE" --eval-samples "${JODO_SAMPLES:-1000}" \
          --eval-batch-size "${JODO_SAMPLES:-1000}" --sampling-steps "${JODO_SAMPLING_STEPS:-500}" --reference none \
          --no-fcd --no-mmd --no-progress --out "$RES/jodo/${loss//:/-}" 2>&1 | grep -v '^{"step"' | tail -6
    done
fi

tar czf "$OUT/results.tgz" --exclude='*.pt' -C "$OUT" res
ls -la "$OUT"
