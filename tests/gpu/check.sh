#!/usr/bin/env bash
# Every GPU check, and the GPU benchmark, in one run (under 8 minutes on one H200): for a machine with CUDA.
#   bash tests/gpu/check.sh            (from the repository root, its .venv installed as the README says)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
echo "== machine"; nvidia-smi -L || true; $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
echo "== GPU tests"
timeout 420 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu tests/ranks/test_process_group.py -rs --timeout 300
tests=$?
echo "== benchmark: our DDP step against the plain script's, the same model, one run"
timeout 180 $PY -m tests.bench.gpu_step --steps 300 --rounds 3
bench=$?
echo "== benchmark: the gpt's bf16, activation checkpointing and compile; tokens/s and model FLOPs utilisation"
timeout 240 $PY -m tests.bench.training_features --device cuda --dim 768 --depth 12 --heads 12 --seq-len 1024 \
  --batch 8 --cycles 3
features=$?
echo "== exit: tests $tests, benchmarks $bench $features"
exit $(( tests || bench || features ))
