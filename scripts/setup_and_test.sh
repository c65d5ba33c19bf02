#!/usr/bin/env bash
# Creates .venv, installs CADC with its test extras, and runs the default test suite.
# When a ComfyUI checkout exists (COMFYUI_PATH or ~/comfy/ComfyUI), its requirements are
# installed too (never torch/torchvision/torchaudio) so the real-ComfyUI tests can run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[test]'
comfy="${COMFYUI_PATH:-$HOME/comfy/ComfyUI}"
if [ -f "$comfy/requirements.txt" ]; then
  grep -viE '^(torch|torchvision|torchaudio)([<>=!~ ;]|$)' "$comfy/requirements.txt" > .venv/comfyui-requirements.txt
  .venv/bin/pip install -q -r .venv/comfyui-requirements.txt
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
