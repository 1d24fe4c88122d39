#!/usr/bin/env bash
# Regenerate hyperinfer/proto/** from proto/**. CI runs this and fails on a diff.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# a relative path (PYTHON=.venv/bin/python) must survive the cd into proto/ below
case "$PY" in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
find hyperinfer/proto -name '*_pb2*.py*' -delete 2>/dev/null || true
mapfile -t protos < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd proto && "$PY" -m grpc_tools.protoc -I . --python_out=.. --pyi_out=.. --grpc_python_out=.. "${protos[@]}")
for d in hyperinfer/proto hyperinfer/proto/v1 hyperinfer/proto/inference; do
  [ -f "$d/__init__.py" ] || echo '"""Generated from proto/ by scripts/gen_proto.sh; do not edit."""' > "$d/__init__.py"
done
# the OIP messages (inference.*) go to a private descriptor pool (see hyperinfer/proto/__init__.py)
for oip in hyperinfer/proto/inference/*_pb2.py; do
  sed -i -e 's/^DESCRIPTOR = _descriptor_pool.Default()/DESCRIPTOR = _hyperinfer_proto.OIP_POOL/' \
    -e 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/&\nfrom hyperinfer import proto as _hyperinfer_proto/' "$oip"
  grep -q '_hyperinfer_proto.OIP_POOL' "$oip" || { echo "gen_proto.sh: could not move $oip to the private pool" >&2; exit 1; }
done
