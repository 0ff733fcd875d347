#!/usr/bin/env bash
# A Slurm array job: 200 backtests at once, each array task one sop transaction
# in one shared workspace.  Submit it from the repository's root:
#
#     sbatch examples/slurm_array.sh
#
# Each task computes its parameters from $SLURM_ARRAY_TASK_ID (the same 200
# parameter sets as `examples/dask_grid.py --count 200`), and runs the bundled
# moving-average backtest under sop-run, which begins the transaction (the
# gatekeeper refuses a strategy that already has a row: exit 1, nothing
# created), commits it when the backtest exits 0 and quarantines its folders
# when it fails.  Submitting the same array again refuses all 200 cleanly.
#
# Configure before submitting:
#   * SOP_ROOT: the workspace, on a drive every node mounts at the same path
#     (NFS, Lustre, GPFS, SMB); run `sop init` there once.
#   * the journal store: with many hosts, use the PostgreSQL store in the
#     workspace's .sop/config.toml ([journal] store = "postgresql", dsn = ...)
#     or export SOP_JOURNAL_DSN below; see README "Many machines".
#   * PYTHON: a Python with sop installed (`pip install .`) on every node.
#   * the #SBATCH lines: partition, time, memory, and the array's range and
#     how many run at once (--array=0-199%50 caps it at 50).
#
# Without Slurm (to try it, or in the tests), set the task id yourself:
#     SLURM_ARRAY_TASK_ID=3 SOP_ROOT=/path/to/ws bash examples/slurm_array.sh
#
# Exit status: sop-run's (0 committed, 1 refused or the backtest failed, 3 the
# sheet stayed locked; see sop(1)); Slurm records it per array task.
#
#SBATCH --job-name=sop-grid
#SBATCH --array=0-199
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail

: "${SOP_ROOT:=/shared/backtests-ws}"           # the shared workspace (or export it before sbatch)
export SOP_ROOT
# export SOP_JOURNAL_DSN="postgresql://sop@db.example.org/sop"   # the PostgreSQL store, for many hosts
PYTHON=${PYTHON:-python3}

# Slurm runs a copy of this script from its spool folder: find the checkout from
# the folder sbatch was called in, else (run by hand) from the script's path.
if [ -n "${SLURM_JOB_ID:-}" ]; then
  REPO=${REPO:-$SLURM_SUBMIT_DIR}
else
  REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
fi
HARNESS=$REPO/examples/tools/run_stage1.py

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "error: SLURM_ARRAY_TASK_ID is not set (submit with sbatch, or set it to try one task)" >&2
  exit 2
fi
case $SLURM_ARRAY_TASK_ID in
  ''|*[!0-9]*) echo "error: SLURM_ARRAY_TASK_ID must be a number, not '$SLURM_ARRAY_TASK_ID'" >&2; exit 2 ;;
esac
if [ ! -d "$SOP_ROOT/.sop" ]; then
  echo "error: $SOP_ROOT is not a sop workspace (run 'sop init' there once)" >&2
  exit 2
fi

# Task i -> fast 5..24, slow 30, 35, 40, ...: as dask_grid.grid_of_count().
i=$((10#$SLURM_ARRAY_TASK_ID))
fast=$((5 + i % 20))
slow=$((30 + 5 * (i / 20)))
strategy="sma_fast${fast}_slow${slow}"

# sop-run begins the transaction (owned by sop-run itself), runs the backtest
# with SOP_STRATEGY_DIR and SOP_RUN_DIR set, and commits on exit 0.
SOP_RUN=${SOP_RUN:-sop-run}
echo "task $i on $(hostname): $strategy (fast $fast, slow $slow) in $SOP_ROOT"
exec $SOP_RUN --strategy "$strategy" -- "$PYTHON" "$HARNESS" --fast "$fast" --slow "$slow"
