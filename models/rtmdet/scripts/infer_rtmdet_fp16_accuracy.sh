#!/usr/bin/env bash
# RTMDet FP16 accuracy run. Flags: --bs N, --variant, --onnx (or --checkpoint [--config]), --ann, ... (scripts/suite accuracy --help)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/suite" accuracy --model rtmdet --precision fp16 "$@"
