#!/usr/bin/env bash
# One GPU benchmark (< 8 minutes on one H100/H200): training iterations/s at 128^3 with AMP (Trainer and a plain
# loop and their ratio, with the augmentation in the prefetch thread or on the GPU, fused Adam or not, with and
# without channels-last 3D), inference seconds per BraTS-sized volume for each Predictor speed option (normalising on
# the GPU, window batch, channels-last, overlap; with --compile also torch.compile and CUDA graphs), folder mode
# against one command per case and the pure-compute bound, peak GPU memory.
#
#   benchmarks/gpu.sh                      # on the GPU
#   benchmarks/gpu.sh --json gpu.json      # also keep the figures
#   benchmarks/gpu.sh --compile            # also the compiled network, and network + loss (adds minutes)
#   benchmarks/gpu.sh --device cpu --quick # the same code with a tiny network (seconds; tested in CI)
#
# Record the printed figures, with the device name, in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
CLDL_BENCH_COMMAND="benchmarks/gpu.sh $*" exec "$PYTHON" benchmarks/gpu_bench.py "$@"
