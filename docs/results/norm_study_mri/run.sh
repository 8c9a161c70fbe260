#!/usr/bin/env bash
# The MRI arm of the normalizer study, as run (from the repository root; resumable: run it again
# to continue). STORE is the MLflow store (default: this folder's mlflow.db).
set -euo pipefail
STORE=${STORE:-sqlite:///docs/results/norm_study_mri/mlflow.db}
# the store is committed compressed (mlflow.db.gz, to keep the repository's files small): unpack it
# once; at the end of a sitting: gzip -9 -c mlflow.db > mlflow.db.gz, and commit that
HERE=docs/results/norm_study_mri
[ -f "$HERE/mlflow.db" ] || gunzip -c "$HERE/mlflow.db.gz" > "$HERE/mlflow.db"
DATA=${DATA:-../shared/data/Task04_Hippocampus}
JOBS=${JOBS:-2}  # 1.30x faster than 1 on 2 cores (benchmarks/sweep_jobs.py)
common=(--config configs/sweep_hippocampus.yaml --data "$DATA" --evaluations 12 --tracking-uri "$STORE"
        --jobs "$JOBS" --set output_dir=runs)
# main sweep: 5 norms x batch sizes 1-4 x 2 seeds (40 children), 7200 patches each; mri_v2_* run with
# single examples through oneDNN and channels_last (mri_main_7200, stopped, did not; mri_main, at
# 2400 patches, was stopped after seed 0: see README.md)
medseg sweep "${common[@]}" --norms instance,group,layer,batch,none --batch-sizes 1,2,3,4 --seeds 2 \
  --sweep-id mri_v2_main --report-dir docs/results/norm_study_mri/report
# learning-rate check: instance and batch norm at batch 1 and 4, one seed, lr x0.3 and x3
for lr in 0.0003 0.003; do
  medseg sweep "${common[@]}" --norms instance,batch --batch-sizes 1,4 --seeds 1 --set train.lr=$lr \
    --sweep-id mri_v2_lr$lr --report-dir docs/results/norm_study_mri/report_lr$lr
done
# does the ranking of instance and batch norm hold at x0.3, x1 and x3 (seed 0, the cells all three share)?
medseg report --experiment medseg-norm-study --tracking-uri "$STORE" --sweep mri_v2_lr0.0003 --sweep mri_v2_main \
  --sweep mri_v2_lr0.003 --output docs/results/norm_study_mri/report_lr_check
# issue 24: seeds 2-4 of instance, group and batch norm at batch 1, 2 and 4 (27 children), all on one
# commit: medseg's code for these children is commit PIN, run from a git worktree of it (this script
# itself may be on any later commit). The store stays this folder's.
PIN=c5af3fad354be968c1cc9250b9667837f1480ebf
ROOT=$PWD
WT=${WT:-$ROOT/../medseg-$PIN}
[ -d "$WT" ] || git worktree add --detach "$WT" "$PIN"
(cd "$WT" && PYTHONPATH="$WT" nice -n 19 "$ROOT/.venv/bin/python" -m medseg sweep --config configs/sweep_hippocampus.yaml \
  --data "$ROOT/$DATA" --evaluations 12 --tracking-uri "sqlite:///$ROOT/docs/results/norm_study_mri/mlflow.db" \
  --jobs "$JOBS" --set output_dir=runs --norms instance,group,batch --batch-sizes 1,2,4 --seeds 3 --first-seed 2 \
  --sweep-id mri_v2_seeds2to4 --report-dir "$ROOT/docs/results/norm_study_mri/report_seeds2to4")
# the five seeds as one study: seeds as a random effect in every cell with 3 or more
medseg report --experiment medseg-norm-study --tracking-uri "$STORE" --sweep mri_v2_main --sweep mri_v2_seeds2to4 \
  --pool --output docs/results/norm_study_mri/report_pooled
