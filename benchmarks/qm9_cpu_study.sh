#!/usr/bin/env bash
# The CPU-scale QM9 study of docs/results/qm9.md §1c (issue 15): MSE vs energy(exp) on GDM-aug, 4 x 64, the
# `default` preset (8 epochs, lr 1e-3, batch 64), seeds 0, 1, 2, compute-matched (same steps, batch and data order
# for both losses of a seed), then a learning-rate check at 4 epochs for both losses.
#
# Resumable: every run folder keeps its checkpoints, so rerunning this script continues where it stopped and skips
# what is finished. One process, one torch thread (the machine has 2 cores; the other is left for work).
#
#   nohup bash benchmarks/qm9_cpu_study.sh > runs/qm9-study.log 2>&1 &
set -euo pipefail
echo "code: $(python -c "import energyloss, os; print(os.path.dirname(energyloss.__file__))") $(git -C "$(python -c "import energyloss, os; print(os.path.dirname(energyloss.__file__))")" rev-parse --short HEAD)"
OUT=${OUT:-runs/qm9-study}
THREADS=${THREADS:-1}
common=(--preset default --model gdm-aug --threads "$THREADS" --jobs 1 --no-progress)
for seed in 0 1 2; do
    echo "== seed $seed: $(date -Is)"
    energyloss run qm9 "${common[@]}" --losses energy:exp,mse --seed "$seed" --out "$OUT/seed-$seed"
done
for lr in 5e-4 2e-3; do
    echo "== lr $lr: $(date -Is)"
    energyloss run qm9 "${common[@]}" --losses energy:exp,mse --seed 0 --epochs 4 --lr "$lr" --out "$OUT/lr-$lr"
done
echo "== done: $(date -Is)"
