#!/usr/bin/env bash
# The CUDA checks, in one go, for a machine with a GPU and m2skd installed (README
# "Benchmarks", "On a GPU"):  bash bench/gpu_check.sh OUTDIR [PYTEST_SECONDS]
#   1. the test suite with CUDA visible: every test that trains with --device auto
#      (the default) trains, validates, resumes and distils on the GPU;
#   2. bench/paper_step.py: the published networks' step, memory, AMP off/on;
#   3. bench/deploy_speed.py and bench/train_step.py on the GPU.
# Each part writes its log to OUTDIR as it goes, so a cut-off run keeps what it measured.
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR [PYTEST_SECONDS]}
PYTEST_S=${2:-150}
mkdir -p "$OUT"
W=$(mktemp -d)
BIN=$(dirname "$(command -v python3)")
export PYTHONUNBUFFERED=1
part() { echo "== $* ($(date +%T))"; }

part environment
nvidia-smi -L
python3 -c "import torch, spconv; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(), 'spconv', spconv.__version__)" 2>&1 | tee "$OUT/env.txt"

part data
# full-size scans for the published networks; demo-size ones for the tiny-preset bench
"$BIN/m2skd-synth" "$W/full" --sequences 00 --preset full --scans 24 --seed 1 --no-summary >/dev/null
"$BIN/m2skd-fuse" --data "$W/full" --sequences 00 --out "$W/full_c" --workers 8 >/dev/null
"$BIN/m2skd-synth" "$W/demo" --sequences 00 --preset demo --scans 40 --seed 0 --no-summary >/dev/null
"$BIN/m2skd-fuse" --data "$W/demo" --sequences 00 --out "$W/demo_c" --workers 8 >/dev/null

part "tests with CUDA visible (${PYTEST_S} s at most)"
# 2 threads a worker: 8 workers of 16 threads each starve the CPU-only tests into timeouts
OMP_NUM_THREADS=2 timeout "$PYTEST_S" python3 -m pytest -q -p no:cacheprovider -p no:benchmark -n 8 \
    --timeout 150 -rfE --tb=short > "$OUT/pytest.txt" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.txt"

part "paper preset step, AMP off/on"
python3 bench/paper_step.py --cache "$W/full_c" --json "$OUT/paper_step.json" 2>&1 | tee "$OUT/paper_step.txt"

part deployment
python3 bench/deploy_speed.py --device cuda --runs 5 2>&1 | tee "$OUT/deploy_speed.txt"

part "tiny training step"
python3 bench/train_step.py --cache "$W/demo_c" --device cuda 2>&1 | tee "$OUT/train_step.txt"
part done
