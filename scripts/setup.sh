#!/usr/bin/env bash
# Create <repo>/.venv and install the suite (CPU, from the package registry). Idempotent.
#
#   bash scripts/setup.sh            everything: core, export (torch, transformers, mmengine), tvm, openvino, test, loadgen (CI does this)
#   bash scripts/setup.sh --core     the core only: runs from ONNX files, no torch (an accelerator node)
#   bash scripts/setup.sh --core --test    the core and pytest
#
# SUITE_SYSTEM_SITE_PACKAGES=1 makes the venv see the interpreter's own packages (a vendor SDK's torch and
# runtime): pip then installs only what is missing, into .venv, and never touches the SDK's site-packages.
# PYTHON_FOR_VENV picks the interpreter (default python3); SUITE_NO_TVM=1 skips the tvm layer, SUITE_NO_OPENVINO=1 the openvino one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON_FOR_VENV:-python3}"
layers=(core export tvm openvino test loadgen)
if [[ $# -gt 0 ]]; then
  layers=()
  for arg in "$@"; do
    case "$arg" in
      --core) layers+=(core) ;;
      --export|--tvm|--openvino|--test|--loadgen) layers+=(core "${arg#--}") ;;
      *) echo "setup.sh: unknown option '$arg' (--core, --export, --tvm, --openvino, --test, --loadgen)" >&2; exit 2 ;;
    esac
  done
fi
[[ -n "${SUITE_NO_TVM:-}" ]] && layers=("${layers[@]/tvm}")
[[ -n "${SUITE_NO_OPENVINO:-}" ]] && layers=("${layers[@]/openvino}")
if [[ ! -x .venv/bin/python ]]; then
  venv_flags=()
  [[ -n "${SUITE_SYSTEM_SITE_PACKAGES:-}" ]] && venv_flags+=(--system-site-packages)
  "$python" -m venv "${venv_flags[@]}" .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
files=()
for layer in "${layers[@]}"; do
  case "$layer" in
    core) files+=(-r requirements.txt) ;;
    export|tvm|openvino|test|loadgen) files+=(-r "requirements-$layer.txt") ;;
  esac
done
"${pip[@]}" install -q "${files[@]}"
# the suite itself (common/, models/) and its `suite` command; its requirements are the files above. Strict
# editable mode: a static path entry to a tree of links (build/), not an import hook that every Python process
# of the venv would load at start-up (~20 ms)
"${pip[@]}" install -q --no-deps -e . --config-settings editable_mode=strict
# the HTML reports' browser test (tests/realdata/test_html_reports.py) renders them in Debian's headless chromium:
# installed with the test layer where this runs as root with apt-get; elsewhere that test skips, saying why
if [[ " ${layers[*]} " == *" test "* ]] && ! command -v chromium >/dev/null && [[ $(id -u) -eq 0 ]] \
   && command -v apt-get >/dev/null; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
   apt-get install -y -q chromium >/dev/null 2>&1; }) || echo "setup: chromium not installed (browser test skips)" >&2
fi
echo "setup: $(.venv/bin/python --version), layers: $(printf '%s ' "${layers[@]}" | tr -s ' ' | sort -u | xargs), ready in $root/.venv"
