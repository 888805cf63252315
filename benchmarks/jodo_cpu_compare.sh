#!/usr/bin/env bash
# A CPU-scale Table 3 comparison (issue 16, item 5): the JODO-style model of `energyloss run jodo --preset default`
# (64 wide, 3 blocks, 2,000 steps of batch 32 on QM9 with bonds, seed 0) trained with JODO's aligned MSE and with
# the energy loss (exp, k0 24; inverse, k0 3.7): same steps, batch, data order and initial weights. Each model is
# scored on 256 samples with the Table 3 metrics against the QM9 test split (FCD and MMD included).
#
# Resumable: rerunning continues the runs (checkpoints every 500 steps) and skips finished ones. One thread.
#
#   nohup bash benchmarks/jodo_cpu_compare.sh > runs/jodo-cpu.log 2>&1 &
set -euo pipefail
OUT=${OUT:-runs/jodo-cpu}
SEED=${SEED:-0}
for loss in kabsch_mse energy:exp energy:inverse; do
    tag=${loss//:/-}
    echo "== $loss seed $SEED: $(date -Is)"
    energyloss run jodo --preset default --loss "$loss" --seed "$SEED" --threads 1 --device cpu \
        --reference qm9-test --fcd --mmd --no-progress --out "$OUT/seed-$SEED/$tag"
done
echo "== done: $(date -Is)"
