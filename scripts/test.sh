#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# generated protobuf modules must match proto/
PYTHON=python bash scripts/gen_proto.sh
if ! git diff --quiet -- hyperinfer/proto 2>/dev/null; then
  echo "error: hyperinfer/proto is out of date with proto/; run scripts/gen_proto.sh and commit" >&2
  git diff --stat -- hyperinfer/proto >&2
  exit 1
fi
python -m pytest -q -p no:cacheprovider "$@"
