#!/usr/bin/env bash
# The GPU checks of docs/RELIABILITY.md "On a GPU" and the GPU tables of docs/BENCHMARKS.md
# "On a GPU", in one go, for a machine with a CUDA GPU (run from the repository root):
#
#   bash experiments/gpu_checks.sh SMOLLM2_DIR OUT_DIR
#
# SMOLLM2_DIR: a SmolLM2-135M-Instruct directory (its config and tokenizer are read; random
# weights are made from them, experiments/gpu_random_models.py). tokenseek and its libraries
# must be importable (on a machine without the network: carry wheels, as the 2026-11-25 run
# did for transformers 5.24.0, peft 0.21.2 and bitsandbytes 0.50.2).
set -euo pipefail
src=${1:?usage: bash experiments/gpu_checks.sh SMOLLM2_DIR OUT_DIR}
out=${2:?usage: bash experiments/gpu_checks.sh SMOLLM2_DIR OUT_DIR}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 experiments/gpu_random_models.py "$src" "$out/models"
small=$out/models/smollm2-135m
large=$out/models/llama-1b-shape

echo "=== CUDA tests (bf16 gradients against the fp32 reference, QLoRA placement, flash attention)"
python3 -m pytest -q -rs tests/test_placement.py -k "bf16 or flash or qlora or device or cuda" 2>&1 | tee "$out/pytest-placement.log" || true

echo "=== train: LoRA (--dtype auto: bf16 on the GPU), QLoRA + online seeking + checkpointing, full fine-tuning"
python3 -m tokenseek train --model "$small" --limit 64 --max-length 256 --max-steps 4 --grad-accum 2 --output-dir "$out/run-lora" --overwrite
python3 -m tokenseek train --model "$small" --peft qlora --seeking online --gradient-checkpointing --limit 64 --max-length 256 \
    --max-steps 4 --grad-accum 2 --output-dir "$out/run-qlora" --overwrite
python3 -m tokenseek train --model "$small" --peft none --limit 32 --max-length 256 --max-steps 2 --grad-accum 2 \
    --output-dir "$out/run-full" --overwrite

echo "=== bench: the memory knobs side by side, and the context-chunk sweep"
python3 -m tokenseek bench --model "$small" --knobs memory --seq-len 2048 --dtype bf16 --steps 3 --warmup 1 --output "$out/knobs-smollm2-2048"
python3 -m tokenseek bench --model "$large" --knobs memory --seq-len 4096 --dtype bf16 --steps 3 --warmup 1 --output "$out/knobs-1b-4096"
for chunk in 256 1024 2048 0; do
    python3 -m tokenseek bench --model "$large" --knobs sweep --seq-len 4096 --dtype bf16 --steps 3 --warmup 1 \
        --context-chunk "$chunk" --output "$out/sweep-1b-4096-chunk$chunk"
done
