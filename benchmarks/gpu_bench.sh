#!/usr/bin/env bash
# The GPU bench as one prepared run (about 5-8 minutes on an H100/H200; killed at 9.5):
# GPT-B at batch 256 on a synthetic LlamaGen code folder plus the tiny and cpu-s presets,
# tokens/s, TFLOP/s and MFU (data-sheet bf16 peak and measured matmul peak), the Mirai-I/E
# overheads, and LlamaGen's own GPT-B step beside ours when a clone of
# https://github.com/FoundationVision/LlamaGen sits in third_party/LlamaGen (ignored by git).
# Usage: benchmarks/gpu_bench.sh [extra `mirai-lab bench` options, e.g. --set train.compile=true]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/gpu}
timeout 570 "$PY" -m mirai_lab bench --device cuda --presets gpt-b,tiny,cpu-s --repeats 5 --quick \
    --sections peak,train,llamagen --out "$OUT" --results-dir "${RESULTS:-results}" "$@"
echo "GPU bench -> $OUT/results.md"
