#!/usr/bin/env bash
# Reruns the tuning row of docs/tuning.md section 3 that used the released logit variant,
# after that variant was corrected (mean over classes, as the released code) and `paper`/
# `tiny` PolarNet became the published network: teacher 1200 steps, baseline and students
# 600, seed 0, PolarNet tiny, demo data (`make synth fuse SEQ=00-03,08` first), val 08.
# Two runs at a time, one thread each. Results: $OUT/*.json.
set -euo pipefail
CACHE=${CACHE:-data_cache/fused}
OUT=${OUT:-data_cache/tuning_released}
BIN=${BIN:-.venv/bin}
T_STEPS=${T_STEPS:-1200}  # smaller in the suite's smoke test (tests/test_benches.py)
S_STEPS=${S_STEPS:-600}
TRAIN=${TRAIN:-00-03}
common=(--cache "$CACHE" --model polarnet --preset tiny --train-sequences "$TRAIN" --val-sequences 08 --workers 0
        --quiet)
export OMP_NUM_THREADS=1
run() { "$BIN/m2skd-train" "$@" "${common[@]}" --resume 2>/dev/null || "$BIN/m2skd-train" "$@" "${common[@]}"; }
run teacher --steps "$T_STEPS" --out "$OUT/T1200" &
run baseline --steps "$S_STEPS" --out "$OUT/B600" &
wait
run student --steps "$S_STEPS" --out "$OUT/S600_released" --teacher "$OUT/T1200/last.pt" \
    --no-feat --no-aff --logit-variant released --w-logit 5 &
run student --steps "$S_STEPS" --out "$OUT/S600_default" --teacher "$OUT/T1200/last.pt" &
wait
for r in B600 S600_released S600_default; do
  "$BIN/m2skd-train" eval --ckpt "$OUT/$r/last.pt" --cache "$CACHE" --sequences 08 --json "$OUT/$r.json" --quiet
done
"$BIN/m2skd-train" eval --ckpt "$OUT/T1200/last.pt" --cache "$CACHE" --sequences 08 --view fused \
    --json "$OUT/T1200_fused.json" --quiet
