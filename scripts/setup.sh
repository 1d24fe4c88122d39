#!/usr/bin/env bash
# Create .venv and install hyperinfer with everything its tests and ROCm cross-compiling need.
set -euo pipefail
cd "$(dirname "$0")/.."
# ROCm device bitcode (Debian/Ubuntu package) for the rocm-* targets; optional elsewhere
if ! ls /usr/lib/*/amdgcn/bitcode/ocml.bc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq rocm-device-libs >/dev/null) \
      || echo "warning: could not install rocm-device-libs; rocm-* targets will be skipped" >&2
  else
    echo "note: run 'sudo apt-get install rocm-device-libs' to build rocm-* targets" >&2
  fi
fi
# PostgreSQL server (Debian package) for the store tests on PostgreSQL; the tests run their own
# throwaway cluster (tests/pg_server.py), so the package's own cluster is not needed
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "warning: could not install postgresql; PostgreSQL store tests will fail in CI, skip elsewhere" >&2
  else
    echo "note: run 'sudo apt-get install postgresql' to run the PostgreSQL store tests" >&2
  fi
fi
# Mesa's lavapipe (a Vulkan driver that runs on the CPU) so the vulkan target runs without a GPU
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null) \
      || echo "warning: could not install mesa-vulkan-drivers; the vulkan target will not run here" >&2
  else
    echo "note: run 'sudo apt-get install mesa-vulkan-drivers' to run the vulkan target without a GPU" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "hyperinfer installed in $(pwd)/.venv (activate with: . .venv/bin/activate)" >&2
