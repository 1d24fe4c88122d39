#!/usr/bin/env bash
# The main job on a fresh machine: install, then one `hyperinfer up` that compiles the
# real PP-OCRv4 text detector (first run only; signed with a publisher key in the
# state dir), starts a local pool (a gateway and two nodes of different operators, as
# real processes on 127.0.0.1), runs verified inferences on rendered text pages,
# prints the receipts and stops everything it started.
# Afterwards `hyperinfer up` (same state dir) starts the same pool again and keeps serving.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec hyperinfer up --nodes 2 --port "${PORT:-8001}" --state "${HYPERINFER_QUICKSTART_DIR:-.hyperinfer/up}" \
  --demo --demo-requests "${REQUESTS:-4}" --exit-after-demo
