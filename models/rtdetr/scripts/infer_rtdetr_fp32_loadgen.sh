#!/usr/bin/env bash
# RT-DETR FP32 MLPerf LoadGen scenario run (docs/loadgen.md). Flags: --scenario {SingleStream,MultiStream,Server,Offline},
# --mode {performance,accuracy}, --short (CI: not an MLPerf result), --target-qps, --bs N, --onnx, ... (scripts/suite loadgen --help)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/suite" loadgen --model rtdetr --precision fp32 "$@"
