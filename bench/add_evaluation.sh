#!/usr/bin/env bash
# Issue 11's acceptance, as a user does it: add an evaluation to a FINISHED distillation run
# without distilling again, preempt it after its first model, resume it, aggregate.
#
#   bench/add_evaluation.sh FINISHED_RUN_DIR WORK_DIR [> results/add_evaluation.txt]
#
# FINISHED_RUN_DIR is copied to WORK_DIR/run first (it is left as it was). The added evaluation
# is 3 ConvNet3 models x 50 epochs (dc50); the process gets SIGTERM once the first model's file
# exists (what Slurm sends at preemption), then the same command runs again.
set -euo pipefail
src=$1 work=$2
hpcdd=("${PYTHON:-python}" -m hpcdd.cli)
rm -rf "$work" && mkdir -p "$work" && cp -a "$src" "$work/run"
run=$work/run
mkdir -p "$run/eval"
args=(evaluate "$run" --eval-models convnet3 --eval-epochs 50 --eval-n 3 --no-progress --threads 1)
echo "# commit $(git rev-parse --short HEAD), $(hostname), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "# before: evaluations of $run"; ls "$run/eval"
before=$(ls "$run/eval")
echo "\$ hpcdd ${args[*]}   (SIGTERM after the first model)"
"${hpcdd[@]}" "${args[@]}" > "$work/first.out" 2>&1 &
pid=$!
new=""
while kill -0 "$pid" 2>/dev/null; do
  for d in "$run"/eval/*/; do
    id=$(basename "$d")
    if ! grep -qx "$id" <<<"$before" && compgen -G "$d/models/*" > /dev/null; then new=$id; fi
  done
  if [[ -n $new ]]; then kill -TERM "$pid" 2>/dev/null || true; break; fi
  sleep 1
done
rc=0; wait "$pid" || rc=$?
echo "exit code $rc; models saved: $(ls "$run/eval/$new/models" | tr '\n' ' ')"
tail -n 2 "$work/first.out"
echo "\$ hpcdd ${args[*]}   (again)"
"${hpcdd[@]}" "${args[@]}" > "$work/second.out" 2>&1 || echo "exit code $?"
tail -n 6 "$work/second.out"
echo "# log.txt of the run (no distillation after the evaluation started):"
cat "$run/log.txt"
echo "\$ hpcdd aggregate $run -o $work/rows.csv"
"${hpcdd[@]}" aggregate "$run" -o "$work/rows.csv"
"${PYTHON:-python}" - "$work/rows.csv" <<'PY'
import sys, pandas as pd
t = pd.read_csv(sys.argv[1])
print(t[["run_id", "eval_id", "protocol", "eval_n", "acc_mean", "acc_std", "distill_seconds", "eval_seconds"]].to_string(index=False))
PY
