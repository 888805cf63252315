#!/usr/bin/env bash
# The CPU-scale QM9 study at each loss's tuned learning rate (docs/results/qm9.md §1c, issue 15): the learning-rate
# check (seed 0, 4 epochs) picked 4e-3 for the energy loss and 8e-3 for MSE, so each family trains at its rate in a
# study folder of its own, one queue (benchmarks/qm9_cpu_study.sh) per family, side by side, one core each:
#
#   energy (ENERGY_LR, runs/qm9-study-lr4e-3): seeds 0-2 of energy(exp); the other coefficient schemes (constant,
#       inverse, inverse-square: Table 4 at this scale) and the sparse energy (exp), seed 0; energy(exp) on 50 % of
#       the data with the same steps (frac-0.5)
#   MSE (MSE_LR, runs/qm9-study-lr8e-3): seeds 0-2 of MSE; MAE and Kabsch-aligned MSE, seed 0; MSE on 50 % of the data
#
# MAE and Kabsch train at MSE's rate and the other energy variants at energy(exp)'s: the rate of their family, not one
# tuned for each. Every job is the default preset's budget (8 epochs of batch 64, GDM-aug 4 x 64), and within a seed
# all jobs share initial weights, data order and noise. Resumable like the queue: rerun to continue, finished jobs
# are skipped; each finished job's records are copied to docs/results/qm9/cpu-study/.
#
#   nohup bash benchmarks/qm9_tuned_study.sh > runs/qm9-tuned.log 2>&1 &
#   python benchmarks/qm9_study_report.py runs/qm9-study-lr4e-3 --tuned energy:exp=runs/qm9-study-lr4e-3 \
#       --tuned mse=runs/qm9-study-lr8e-3 --tuned-plot docs/results/qm9/cpu_study_tuned.png
#
# ENERGY_JOBS / MSE_JOBS replace a family's job list; the queue's other settings (THREADS, ARCHIVE, CHECKS) pass
# through.
set -uo pipefail
queue="$(dirname "$0")/qm9_cpu_study.sh"
ENERGY_LR=${ENERGY_LR:-4e-3}
MSE_LR=${MSE_LR:-8e-3}
ENERGY_JOBS=${ENERGY_JOBS:-seed-0 seed-1 seed-2 matrix/energy-constant matrix/energy-inverse matrix/energy-inverse_square matrix/sparse_energy-exp frac-0.5}
MSE_JOBS=${MSE_JOBS:-seed-0 seed-1 seed-2 matrix/mae matrix/kabsch_mse frac-0.5}
unset OUT LOSSES PARALLEL  # each family's folder is named by its rate; one loss, one process, per family
family() {  # family NAME VAR=VALUE...: one queue, its lines prefixed with [NAME]; returns the queue's status
    local name=$1; shift
    env "$@" bash "$queue" > >(sed -u "s/^/[$name] /") 2>&1
}
family energy LR="$ENERGY_LR" LOSSES=energy:exp JOBS="$ENERGY_JOBS" &
energy=$!
family mse LR="$MSE_LR" LOSSES=mse JOBS="$MSE_JOBS" &
mse=$!
failed=0
wait $energy || failed=1
wait $mse || failed=1
exit $failed
