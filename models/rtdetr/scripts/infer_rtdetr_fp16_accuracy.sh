#!/usr/bin/env bash
# RT-DETR FP16 accuracy run. Flags: --bs N, --variant, --onnx | --checkpoint [--config], --ann, ... (scripts/suite accuracy --help)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/suite" accuracy --model rtdetr --precision fp16 "$@"
