#!/usr/bin/env bash
# The CPU-scale QM9 study of docs/results/qm9.md §1c (issue 15), on GDM-aug 4 x 64 with the `default` preset
# (8 epochs of batch 64, lr 1e-3, the Table 6 position weights), in this order:
#
#   seed-0, seed-1, seed-2   MSE vs energy(exp), compute-matched (same steps, batch, data order within a seed)
#   lr-5e-4, lr-2e-3, lr-4e-3, lr-8e-3  the learning-rate check: both losses at 4 epochs, seed 0 (4e-3 added
#                            when 2e-3, the top of the first sweep, won for both losses; 8e-3 when 4e-3 did)
#   lr-1.6e-2                MSE alone at 1.6e-2, 4 epochs (8e-3 won for MSE; energy peaked at 4e-3)
#   frac-0.5                 both losses on 50 % of the training set, same steps as the full runs (16 epochs)
#   matrix/<loss>            one seed each of MAE, Kabsch-aligned MSE, sparse energy (exp) and the other three
#                            coefficient schemes (Table 4 at this scale), same budget as seed-0
#   model-gdm                MSE vs energy(exp) on GDM without augmentation, seed 0, same budget as seed-0
#   model-egnn               MSE vs energy(exp) on EDM's EGNN 4 x 64, seed 0, 4 epochs (a step costs ~2.5x GDM's)
#
# Resumable: every run folder keeps its checkpoints, so rerunning this script continues where it stopped and skips
# what is finished. Several copies may run at once (one per free core): each job is taken under an flock(1) lock,
# so a second copy skips the job the first is doing and takes the next. One torch thread per process.
#
#   nohup bash benchmarks/qm9_cpu_study.sh > runs/qm9-study.log 2>&1 &        # a second copy: -> qm9-study-2.log
#
# LR=2e-3 trains every job but the lr-* checks at that learning rate instead of the preset's 1e-3, into
# runs/qm9-study-lr2e-3 unless OUT is given (the seeds and the matrix at the rate the check picked).
# LOSSES=mse trains only that loss in the two-loss jobs (seeds, frac-0.5, model-*), so that each loss can have its
# own rate: LR=4e-3 LOSSES=energy:exp and LR=8e-3 LOSSES=mse, each into its own folder; the report pairs them
# (qm9_study_report.py --tuned energy:exp=runs/qm9-study-lr4e-3 --tuned mse=runs/qm9-study-lr8e-3).
# benchmarks/qm9_tuned_study.sh runs the two families that way, side by side.
#
# With LR set, seed-0 starts from a copy of the finished lr-<LR> check in CHECKS (default runs/qm9-study): that
# check is the same run (seed 0, both losses, that rate) stopped at 4 epochs, and continuing a finished run with more
# epochs gives the longer run's weights bit for bit (tests/test_molecules_train.py::
# test_a_finished_run_extended_by_epochs_equals_the_longer_run), so 4 epochs of training are not paid twice. Its
# epoch-4 record is then the check's final evaluation (500 samples instead of 200). CHECKS= turns this off.
#
# Each finished job's small records (<loss-tag>/metrics.json and config.json, a few kB; not the checkpoints) are
# copied to ARCHIVE/<name of OUT>/<job>/ (default docs/results/qm9/cpu-study; ARCHIVE= turns it off), so that the
# tables can be rebuilt by qm9_study_report.py from what is committed after the run folders are gone. A job with no
# run folder whose records are all archived (it finished on another machine) is skipped, not trained again.
#
# JOBS="seed-1 lr-5e-4" restricts a copy to those jobs. PARALLEL=2 keeps two training processes busy: a job with
# two losses trains them at once (energyloss run qm9 --jobs 2; the same numbers as one after the other), and jobs
# of one loss (the matrix) run two at a time.
set -uo pipefail
command -v energyloss > /dev/null || { echo "energyloss is not on PATH: activate the environment (source .venv/bin/activate)"; exit 2; }
code=$(python -c "import energyloss, os; print(os.path.dirname(energyloss.__file__))")
echo "code: $code $(git -C "$code" rev-parse --short HEAD)"
LR=${LR:-}
OUT=${OUT:-runs/qm9-study${LR:+-lr$LR}}
ARCHIVE=${ARCHIVE-$(dirname "$0")/../docs/results/qm9/cpu-study}
CHECKS=${CHECKS-runs/qm9-study}
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-1}
LOSSES=${LOSSES:-energy:exp,mse}
common=(--preset default --threads "$THREADS" --no-progress ${LR:+--lr "$LR"})  # an lr-* job's own --lr comes later
MATRIX=(mae kabsch_mse sparse_energy:exp energy:constant energy:inverse energy:inverse_square)

loss_tag() {  # the run folder of a loss spec (energyloss's LossSpec.tag for the specs here): energy:exp -> energy-exp
    echo "${1//:/-}"
}
job_args() {  # the arguments of one job, after the common ones
    case $1 in
        seed-*) echo "--model gdm-aug --losses $LOSSES --seed ${1#seed-}" ;;
        lr-1.6e-2) echo "--model gdm-aug --losses mse --seed 0 --epochs 4 --lr 1.6e-2" ;;
        lr-*) echo "--model gdm-aug --losses energy:exp,mse --seed 0 --epochs 4 --lr ${1#lr-}" ;;
        frac-0.5) echo "--model gdm-aug --losses $LOSSES --seed 0 --dataset-frac 0.5 --epochs 16 --eval-every 2" ;;
        matrix/*) local tag=${1#matrix/}; echo "--model gdm-aug --losses ${tag/-/:} --seed 0" ;;  # the tag's first - was the :
        model-gdm) echo "--model gdm --losses $LOSSES --seed 0" ;;
        model-egnn) echo "--model egnn --losses $LOSSES --seed 0 --epochs 4" ;;
        *) echo "unknown job $1" >&2; return 1 ;;
    esac
}

all_jobs=(seed-0 seed-1 seed-2 lr-5e-4 lr-2e-3 lr-4e-3 lr-8e-3 lr-1.6e-2 frac-0.5)
for loss in "${MATRIX[@]}"; do all_jobs+=("matrix/$(loss_tag "$loss")"); done
all_jobs+=(model-gdm model-egnn)
read -r -a jobs <<< "${JOBS:-${all_jobs[*]}}"

mkdir -p "$OUT/.locks"
failed=0
run_job() {  # run_job JOB ARGS...: one job under its lock; returns 0 (done or taken by another copy) or 1
    local job=$1; shift
    local lock="$OUT/.locks/${job//\//_}.lock"
    echo "== $job: $(date -Is)"
    local archived
    if [[ ! -e $OUT/$job ]] && archived=$(archived_records "$job" "$@"); then
        echo "== $job: finished before, its records are in $archived; no run folder here, so not trained again"
        return 0
    fi
    local check="$CHECKS/lr-$LR"
    if [[ -n $LR && -n $CHECKS && $job == seed-0 && ! -e $OUT/$job && -f $check/summary.md ]]; then
        # under the job's lock, so that two copies of the queue do not both copy
        flock -n "$lock" bash -c '[[ -e $2 ]] || cp -a "$1" "$2"' _ "$check" "$OUT/$job" &&
            [[ -e $OUT/$job ]] && echo "== $job: continues the finished check $check (same run, 4 of its epochs)"
    fi
    flock -n -E 75 "$lock" energyloss run qm9 "${common[@]}" "$@" --out "$OUT/$job"
    local rc=$?
    if [[ $rc == 75 ]]; then
        echo "== $job: taken by another copy, skipped"
    elif [[ $rc != 0 ]]; then
        echo "== $job: failed (exit $rc)"
        return 1
    elif [[ -n $ARCHIVE ]]; then
        archive_job "$job"
    fi
    return 0
}
archived_records() {  # archived_records JOB ARGS...: prints the job's archive folder if it has every loss's records
    local job=$1 losses="" loss; shift
    [[ -n $ARCHIVE ]] || return 1
    while [[ $# -gt 0 ]]; do [[ $1 == --losses ]] && losses=$2; shift; done
    local dest="$ARCHIVE/$(basename "$OUT")/$job"
    for loss in ${losses//,/ }; do
        [[ -f $dest/$(loss_tag "$loss")/metrics.json ]] || return 1
    done
    [[ -n $losses ]] && echo "$dest"
}
archive_job() {  # copy a finished job's metrics.json and config.json files to ARCHIVE/<name of OUT>/<job>/
    local job=$1 src dest
    for src in "$OUT/$job"/*/; do
        [[ -f $src/metrics.json ]] || continue  # no loss folder (or one that never wrote records): nothing to copy
        dest="$ARCHIVE/$(basename "$OUT")/$job/$(basename "$src")"
        mkdir -p "$dest" && cp "$src"/metrics.json "$src"/config.json "$dest"/
    done
    echo "== $job: records copied to $ARCHIVE/$(basename "$OUT")/$job"
}
background=0  # single-loss jobs running in the background (at most PARALLEL)
for job in "${jobs[@]}"; do
    args=$(job_args "$job") || exit 2
    read -r -a argv <<< "$args"
    if [[ $PARALLEL -gt 1 && $args != *,* ]]; then  # one loss: run it beside the next one
        if [[ $background -ge $PARALLEL ]]; then
            wait -n || failed=1
            background=$((background - 1))
        fi
        run_job "$job" --jobs 1 "${argv[@]}" &
        background=$((background + 1))
    else
        while [[ $background -gt 0 ]]; do wait -n || failed=1; background=$((background - 1)); done
        run_job "$job" --jobs "$PARALLEL" "${argv[@]}" || failed=1
    fi
done
while [[ $background -gt 0 ]]; do wait -n || failed=1; background=$((background - 1)); done
echo "== done: $(date -Is)"
exit $failed
