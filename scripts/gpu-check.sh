#!/usr/bin/env bash
# GPU checks: runs the CUDA-only tests (`--features cuda-tests` style ignored tests named `cuda_*`)
# when a CUDA device is visible; on a CPU-only machine it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no CUDA device visible; nothing to check (exit 0)."
  exit 0
fi
nvidia-smi -L
# Tests that need CUDA are #[ignore]d by default and named with a `cuda_` prefix.
cargo test --release --workspace -- --ignored cuda_ --test-threads=1
echo "gpu-check: all CUDA checks passed."
