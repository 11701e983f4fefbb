#!/usr/bin/env bash
# The attention study (docs/method.md): CMT zero-shot and tuned under `window`, `banded` with
# L = K = 20 and `banded` with L = 40, every (variant, seed) as its own process, then one
# report per variant over the seeds whose runs are complete. Needs a machine with a core per
# process (9 by default) or a GPU; reruns with other SEEDS into the same WORK add seeds.
#
#   SEEDS="0 1 2" [PYTHON=python3] scripts/attention_study.sh cheetah_vel data/cheetah_vel /tmp/study [--set ...]
#   python scripts/variant_table.py WORK    # after copying WORK/<variant>/all/results.* aside
set -u
preset=$1; data=$2; work=$3; shift 3
seeds=${SEEDS:-0 1 2}
mkdir -p "$work"
common=(--preset "$preset" --set 'compare.methods=[cmt_zero_shot,cmt_tuned]' --set 'compare.backbones=[cmt]' "$@")
declare -A variant=(
  [window]="--set model.attention=window"
  [banded_L20]="--set model.attention=banded --set model.train_len=20"
  [banded_L40]="--set model.attention=banded --set model.train_len=40"
)
start=$(date +%s)
for v in "${!variant[@]}"; do
  for s in $seeds; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout "${WORK_SECONDS:-3600}" ${PYTHON:-python} -m cmt.cli compare \
      "${common[@]}" ${variant[$v]} --set "compare.seeds=[$s]" --data "$data" \
      --out "$work/$v/s$s" --quiet > "$work/$v.s$s.log" 2>&1 &
  done
done
wait
echo "workers done after $(( $(date +%s) - start )) s"
for v in "${!variant[@]}"; do  # merge: a report from every complete seed's run records
  mkdir -p "$work/$v/all/runs"
  cp "$work/$v"/s*/runs/*.json "$work/$v/all/runs/" 2>/dev/null
  done_seeds=$(ls "$work/$v/all/runs" | sed -n 's/^cmt_tuned_seed\([0-9]*\)\.json$/\1/p' | sort -n | paste -sd,)
  echo "$v: seeds [$done_seeds] complete"
  [ -n "$done_seeds" ] || continue
  ${PYTHON:-python} -m cmt.cli compare "${common[@]}" ${variant[$v]} --set "compare.seeds=[$done_seeds]" \
    --data "$data" --out "$work/$v/all" --quiet > "$work/$v.report.log" 2>&1 \
    || { echo "$v: report failed"; tail -3 "$work/$v.report.log"; }
done
