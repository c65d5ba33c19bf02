#!/usr/bin/env bash
# Download the wheels scripts/gpu/stage1_smoke.sh installs on the accelerator machine into .whl/
# (git-ignored; carry it with the run). Target: CPython 3.12 on x86-64 Linux, the CUDA image's
# python3; its own torch, transformers, peft, safetensors and tokenizers are used as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pip download --no-deps --only-binary=:all: --python-version 312 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl compressai==1.2.8 diffusers==0.42.1 pytorch-msssim==1.0.0
ls -l .whl
