#!/usr/bin/env bash
# RT-DETR FP16 performance run. Flags: --bs N, --variant, --onnx | --checkpoint [--config], --ann, ... (scripts/suite performance --help)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/suite" performance --model rtdetr --precision fp16 "$@"
