#!/usr/bin/env bash
# The CT arm of the normalizer study, as run (from the repository root; resumable: run it again
# to continue). STORE is the MLflow store (default: this folder's mlflow.db).
set -euo pipefail
STORE=${STORE:-sqlite:///docs/results/norm_study_ct/mlflow.db}
# the store is committed compressed (mlflow.db.gz): unpack it once; at the end of a sitting:
# gzip -9 -c mlflow.db > mlflow.db.gz, and commit that
HERE=docs/results/norm_study_ct
[ -f "$HERE/mlflow.db" ] || [ ! -f "$HERE/mlflow.db.gz" ] || gunzip -c "$HERE/mlflow.db.gz" > "$HERE/mlflow.db"
DATA=${DATA:-../shared/data/OpenKBP_HeadNeckCT}
JOBS=${JOBS:-2}  # on the MRI arm 1.30x faster than 1 on 2 cores (benchmarks/sweep_jobs.py); not measured on CT
# instance, group and batch norm x batch sizes 1 and 4 x 2 seeds (12 children), 7200 patches each
# (validated every 600, as in the MRI arm)
medseg sweep --config configs/sweep_openkbp_ct.yaml --data "$DATA" --evaluations 12 --tracking-uri "$STORE" \
  --jobs "$JOBS" --set output_dir=runs --norms instance,group,batch --batch-sizes 1,4 --seeds 2 \
  --budget-samples 7200 --sweep-id ct_main --report-dir docs/results/norm_study_ct/report
# post-hoc check (README, "Post-hoc check"): seed 2 of the three norms at batch 4, its own sweep and report
medseg sweep --config configs/sweep_openkbp_ct.yaml --data "$DATA" --evaluations 12 --tracking-uri "$STORE" \
  --jobs "$JOBS" --set output_dir=runs --norms instance,group,batch --batch-sizes 4 --seeds 1 --first-seed 2 \
  --budget-samples 7200 --sweep-id ct_seed2 --report-dir docs/results/norm_study_ct/report_seed2
# and all three seeds as one study (descriptive; README, "Post-hoc check")
medseg report --experiment medseg-norm-study-ct --sweep ct_main --sweep ct_seed2 --pool --tracking-uri "$STORE" \
  --output docs/results/norm_study_ct/report_pooled
# issue 24: up to 5 seeds per cell, on the MRI arm's pinned commit (see its run.sh): seeds 2-4 at batch
# 1 (9 children) and seeds 3-4 at batch 4 (6 children; seed 2 is ct_seed2). Run after the MRI seeds.
PIN=c5af3fad354be968c1cc9250b9667837f1480ebf
ROOT=$PWD
WT=${WT:-$ROOT/../medseg-$PIN}
[ -d "$WT" ] || git worktree add --detach "$WT" "$PIN"
for cells in "1 3 2 ct_bs1_seeds2to4" "4 2 3 ct_bs4_seeds3to4"; do
  read -r bs n first id <<< "$cells"
  (cd "$WT" && PYTHONPATH="$WT" nice -n 19 "$ROOT/.venv/bin/python" -m medseg sweep --config configs/sweep_openkbp_ct.yaml \
    --data "$ROOT/$DATA" --evaluations 12 --tracking-uri "sqlite:///$ROOT/docs/results/norm_study_ct/mlflow.db" \
    --jobs "$JOBS" --set output_dir=runs --norms instance,group,batch --batch-sizes "$bs" --seeds "$n" \
    --first-seed "$first" --budget-samples 7200 --sweep-id "$id" --report-dir "$ROOT/docs/results/norm_study_ct/report_$id")
done
# every seed as one study (5 per cell)
medseg report --experiment medseg-norm-study-ct --sweep ct_main --sweep ct_seed2 --sweep ct_bs1_seeds2to4 \
  --sweep ct_bs4_seeds3to4 --pool --tracking-uri "$STORE" --output docs/results/norm_study_ct/report_pooled5
