#!/usr/bin/env bash
# Create <repo>/.venv and install everything the suite and its tests need (CPU, from the package registry).
# Idempotent: a second call only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON_FOR_VENV:-python3}"
if [[ ! -x "$root/.venv/bin/python" ]]; then
  "$python" -m venv "$root/.venv"
fi
pip=("$root/.venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# torch is pinned to the CPU build: an unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" install -q -r "$root/requirements.txt"
# The tvm backend's optional extra (upstream apache-tvm, ~100 MB); CI installs it so its tests run.
if [[ -z "${SUITE_NO_TVM:-}" ]]; then
  "${pip[@]}" install -q -r "$root/requirements-tvm.txt"
fi
echo "setup: $("$root/.venv/bin/python" --version) ready in $root/.venv"
