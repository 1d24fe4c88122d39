#!/usr/bin/env bash
# The main job on a fresh machine: install, compile the real PP-OCRv4 text detector,
# start a local pool (a gateway and two nodes of different operators, as real
# processes on 127.0.0.1), run verified inferences on a rendered text page and
# print the receipts. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${HYPERINFER_QUICKSTART_DIR:-.hyperinfer/quickstart}
PORT=${PORT:-8001}
mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ ! -f "$WORK/repo/ppocr-det/1/manifest.json" ]; then
  hyperinfer models fetch --dest "$WORK/onnx"
  hyperinfer keys create "$WORK/publisher.key" >/dev/null 2>&1 || true
  hyperinfer compile "$WORK/onnx/ppocr-det.onnx" --name ppocr-det --input-shape x=1,3,640,640 \
    --target native --target cpu-x86_64 --out "$WORK/repo" --sign-key "$WORK/publisher.key"
fi
hyperinfer gateway --repository "$WORK/repo" --listen "127.0.0.1:$PORT" --db "$WORK/gateway.db" \
  --key "$WORK/gateway.key" > "$WORK/gateway.log" 2>&1 &
pids+=($!)
for i in 1 2; do
  hyperinfer node --gateway "127.0.0.1:$PORT" --listen 127.0.0.1:0 --key "$WORK/node$i.key" \
    --operator "operator-$i" --cache "$WORK/cache$i" --threads 1 \
    --trust-publisher "$WORK/publisher.key" > "$WORK/node$i.log" 2>&1 &
  pids+=($!)
done
python scripts/demo.py --url "127.0.0.1:$PORT" --model ppocr-det --wait 180 --requests 4
