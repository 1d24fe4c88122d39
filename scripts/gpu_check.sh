#!/usr/bin/env bash
# CUDA artifacts for real, on a machine with an NVIDIA GPU: compile PP-OCR det/cls/rec and a
# MiniLM-class encoder for this GPU's arch, run them through the node's runner, compare with
# ONNX Runtime within the manifest tolerance, print latencies vs ORT's CUDA EP and the CPU.
# Needs: nvidia-smi, nvcc (CUDA 12+), the project's .venv (scripts/setup.sh). ORT's CUDA EP is
# used when onnxruntime-gpu is installed in the venv. Bounded to 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null || { echo "Error: nvidia-smi not found: no NVIDIA GPU/driver on this machine" >&2; exit 2; }
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "Error: nvcc not found: install the CUDA toolkit (12+)" >&2; exit 2; }
exec timeout 480 "$PY" scripts/gpu_check.py "$@"
