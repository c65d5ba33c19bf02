#!/usr/bin/env bash
# 50 Stage I steps at the paper's shapes (random weights, bf16, 512² crops, batch 1) on one GPU:
# reports it/s and peak VRAM in $OUT/stage1_smoke.json (about 3–5 minutes on one H200; ≤ 8 min).
#
# For a bare machine that holds Python 3.12 with PyTorch, transformers, peft, safetensors, numpy,
# pillow, scipy and tensorboard (this workplace's CUDA image): compressai, diffusers and
# pytorch-msssim come as wheels in .whl/ (made here with scripts/gpu/make_wheelhouse.sh), e.g.
#   run(command="bash scripts/gpu/stage1_smoke.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/stage1-smoke}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
WORK=${WORK:-/tmp/stage1-smoke-work}  # sources and checkpoints (GBs): kept out of $OUT
PYTHONUNBUFFERED=1 timeout 450 "$PYTHON" scripts/gpu/stage1_smoke.py --out "$OUT" --work "$WORK" --steps "${STEPS:-50}" \
    2>&1 | tr '\r' '\n' | grep -v '^cadc train stage1: .*it/s\]$' | tee "$OUT/stage1_smoke.log"
rm -rf "$WORK"
