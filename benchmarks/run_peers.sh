#!/usr/bin/env bash
# End-to-end echo benchmark: fastws as rows in the shared peer harness (same run, same client).
# Usage: benchmarks/run_peers.sh [extra run_peers.py args]   (from the repository root)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
HARNESS="${PERF_HARNESS:-$ROOT/../shared/perf/run_peers.py}"
"$PY" "$HARNESS" --python "$PY" \
  --server "fastws=$ROOT/.venv/bin/fastws serve examples.echo:app --app-dir $ROOT --no-compression --host 127.0.0.1 --port {port}" \
  --server "fastws_async=$ROOT/.venv/bin/fastws serve examples.echo_async:app --app-dir $ROOT --no-compression --host 127.0.0.1 --port {port}" \
  "$@"
