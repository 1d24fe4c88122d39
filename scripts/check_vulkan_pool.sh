#!/usr/bin/env bash
# The long cross-vendor pool run: PP-OCR cls, rec and det, one node on the CPU's TVM artifact and
# one on the vulkan artifact (WGSL run by wgpu-native; lavapipe where there is no GPU), verify=always:
# every request is checked on the other vendor's artifact. Prints per model "checked N, agreed N,
# across artifacts N, nodes at fault 0: OK" and exits non-zero on any disagreement or fault.
#
#   bash scripts/check_vulkan_pool.sh                    # cls 300, rec 30, det 6 requests
#   CLS=100 REC=10 DET=2 WORK=/tmp/vk CPU_TARGET=cpu-x86_64-avx2 bash scripts/check_vulkan_pool.sh
#
# lavapipe runs det (1x3x640x640) in tens of seconds per request on 2 cores, hence the long
# --node-timeout; on a real GPU the defaults are plenty.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-$(mktemp -d -t hyperinfer-vulkan-pool-XXXX)}
# the CPU artifact to check against (default: this CPU's best); CPU_TARGET=cpu-x86_64-avx2 to reuse packages
CPU=${CPU_TARGET:-$("$PY" -c "from hyperinfer.node.devices import detect; print(detect('cpu').targets[0])")}
status=0
for spec in "ppocr-cls:${CLS:-300}" "ppocr-rec:${REC:-30}" "ppocr-det:${DET:-6}"; do
  model=${spec%%:*}; n=${spec##*:}
  [ "$n" -gt 0 ] || continue
  echo "== $model: $n requests, $CPU vs vulkan" >&2
  "$PY" scripts/check_honest_pool.py --model "$model" --requests "$n" --targets "$CPU,vulkan" \
      --work "$WORK" --timeout 1800 --node-timeout 900 || status=1
done
exit $status
