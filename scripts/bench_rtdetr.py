"""RT-DETR-R18 at 640x640, batch 1, FP32 on ONNX Runtime (CPU): the suite's performance-run FPS against a plain
ONNX Runtime loop on the same graph, alternated in one run; prints both and their ratio (goal >= 0.97).

No RT-DETR weights can be had offline: the network is the R18 architecture (the hyperparameters of
PekingU/rtdetr_r18vd: ResNet-18-vd backbone, hybrid encoder 256 wide with expansion 0.5, 3 decoder layers,
300 queries, 80 classes) with random weights, exported by models/rtdetr/export.py. Speed does not depend on weight
values. Pass --onnx to time an existing export instead.

    python scripts/bench_rtdetr.py [--onnx r18.onnx] [--repeats 3] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import add_keep_flag, scratch_dir  # noqa: E402

R18 = {  # transformers RTDetrConfig fields of the R18 architecture
    "model_type": "rt_detr", "num_labels": 80, "num_queries": 300, "d_model": 256, "encoder_hidden_dim": 256,
    "encoder_in_channels": [128, 256, 512], "hidden_expansion": 0.5, "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024, "decoder_layers": 3, "decoder_in_channels": [256, 256, 256],
    "use_pretrained_backbone": False,
    "backbone_config": {"model_type": "rt_detr_resnet", "layer_type": "basic", "depths": [2, 2, 2, 2],
                        "hidden_sizes": [64, 128, 256, 512], "embedding_size": 64,
                        "out_features": ["stage2", "stage3", "stage4"]},
}


def export_r18(out: Path, variant) -> Path:
    import torch

    from common.export.pipeline import simplify
    from models.rtdetr.export import DetrOutputs, OUTPUT_NAMES, build_config, new_network
    from common.export.pipeline import torch_export

    torch.manual_seed(0)
    net = new_network(build_config(R18)).eval()
    raw = out.with_suffix(".raw.onnx")
    torch_export(DetrOutputs(net), torch.rand(1, 3, variant.height, variant.width), raw,
                 input_name=variant.input_name, output_names=OUTPUT_NAMES)
    simplify(raw, out, variant.input_name)
    raw.unlink()
    return out


def main():
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    ap = SuiteParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", help="an RT-DETR-R18 ONNX (input 'images' [N, 3, 640, 640]); default: export one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run, both sides")
    add_keep_flag(ap)
    a = ap.parse_args()
    with scratch_dir("bench-rtdetr-", a.keep) as work:
        run(a, work)


def run(a, work: Path):
    import numpy as np
    import onnxruntime as ort

    from common.harness.runs import RunConfig, run_performance
    from common.config.specs import load_model

    variant = load_model("rtdetr").variant("r18")
    onnx_path = Path(a.onnx) if a.onnx else export_r18(work / "r18.onnx", variant)
    print(f"graph: {onnx_path}; machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} "
          "(other processes share these cores: compare the two columns, not absolute FPS)")
    cfg = dict(model="rtdetr", variant="r18", onnx=str(onnx_path), precision="fp32", batch_size=1,
               cache_dir=str(work / "engines"), results_dir=str(work / "results"), warmup_s=1.0,
               min_duration_s=a.seconds, min_iters=10)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, variant.height, variant.width), np.float32)
    suite, plain = [], []
    for _ in range(a.repeats):                     # alternated, so drifting background load hits both sides
        suite.append(run_performance(RunConfig(**cfg))["timing"]["fps"])
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            sess.run(None, {variant.input_name: x})
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < a.seconds or k < 10:
            sess.run(None, {variant.input_name: x})
            k += 1
        plain.append(k / (time.perf_counter() - t0))
    s, p = max(suite), max(plain)
    print(f"RT-DETR-R18 640x640 bs1 fp32 onnxruntime-cpu: performance run {s:.2f} FPS "
          f"(runs: {', '.join(f'{v:.2f}' for v in suite)}); plain ONNX Runtime loop {p:.2f} FPS "
          f"(runs: {', '.join(f'{v:.2f}' for v in plain)}); ratio {s / p:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
