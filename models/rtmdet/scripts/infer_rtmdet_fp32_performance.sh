#!/usr/bin/env bash
# RTMDet FP32 performance run. Flags: --bs N, --variant, --onnx (or --checkpoint [--config]), --ann, ... (scripts/suite performance --help)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/suite" performance --model rtmdet --precision fp32 "$@"
