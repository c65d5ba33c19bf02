#!/usr/bin/env bash
# CADC benchmark on one CUDA GPU: 768x512 and 2048x1365 in float16 and bfloat16, with per-stage
# times (UNet and VAE shares), peak CUDA memory, TAESD against the SD VAE decoder, and issue 15's
# GPU targets. Budget: 8 minutes on an H100/H200-class machine (weights ~1.5 min, each dtype ~2.5).
#
# For a bare machine that holds Python 3.12 with PyTorch (CUDA), transformers, peft, safetensors,
# numpy and pillow: compressai and diffusers come as wheels in .whl/ (made on a networked machine
# with scripts/gpu/make_wheelhouse.sh), e.g.
#   run(command="bash benchmarks/gpu/run_gpu.sh", carry=[".whl"], timeout_s=540)
# Reports: $OUT/<dtype>/latest.json and a summary table on stdout ($OUT/summary.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cadc-gpu-bench}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export CADC_BENCH_CACHE=${CADC_BENCH_CACHE:-/tmp/cadc-bench-cache}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

START=$(date +%s)
# Seeded random paper-size weights (SD-Turbo 1.3 B parameters, BLIP-base, codec, TAESD), built once.
timeout 200 "$PYTHON" -c "
import sys, time; sys.path.insert(0, '.')
from benchmarks import assets
t = time.perf_counter(); assets.ensure_all(['cadc']); print(f'[gpu] weights ready in {time.perf_counter() - t:.0f} s')"

for DTYPE in float16 bfloat16; do
    # 3 decodes per size: the first pays CUDA/cuDNN warm-up, decode_warm_s is the fastest of the others
    timeout 200 "$PYTHON" benchmarks/run.py --device cuda --dtype "$DTYPE" --sizes 768x512 2048x1365 \
        --presets cadc --decode-repeats 3 --taesd --no-plot --timeout 150 --out "$OUT/$DTYPE" \
        2>&1 | tee "$OUT/$DTYPE.log" || echo "[gpu] $DTYPE run failed or timed out (see $OUT/$DTYPE.log)"
done
"$PYTHON" benchmarks/gpu/summary.py "$OUT"/float16 "$OUT"/bfloat16 | tee "$OUT/summary.txt"
echo "[gpu] total $(( $(date +%s) - START )) s"
